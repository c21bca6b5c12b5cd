"""Drop-in for the official hogwild_llm ``shared_cache`` module, backed by this project's engine.

Notebooks written against the official API move over by changing one import line::

    from hogwild_bench import shared_cache        # was: import shared_cache

    blocks = [shared_cache.CacheBlock(config=model.config) for _ in range(3)]
    cm = shared_cache.SharedCacheManager(cache_structure=[[blocks[0], blocks[2], blocks[1]],
                                                         [blocks[0], blocks[1], blocks[2]]])
    logits = model(**cm.get_input_kwargs(**tokenizer(texts, padding=True, padding_side="left",
                                                       return_tensors="pt"))).logits

This is a thin adapter: a `CacheBlock` is an engine `KVBlock` (plus the `transformers.Cache` surface so it
can be passed as ``past_key_values`` to prefill it on its own), and ``get_input_kwargs`` plans one engine
forward over the blocks of ``cache_structure``. Differences from the official module, chosen to keep what
the notebooks rely on:

* Creating a `CacheBlock` selects the ``"hogwild"`` attention implementation on the (shared) model config;
  it behaves exactly like SDPA whenever a forward is not planned by a manager.
* The block being written must be the last block of its row's structure (true in both notebooks); any other
  ``write_to`` is refused with that message. Unknown keyword arguments raise (none is silently ignored).
* Padded multi-token inputs may be padded on either side: rows are re-packed to the left, so
  ``logits[:, -1]`` is each row's last real token (HF would give a pad position's logits for a
  right-padded row).
* Blocks keep their keys at block-local positions; ``append_from`` re-positions the appended keys by a
  RoPE shift (no recomputation), so a block reads the same wherever it is placed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hogwild_bench.engine.blocks import KVBlock
from hogwild_bench.engine.cache import BlockBackedCache, HogwildCache, cache_keyword
from hogwild_bench.engine.model import ATTENTION_NAME, default_attention_backend, pack_left
from hogwild_bench.engine.rope import RotaryShift, check_model_supported

_ROPES: dict[int, tuple[object, RotaryShift]] = {}  # id(config) -> (config, its rope): one per model config


def _rope_for(config) -> RotaryShift:
    # the entry keeps its config alive, so an id is never reused by another config while it is cached
    if id(config) not in _ROPES:
        _ROPES[id(config)] = (config, RotaryShift.from_config(config))
    return _ROPES[id(config)][1]


class CacheBlock(BlockBackedCache):
    """One shared block of KV cache (``CacheBlock(config=model.config)``)."""

    def __init__(self, config, **kwargs):
        check_model_supported(config)
        super().__init__(config.num_hidden_layers)
        config._attn_implementation = ATTENTION_NAME  # falls back to SDPA outside planned forwards
        self.config = config
        self.rope = _rope_for(config)
        self.kv = KVBlock(f"block{id(self):x}", config.num_hidden_layers)

    # -- the official API ---------------------------------------------------------------------------
    def append_from(self, other: CacheBlock, keep_other: bool = True) -> None:
        """Append ``other``'s tokens (re-positioned by RoPE, not recomputed); ``keep_other=False`` then
        empties ``other`` (moving a finished step into the history)."""
        self.kv.extend_from(other.kv, self.rope)
        if not keep_other:
            other.clear()

    def clear(self) -> None:
        self.kv.clear()

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv.length

    # -- used directly as ``past_key_values`` (prefill of this block alone) -----------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if key_states.shape[0] != 1:
            raise ValueError("a CacheBlock passed as past_key_values takes one sequence; use a SharedCacheManager")
        if layer_idx == 0:
            self.kv.start_write([-1] * key_states.shape[2])
        self.kv.write(layer_idx, key_states[0], value_states[0])
        keys, values = self.kv.layer_kv(layer_idx)
        if layer_idx == self.kv.num_layers - 1:
            self.kv.finish_write()
        return keys[None], values[None]

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.kv.length + query_length, 0

    def __repr__(self) -> str:
        return f"CacheBlock(length={self.kv.length})"


class SharedCacheManager:
    """Each row ``i`` of a batch attends over ``cache_structure[i]`` (in order) and writes its new tokens
    into ``write_to[i]`` (default: the last block of its structure). ``cache_structure`` may be mutated
    between steps."""

    def __init__(self, cache_structure: list[list[CacheBlock]], write_to: list[CacheBlock] | None = None,
                 attention: str = "auto"):  # fmt: skip
        if not cache_structure or not all(cache_structure):
            raise ValueError("cache_structure must be a non-empty list of non-empty block lists")
        self.cache_structure = cache_structure
        self.write_to = write_to
        self.attention = attention
        self._cache: HogwildCache | None = None

    def get_input_kwargs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        write_to: Sequence[CacheBlock] | None = None,
        active_worker_indices: Sequence[int] | None = None,
    ) -> dict:
        """kwargs for ``model(**kwargs)``: one forward of every row over its own block list.

        ``active_worker_indices``: row i of ``input_ids`` is worker ``active_worker_indices[i]`` (a subset, in
        any order); ``write_to``, when given, is per row of ``input_ids``. A row that is all padding is an
        inactive worker: it writes nothing and its logits are meaningless."""
        structure = self.cache_structure
        default_targets = self.write_to
        if active_worker_indices is not None:
            known = range(len(structure))
            bad = [i for i in active_worker_indices if i not in known]
            if bad or len(set(active_worker_indices)) != len(active_worker_indices):
                raise ValueError(
                    f"active_worker_indices {list(active_worker_indices)} must be distinct workers of "
                    f"cache_structure (0..{len(structure) - 1})"
                )
            structure = [structure[i] for i in active_worker_indices]
            if default_targets is not None:
                default_targets = [default_targets[i] for i in active_worker_indices]
        targets = write_to or default_targets or [row[-1] for row in structure]
        input_ids = torch.as_tensor(input_ids)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if len(targets) != input_ids.shape[0] or len(structure) != input_ids.shape[0]:
            raise ValueError(
                f"input has {input_ids.shape[0]} rows but the active cache_structure has {len(structure)} "
                f"and write_to {len(targets)} (select workers with active_worker_indices)"
            )
        rows = _real_tokens(input_ids, attention_mask)
        if not any(rows):
            raise ValueError("every row is padding: no worker has a token to write")
        views = []
        for b, (row, target) in enumerate(zip(structure, targets)):
            if not rows[b]:  # inactive: one placeholder token into a block nobody reads
                views.append([KVBlock(f"inactive{b}", row[-1].kv.num_layers)])
                rows[b] = [0]
                continue
            if row[-1] is not target:
                raise ValueError("write_to[i] must be the last block of cache_structure[i] (see module docs)")
            views.append([block.kv for block in row])
        first = structure[0][0]
        self._abort_stale()
        device = input_ids.device
        attention = self.attention if self.attention != "auto" else default_attention_backend(device)
        cache = HogwildCache(first.kv.num_layers, first.rope, attention)
        cache.finish_after_layer = first.kv.num_layers - 1  # the forward ends inside the model call
        cache.begin_forward_blocks(views, rows)
        self._cache = cache
        packed, positions = pack_left(rows, [view[-1].length for view in views])
        return dict(
            input_ids=packed.to(device),
            position_ids=positions.to(device),
            **{cache_keyword(): cache},
            hogwild_cache=cache,
            use_cache=True,
        )

    def _abort_stale(self) -> None:
        """A forward planned earlier but never run (or that raised) must not block this one."""
        if self._cache is not None and self._cache.rows is not None:
            self._cache.end_forward(ok=False)


def _real_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[list[int]]:
    if attention_mask is None:
        return [row.tolist() for row in input_ids]
    mask = torch.as_tensor(attention_mask).bool()
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(input_ids.shape)}")
    return [ids[m].tolist() for ids, m in zip(input_ids, mask)]


__all__: Sequence[str] = ("CacheBlock", "SharedCacheManager")
