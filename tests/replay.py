"""A deliberately simple replay of Hogwild! semantics, written from the definition, sharing no engine code.

* A token's keys/values are computed once, when it is written, from the writer's view at that moment.
  We keep them *before* rotation: the model is run with every position at 0, so RoPE is the identity
  (times yarn's scaling factor, which the model applies to queries and keys alike).
* At every forward, for each worker, the view's tokens are laid out in order, every key is rotated to its
  position in that view, the query to its own, and plain masked attention runs over all of them. Tokens
  written by any worker in this forward are visible to every worker whose view holds their block; inside
  the writer's own block attention is causal.
* Moving a step into the history moves the stored (unrotated) records; nothing is recomputed.

It exposes the surface the generator uses (``new_cache``/``forward``/``prefill``, and ``commit``/``clear``/
``tokens``/``blocks`` on the cache), so the same generation can be driven through it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, Cache

from hogwild_bench.engine.cache import cache_keyword


class ReplayBlock:
    def __init__(self, num_layers: int):
        self.token_ids: list[int] = []
        self.keys: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]  # per layer, per token [Hkv, D]
        self.values: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]

    @property
    def length(self) -> int:
        return len(self.token_ids)

    def truncate(self, n: int) -> None:
        del self.token_ids[n:]
        for store in (*self.keys, *self.values):
            del store[n:]

    def clear(self) -> None:
        self.truncate(0)


class ReplayCache(Cache):
    def __init__(self, num_layers: int):
        super().__init__(layers=[])
        self.num_layers = num_layers
        self.blocks: dict[str, ReplayBlock] = {}
        self.plan = None  # list of (view names, new token ids)

    def block(self, name: str) -> ReplayBlock:
        return self.blocks.setdefault(name, ReplayBlock(self.num_layers))

    def commit(self, source: str, target: str) -> None:
        src, dst = self.block(source), self.block(target)
        dst.token_ids += src.token_ids
        for layer in range(self.num_layers):
            dst.keys[layer] += src.keys[layer]
            dst.values[layer] += src.values[layer]
        src.clear()

    def clear(self, name: str) -> None:
        self.block(name).clear()

    def share(self, name: str, token_ids) -> bool:
        """Nothing is shared here: the caller writes ``token_ids`` unless the block already holds them."""
        if self.block(name).token_ids == list(token_ids):
            return False
        self.block(name).clear()
        return True

    def tokens(self, names) -> list[int]:
        return [t for name in names for t in self.block(name).token_ids]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        q_len = key_states.shape[2]
        for b, (view, new) in enumerate(self.plan):
            own = self.block(view[-1])
            for j in range(len(new)):
                own.keys[layer_idx].append(key_states[b, :, q_len - len(new) + j])
                own.values[layer_idx].append(value_states[b, :, q_len - len(new) + j])
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0):
        return query_length, 0

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_sliding(self):
        return [False] * self.num_layers


def rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE (rotate-half convention) of ``x[..., T, D]`` at integer ``positions[T]``, in float64."""
    positions, inv_freq = positions.to(x.device), inv_freq.to(x.device)
    angles = positions.double()[:, None] * inv_freq.double()[None, :]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    x = x.double()
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def replay_attention(module, query, key, value, attention_mask, scaling=None, replay_cache=None, **kwargs):
    layer = module.layer_idx
    heads, dim = query.shape[1], query.shape[3]
    q_len = query.shape[2]
    outputs = []
    for b, (view, new) in enumerate(replay_cache.plan):
        keys, values, own_flags = [], [], []
        for name in view:
            block = replay_cache.block(name)
            keys += block.keys[layer]
            values += block.values[layer]
            own_flags += [name == view[-1]] * len(block.keys[layer])
        k = torch.stack(keys, dim=1)  # [Hkv, L, D]
        v = torch.stack(values, dim=1)
        total = k.shape[1]
        own = torch.tensor(own_flags, device=k.device)
        # the new tokens are the last len(new) of the view (own block is last)
        q_pos = torch.arange(total - len(new), total, device=k.device)
        k_rot = rotate(k, torch.arange(total), module.rotary_inv_freq)
        q_rot = rotate(query[b, :, q_len - len(new) :], q_pos, module.rotary_inv_freq)
        groups = heads // k.shape[0]
        k_rot, v = k_rot.repeat_interleave(groups, 0), v.double().repeat_interleave(groups, 0)
        key_pos = torch.arange(total, device=k.device)
        visible = (~own[None, :]) | (key_pos[None, :] <= q_pos[:, None])
        out = F.scaled_dot_product_attention(q_rot[None], k_rot[None], v[None], attn_mask=visible, scale=scaling)[0]
        padded = torch.zeros(heads, q_len, dim, dtype=torch.float64, device=k.device)
        padded[:, q_len - len(new) :] = out
        outputs.append(padded.transpose(0, 1))
    return torch.stack(outputs).to(query.dtype), None


AttentionInterface.register("hogwild_replay", replay_attention)


class ReplayLM:
    """Drives ``model`` with the replay semantics. Mirrors `HogwildLM`'s ``forward``/``prefill``."""

    def __init__(self, model):
        self.model = model
        inv_freq = next(m.inv_freq for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor))
        for module in model.modules():
            if hasattr(module, "layer_idx") and hasattr(module, "head_dim"):
                module.rotary_inv_freq = inv_freq.float().cpu()

    def new_cache(self) -> ReplayCache:
        return ReplayCache(self.model.config.num_hidden_layers)

    @torch.no_grad()
    def forward(self, cache: ReplayCache, writes, all_logits: bool = False) -> torch.Tensor:
        q_len = max(len(w.tokens) for w in writes)
        input_ids = torch.zeros(len(writes), q_len, dtype=torch.long)
        for b, w in enumerate(writes):
            input_ids[b, q_len - len(w.tokens) :] = torch.tensor(list(w.tokens))
        cache.plan = [(list(w.view), list(w.tokens)) for w in writes]
        previous = self.model.config._attn_implementation
        self.model.set_attn_implementation("hogwild_replay")
        try:
            input_ids = input_ids.to(self.model.get_input_embeddings().weight.device)
            out = self.model(
                input_ids=input_ids,
                position_ids=torch.zeros_like(input_ids),
                replay_cache=cache,
                **{cache_keyword(type(self.model)): cache},
                use_cache=True,
            )
        finally:
            self.model.set_attn_implementation(previous)
            cache.plan = None
        for w in writes:
            cache.block(w.view[-1]).token_ids += list(w.tokens)
        logits = out.logits.float()
        return logits if all_logits else logits[:, -1]

    def prefill(self, cache, name, token_ids, context=None):
        from hogwild_bench.engine.model import Write

        return self.forward(cache, [Write([*(context or []), name], list(token_ids))])[0]
