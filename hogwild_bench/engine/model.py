"""`HogwildLM`: a stock transformers causal LM running over a `HogwildCache`.

The model is not copied or patched. We register one attention function under the name ``"hogwild"``
with `transformers.AttentionInterface` and select it with the public ``set_attn_implementation``. The
function falls back to SDPA whenever a forward carries no Hogwild plan, so the model still behaves as a
normal model everywhere else (``model.generate`` included).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from hogwild_bench.engine.cache import HogwildCache, PackedRows, cache_keyword, to_device
from hogwild_bench.engine.compiled import CompiledDecoder, StandInCache
from hogwild_bench.engine.rope import RotaryShift, check_model_supported

ATTENTION_NAME = "hogwild"


def hogwild_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    hogwild_cache: HogwildCache | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of every row's new tokens over its block list; SDPA when no Hogwild plan is given."""
    scaling = module.head_dim**-0.5 if scaling is None else scaling
    if isinstance(hogwild_cache, StandInCache):  # traced by torch.compile: the engine is one opaque op
        return torch.ops.hogwild.attend(query, key, value, module.layer_idx, scaling), None
    if hogwild_cache is None or hogwild_cache.rows is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    with torch.no_grad():  # inference only: cached blocks are inference tensors, never part of a graph
        out = hogwild_cache.attend(query, module.layer_idx, scaling, groups=query.shape[1] // key.shape[1])
    if hogwild_cache.finish_after_layer == module.layer_idx:
        hogwild_cache.end_forward()
    return out, None


AttentionInterface.register(ATTENTION_NAME, hogwild_attention)
# masks as for SDPA, so the fallback path (e.g. ``model.generate`` on padded batches) stays correct
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


@dataclass
class Write:
    """One row of a forward: append ``tokens`` to ``view[-1]``, attending over the blocks of ``view``."""

    view: Sequence[str]
    tokens: Sequence[int]


@dataclass
class DeviceTokens:
    """Token ids that are still on the device: write ``writes[j]`` (a one-token write; its host token is a
    placeholder) takes ``source[rows[j]]``. Lets a forward be launched before the host has read the tokens it
    feeds (`engine.batch` steps generations ahead of reading their draws)."""

    writes: Sequence[int]
    source: torch.Tensor  # int64 token ids on the model's device (a draw's output)
    rows: Sequence[int]


def kv_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of cached keys and values one token takes over all of ``model``'s layers (a model on the meta device
    will do: only its config and dtype are read)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dtype = model.get_input_embeddings().weight.dtype
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * dtype.itemsize


def token_slots(n_new: Sequence[int], writes: Sequence[int], width: int | None) -> list[int]:
    """Flat indices in a forward's ``input_ids`` of the last token of each of ``writes``: rows left-padded to
    ``width`` tokens (``[rows, width]``), or, for ``width=None``, packed one after another (``[1, total]``)."""
    if width is not None:
        return [w * width + width - 1 for w in writes]
    ends = list(itertools.accumulate(n_new))
    return [ends[w] - 1 for w in writes]


def fill_tokens(input_ids: torch.Tensor, slots: Sequence[int], tokens: DeviceTokens) -> None:
    """Copy ``tokens`` into the flat ``slots`` of ``input_ids`` (contiguous), in stream order on its device
    (both index lists in one upload)."""
    index = to_device(torch.tensor([list(slots), list(tokens.rows)], dtype=torch.long), input_ids.device)
    input_ids.view(-1)[index[0]] = tokens.source[index[1]]


def default_attention_backend(device: torch.device) -> str:
    """The Triton kernel on CUDA (when triton imports), the torch query-rotation path elsewhere."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401

            from hogwild_bench.engine import triton_attention  # noqa: F401

            return "triton"
        except ImportError:
            pass
    return "query_rotation"


def pack_left(rows: Sequence[Sequence[int]], starts: Sequence[int]) -> torch.Tensor:
    """``[2, rows, T]`` int64: each row's new tokens left-padded to the longest (``[0]``) and their positions
    in the row's own block, counting from ``starts[row]`` (``[1]``). Built as lists: one tensor per forward."""
    q_len = max(len(tokens) for tokens in rows)
    ids, positions = [], []
    for tokens, start in zip(rows, starts):
        pad = [0] * (q_len - len(tokens))
        ids.append(pad + list(tokens))
        positions.append(pad + list(range(start, start + len(tokens))))
    return torch.tensor([ids, positions], dtype=torch.long)


def pack_in_one_row(rows: Sequence[Sequence[int]], starts: Sequence[int]) -> torch.Tensor:
    """``[2, 1, total]`` int64: every row's new tokens one after another (``[0]``) and their positions in their
    row's own block (``[1]``); `cache.PackedRows` maps them back to rows inside attention."""
    ids = [t for tokens in rows for t in tokens]
    positions = [p for tokens, start in zip(rows, starts) for p in range(start, start + len(tokens))]
    return torch.tensor([[ids], [positions]], dtype=torch.long)


