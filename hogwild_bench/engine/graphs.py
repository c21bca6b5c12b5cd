"""Decode steps replayed from CUDA graphs.

A decode step (every row writes one token, fixed views) is host-bound in eager mode: ~28 layers of module
code and launches cost far more than the bytes it moves. Its *shape* is fixed by the views, and the Triton
path reads everything that changes between steps -- block lengths, RoPE deltas, query positions, block
addresses -- from device tables. So one capture serves every step: before each replay the tables are
refreshed from the host (one small copy), the new tokens' K/V are appended by a kernel at positions read
from the tables, and the host bookkeeping (lengths, token ids) runs as in eager mode. A graph is
re-captured when a block's storage moves (capacity doubling) or the set of blocks changes.

The host's share of a step (the plan, ~1 ms on an H100 machine's CPU at 16k) is prepared for the *next* step
right after this one's replay is launched, while the device runs it: assuming every row writes one more
token into the same blocks, which is what a decode loop does between step boundaries. The next step uses
those tables only if the cache is in exactly the predicted state (the same block objects, storage, lengths
and pending tokens: everything a plan reads); otherwise it computes them as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hogwild_bench.engine.cache import HogwildCache, cache_keyword
from hogwild_bench.engine.triton_attention import (
    TritonPlan,
    address_tables,
    append_rows,
    flat_tables,
    plan_arrays,
    pointer_tables,
    table_views,
)

WARMUP_RUNS = 1


class DecodeGraph:
    """One captured decode step for a fixed tuple of views (one per row)."""

    def __init__(self, lm, cache: HogwildCache, views: Sequence[Sequence[str]]):
        self.lm, self.cache = lm, cache
        self.views = [list(v) for v in views]
        self.device = lm.device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.signature = None
        self.captures = 0
        # for the next step: (the cache state it assumes, its int32 tables, whether they are on the device already)
        self.prepared: tuple[tuple, np.ndarray, bool] | None = None
        self.prepared_hits = 0

    # -- host side ---------------------------------------------------------------------------------
    def _blocks(self) -> list:
        seen = {}
        for view in self.views:
            for name in view:
                seen.setdefault(name, self.cache.block(name))
        return list(seen.values())

    def _ensure_storage(self, blocks: list) -> None:
        """Empty blocks get storage too, so every address is known at capture."""
        template = next(b for b in blocks if all(k is not None for k in b.keys))
        for block in blocks:
            for layer in range(block.num_layers):
                if block.keys[layer] is None:
                    block._reserve(layer, 1, template.keys[layer])

    @staticmethod
    def _signature(blocks: list) -> tuple:
        """Changes exactly when a block's storage moves: then the captured addresses are stale."""
        return tuple((id(b), b.storage_version) for b in blocks)

    @staticmethod
    def _state(blocks: list) -> tuple:
        """Everything the plan's tables depend on besides the fixed views: which block objects, their storage
        (capacity), lengths and pending tokens."""
        return tuple((b, b.storage_version, b.length, b.pending) for b in blocks)

    def _same_state(self, blocks: list, prepared: tuple) -> bool:
        """The cache is in the state ``prepared`` (`_prepare_next`'s) was made for (blocks compare by identity)."""
        return prepared[0] == self._state(blocks)

    def _prepare_next(self) -> None:
        """The int32 tables of the next step if every row writes one more token in the same blocks, computed
        while the device runs the step just launched (no forward is in flight on the host side: the cache is
        put in that state and back), and already copied to the device when they fit the captured graph: the
        copy is queued behind the running replay, which reads the tables it was launched with."""
        self.prepared = None
        cache = self.cache
        try:
            cache.begin_forward(self.views, [[0]] * len(self.views))
        except (KeyError, ValueError, RuntimeError):  # the next step will raise or re-plan on its own
            return
        try:
            blocks = self._blocks()
            flat_i32 = self._int32_values()
            fits = self.graph is not None and self._signature(blocks) == self.signature
            fits = fits and len(flat_i32) == self.host_i32.numel()
            if fits:
                self._upload_tables(flat_i32)
            self.prepared = (self._state(blocks), flat_i32, fits)
        finally:
            cache.end_forward(ok=False)

    def _host_tables(self):
        config = self.lm.model.config
        groups = config.num_attention_heads // config.num_key_value_heads
        return plan_arrays(self.cache.rows, 1, groups, keep_empty=True, by_capacity=True)

    def _int32_values(self) -> np.ndarray:
        """The forward in flight's plan tables, flattened in capture order (what `_upload_tables` copies)."""
        return flat_tables(self._host_tables()[1])[1].numpy()

    def _ids(self, tokens: list[int]) -> list[int]:
        """The int64 table: token ids, then each row's write position."""
        return [*tokens, *(row.own.length for row in self.cache.rows)]

    # -- capture and replay -------------------------------------------------------------------------
    def _capture(self, tokens: list[int]) -> None:
        blocks, arrays, sizes = self._host_tables()
        device, rows = self.device, len(tokens)
        shapes, flat = flat_tables(arrays)
        total = len(flat)
        # one pinned staging buffer and one device buffer for all tables: a step uploads them in one copy
        self.host_i32 = torch.empty(total, dtype=torch.int32).pin_memory()
        self.host_i64 = torch.empty(2 * rows, dtype=torch.int64).pin_memory()
        self.tables_i32 = torch.empty(total, dtype=torch.int32, device=device)
        self.tables_i64 = torch.empty(2 * rows, dtype=torch.int64, device=device)
        self.uploaded_tables, self.uploaded_ids = torch.cuda.Event(), torch.cuda.Event()
        self.static = table_views(self.tables_i32, shapes)
        self.input_ids = self.tables_i64[:rows].view(rows, 1)
        self.positions = self.tables_i64[rows:].view(rows, 1)
        self._upload_tables(flat.numpy())
        self._upload_ids(self._ids(tokens))
        self.plan = TritonPlan.assemble(blocks, self.static, sizes, pointer_tables(blocks, device))
        self.own_tables = address_tables([row.own.addresses() for row in self.cache.rows], device)
        self.one_new = torch.ones(rows, dtype=torch.int32, device=device)
        self.lm.rope._freqs(device)  # the frequencies must exist before capture

        def forward():
            self.cache.forward_state[("triton_plan", device)] = self.plan.for_new_forward()
            if self.lm.decoder is not None:
                return self.lm.decoder(self.cache, self.input_ids, self.positions).float()
            out = self.lm.model(
                input_ids=self.input_ids, position_ids=self.positions, hogwild_cache=self.cache, use_cache=True,
                logits_to_keep=1, **{cache_keyword(type(self.lm.model)): self.cache},
            )  # fmt: skip
            return out.logits[:, -1].float()

        self.cache.graph = self
        try:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(WARMUP_RUNS):  # writes the same K/V at the same place as the real step: harmless
                    forward()
            torch.cuda.current_stream(device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.no_grad():
                self.logits = forward()
        finally:
            self.cache.graph = None
        self.signature = self._signature(blocks)
        self.captures += 1

    def _upload_tables(self, flat_i32: np.ndarray) -> None:
        """The plan's int32 tables -> the device buffer the graph reads: an asynchronous copy from pinned memory
        (filled through numpy: torch ops on small CPU tensors cost more)."""
        self.uploaded_tables.synchronize()  # the last copy has read the staging buffer
        self.host_i32.numpy()[:] = flat_i32
        self.tables_i32.copy_(self.host_i32, non_blocking=True)
        self.uploaded_tables.record()

    def _upload_ids(self, flat_i64: list[int]) -> None:
        """Token ids and write positions -> the graph's int64 inputs (as `_upload_tables`)."""
        self.uploaded_ids.synchronize()
        self.host_i64.numpy()[:] = flat_i64
        self.tables_i64.copy_(self.host_i64, non_blocking=True)
        self.uploaded_ids.record()

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """`HogwildCache.store_new` while capturing: device-side append at the own blocks' positions."""
        k_ptrs, v_ptrs, capacity = (table[layer] for table in self.own_tables)
        append_rows(keys, values, k_ptrs, v_ptrs, capacity, self.positions, self.one_new)

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Write one token per row and return float32 logits ``[rows, V]``."""
        cache = self.cache
        cache.begin_forward(self.views, [[t] for t in tokens])
        ok = False
        try:
            blocks = self._blocks()
            fresh = self.graph is not None and self._signature(blocks) == self.signature
            uploaded, prepared = False, self.prepared
            self.prepared = None  # used once: any upload or capture from here on makes its device copy stale
            if fresh:
                if prepared is not None and self._same_state(blocks, prepared):
                    _, flat_i32, uploaded = prepared
                    self.prepared_hits += 1
                else:
                    flat_i32 = self._int32_values()
                fresh = len(flat_i32) == self.host_i32.numel()  # same table shapes as captured
            if fresh:
                if not uploaded:
                    self._upload_tables(flat_i32)
                self._upload_ids(self._ids(tokens))
            else:
                self._ensure_storage(blocks)
                self._capture(tokens)
            self.graph.replay()
            logits = self.logits.clone()
            ok = True
        finally:
            cache.end_forward(ok)
        self._prepare_next()  # host work for the next step while the device runs this one
        return logits
