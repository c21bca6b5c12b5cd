"""Decode steps replayed from CUDA graphs.

A decode step (every row writes one token, fixed views) is host-bound in eager mode: ~28 layers of module
code and launches cost far more than the bytes it moves. Its *shape* is fixed by the views, and the Triton
path reads everything that changes between steps -- block lengths, RoPE deltas, query positions, block
addresses -- from device tables. So one capture serves every step: before each replay the tables are
refreshed from the host (one small copy), the new tokens' K/V are appended by a kernel at positions read
from the tables, and the host bookkeeping (lengths, token ids) runs as in eager mode. A graph is
re-captured when a block's storage moves (capacity doubling) or the set of blocks changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hogwild_bench.engine.cache import HogwildCache
from hogwild_bench.engine.triton_attention import TritonPlan, append_rows, plan_arrays, pointer_tables

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

    # -- host side ---------------------------------------------------------------------------------
    def _blocks(self):
        seen = {}
        for view in self.views:
            for name in view:
                seen.setdefault(name, self.cache.block(name))
        return list(seen.values())

    def _ensure_storage(self) -> None:
        """Empty blocks get storage too, so every address is known at capture."""
        template = next(b for b in self._blocks() if all(k is not None for k in b.keys))
        for block in self._blocks():
            for layer in range(block.num_layers):
                if block.keys[layer] is None:
                    block._reserve(layer, 1, template.keys[layer])

    def _signature(self):
        return tuple(
            (id(b), b.keys[layer].data_ptr(), b.capacity(layer))
            for b in self._blocks()
            for layer in range(b.num_layers)
        )

    def _host_tables(self):
        config = self.lm.model.config
        groups = config.num_attention_heads // config.num_key_value_heads
        blocks, arrays, sizes = plan_arrays(self.cache.rows, 1, groups, keep_empty=True, by_capacity=True)
        own = [row.own for row in self.cache.rows]
        arrays["own_pos"] = [b.length for b in own]
        return blocks, arrays, sizes

    # -- capture and replay -------------------------------------------------------------------------
    def _capture(self, tokens: list[int]) -> None:
        blocks, arrays, sizes = self._host_tables()
        device = self.device
        self.static = {name: torch.tensor(values, dtype=torch.int32, device=device) for name, values in arrays.items()}
        self.plan = TritonPlan.assemble(blocks, self.static, sizes, pointer_tables(blocks, device))
        own = [row.own for row in self.cache.rows]
        layers = own[0].num_layers
        self.own_tables = (
            torch.tensor([[b.keys[i].data_ptr() for b in own] for i in range(layers)], device=device),
            torch.tensor([[b.values[i].data_ptr() for b in own] for i in range(layers)], device=device),
            torch.tensor([[b.capacity(i) for b in own] for i in range(layers)], dtype=torch.int32, device=device),
        )
        self.input_ids = torch.tensor([[t] for t in tokens], device=device)
        self.positions = torch.tensor([[b.length] for b in own], device=device)
        self.lm.rope._freqs(device)  # the frequencies must exist before capture

        def forward():
            self.cache.forward_state[("triton_plan", device)] = self.plan
            out = self.lm.model(
                input_ids=self.input_ids, position_ids=self.positions, past_key_values=self.cache,
                hogwild_cache=self.cache, use_cache=True, logits_to_keep=1,
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
        self.signature = self._signature()
        self.captures += 1

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """`HogwildCache.update` while capturing: device-side append at the own blocks' positions."""
        k_ptrs, v_ptrs, capacity = (table[layer] for table in self.own_tables)
        append_rows(keys, values, k_ptrs, v_ptrs, capacity, self.static["own_pos"])

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Write one token per row and return float32 logits ``[rows, V]``."""
        cache = self.cache
        cache.begin_forward(self.views, [[t] for t in tokens])
        ok = False
        try:
            self._ensure_storage()
            if self.graph is None or self._signature() != self.signature:
                self._capture(tokens)
            _, arrays, _ = self._host_tables()
            for name, values in arrays.items():
                host = torch.tensor(values, dtype=torch.int32).pin_memory()
                self.static[name].copy_(host, non_blocking=True)
            self.input_ids.copy_(torch.tensor([[t] for t in tokens]).pin_memory(), non_blocking=True)
            self.positions.copy_(torch.tensor([[row.own.length] for row in cache.rows]).pin_memory(), non_blocking=True)
            self.graph.replay()
            logits = self.logits.clone()
            ok = True
        finally:
            cache.end_forward(ok)
        return logits