class HogwildLM:
    """A causal LM whose forwards read and write named KV blocks.

    >>> lm = HogwildLM(model)
    >>> cache = lm.new_cache()
    >>> lm.prefill(cache, "prompt", prompt_ids)
    >>> logits = lm.forward(cache, [Write(["prompt", "alice"], [t1]), Write(["prompt", "bob"], [t2])])
    """

    def __init__(
        self,
        model: torch.nn.Module,
        attention: str = "auto",
        cuda_graphs: bool = True,
        compile: bool = False,
        compile_dynamic: bool = False,
        pack_rows: bool = True,
        compile_buckets: bool = False,
    ):
        check_model_supported(model.config)
        # decode steps on the Triton path replay CUDA graphs (one CUDA device; a model split over GPUs runs eager)
        self.cuda_graphs = cuda_graphs and len({p.device for p in model.parameters()}) == 1
        self.model = model
        self.rope = RotaryShift.from_model(model)
        self.num_layers = model.config.num_hidden_layers
        self.device = model.get_input_embeddings().weight.device
        self.attention = default_attention_backend(self.device) if attention == "auto" else attention
        if self.attention == "triton" and self.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"attention='triton' needs the model on a CUDA device (this one is on {self.device}) "
                "or TRITON_INTERPRET=1 set before triton is imported; on CPU use 'query_rotation'"
            )
        if model.config._attn_implementation != ATTENTION_NAME:
            model.set_attn_implementation(ATTENTION_NAME)
        # decode forwards (graph captures included) run the torch.compile'd model: its small kernels fused.
        # compile_dynamic: one compilation serves every forward shape (batched runs; see CompiledDecoder)
        self.decoder = CompiledDecoder(model, dynamic=compile_dynamic) if compile or compile_dynamic else None
        # compile_buckets: only the batched steps replayed from bucket graphs run compiled, one static compilation
        # per row-count bucket, made once at capture; the batch's eager forwards (any shape) stay uncompiled
        self.bucket_decoder = CompiledDecoder(model, buckets=True) if compile_buckets and not self.decoder else None
        # a forward whose rows write different numbers of tokens runs them packed in one sequence (no padding)
        self.pack_rows = pack_rows

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of cached keys and values one token takes over all layers."""
        return kv_bytes_per_token(self.model)

    def new_cache(self, attention: str | None = None) -> HogwildCache:
        return HogwildCache(self.num_layers, self.rope, attention or self.attention)

    @torch.inference_mode()
    def forward(
        self,
        cache: HogwildCache,
        writes: Sequence[Write],
        all_logits: bool = False,
        cuda_graphs: bool = True,
        device_tokens: DeviceTokens | None = None,
    ) -> torch.Tensor:
        """Run one batched forward; returns float32 logits ``[rows, V]`` (last token) or ``[rows, T, V]``.

        Row b's tokens sit at block-local positions ``len(view[-1]) ...`` of its own block. Rows are
        left-padded to the longest, or, when they write different numbers of tokens and only last-token
        logits are asked for, packed into one sequence (``pack_rows``: no padded slots in the model's matmuls).
        ``cuda_graphs=False`` runs this forward eagerly even where a decode graph could replay it (views that
        change every few steps would re-capture each time). ``device_tokens``: tokens some one-token writes take
        from the device instead of their (placeholder) host ids.
        """
        if cuda_graphs and device_tokens is None and self._use_graph(cache, writes, all_logits):
            views = tuple(tuple(w.view) for w in writes)
            if views not in cache.decode_graphs:
                from hogwild_bench.engine.graphs import DecodeGraph

                cache.decode_graphs[views] = DecodeGraph(self, cache, views)
            return cache.decode_graphs[views].step([w.tokens[0] for w in writes])
        n_new = [len(w.tokens) for w in writes]
        starts = [cache.writable(w.view[-1]).length for w in writes]
        q_len = max(n_new)
        packed = self.pack_rows and not all_logits and q_len > 1 and sum(n_new) < len(writes) * q_len
        host = pack_in_one_row([w.tokens for w in writes], starts) if packed else pack_left(
            [w.tokens for w in writes], starts)  # fmt: skip
        cache.begin_forward([w.view for w in writes], [w.tokens for w in writes])
        ok = False
        try:
            input_ids, positions = to_device(host, self.device)
            if device_tokens is not None:
                slots = token_slots(n_new, device_tokens.writes, None if packed else q_len)
                fill_tokens(input_ids, slots, device_tokens)
            keep: int | torch.Tensor = 0 if all_logits else 1
            if packed:  # keep each row's last token: its end in the packed sequence
                cache.packed = PackedRows(n_new)
                keep = to_device(torch.tensor(n_new).cumsum(0).sub(1), self.device)
            if self.decoder is not None and not all_logits and (q_len == 1 or self.decoder.dynamic):
                logits = self.decoder(cache, input_ids, positions, keep)
            else:
                out = self.model(
                    input_ids=input_ids, position_ids=positions, **{cache_keyword(type(self.model)): cache},
                    hogwild_cache=cache, use_cache=True, logits_to_keep=keep,
                )  # fmt: skip
                logits = out.logits if all_logits else out.logits[0] if packed else out.logits[:, -1]
            ok = True
        finally:
            cache.end_forward(ok)
        return logits.float()

    def _use_graph(self, cache: HogwildCache, writes: Sequence[Write], all_logits: bool) -> bool:
        """Decode steps (one token per row) on the Triton path replay a CUDA graph when enabled."""
        return (
            self.cuda_graphs
            and not all_logits
            and cache.backend.graphs
            and self.device.type == "cuda"
            and all(len(w.tokens) == 1 for w in writes)
            and writes[0].view[0] in cache.blocks
            and cache.blocks[writes[0].view[0]].length > 0  # something to copy storage shapes from
        )

    def prefill(
        self, cache: HogwildCache, name: str, token_ids: Sequence[int], context: Sequence[str] | None = None
    ) -> torch.Tensor:
        """Append ``token_ids`` to block ``name`` and return the last token's logits.

        ``context=None`` prefills the block *standalone* (it attends only to itself, so it can be reused at
        any offset, as constant headers are in the colab notebook); a list of block names prefills it *in
        the context* of those blocks (exact wherever the block is later used right after them).
        """
        view = [*(context or []), name]
        return self.forward(cache, [Write(view, list(token_ids))])[0]
