"""Attention backends: one object per attention path owns how a forward's new K/V are stored, how each row
attends over its view, and whether its decode steps can be replayed from CUDA graphs.

`HogwildCache` stays a cache (named blocks and the forward in flight); it hands both per-layer calls of a
forward (``update`` -> `store`, the registered attention function -> `attend`) to its backend. Per-forward
scratch (a Triton plan, the own blocks' address tables) lives in ``cache.forward_state``, which the cache
empties when the forward ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from hogwild_bench.engine.attention import attend_rotating_keys, attend_rotating_queries

if TYPE_CHECKING:
    from hogwild_bench.engine.blocks import KVBlock
    from hogwild_bench.engine.cache import HogwildCache


class AttentionBackend:
    """The torch paths: rows one at a time, each new token's K/V copied into its row's own block."""

    name: ClassVar[str]
    graphs: ClassVar[bool] = False  # decode steps can be captured and replayed (`engine.graphs.DecodeGraph`)

    def store(self, cache: HogwildCache, keys: torch.Tensor, values: torch.Tensor, layer: int) -> None:
        """Write each row's new (left-padded) ``[rows, kv_heads, T, D]`` keys/values into its own block."""
        q_len = keys.shape[2]
        for b, row in enumerate(cache.rows):
            row.own.write(layer, keys[b, :, q_len - row.n_new :], values[b, :, q_len - row.n_new :])

    def attend(self, cache: HogwildCache, query: torch.Tensor, layer: int, scaling: float, groups: int) -> torch.Tensor:
        """``query [rows, heads, T, D]`` -> ``[rows, T, heads, D]`` over each row's view."""
        raise NotImplementedError

    def commit(self, cache: HogwildCache, source: KVBlock, target: KVBlock) -> None:
        """Append ``source``'s tokens to ``target`` (RoPE shift only)."""
        target.extend_from(source, cache.rope)


class QueryRotationBackend(AttentionBackend):
    """Keys stay at block-local positions; queries are rotated per block and partials merged (torch)."""

    name = "query_rotation"

    def attend(self, cache, query, layer, scaling, groups):
        return torch.stack([attend_rotating_queries(query[b], row, layer, cache.rope, scaling)
                            for b, row in enumerate(cache.rows)])  # fmt: skip


class KeyRotationBackend(AttentionBackend):
    """The plain reference: every block's keys rotated into the row's view, then SDPA (torch)."""

    name = "key_rotation"

    def attend(self, cache, query, layer, scaling, groups):
        return torch.stack([attend_rotating_keys(query[b], row, layer, cache.rope, scaling)
                            for b, row in enumerate(cache.rows)])  # fmt: skip


class TritonBackend(AttentionBackend):
    """All rows in one kernel launch per layer, each shared block read once (`engine.triton_attention`);
    new K/V stored by one launch per layer; decode steps replayable from CUDA graphs."""

    name = "triton"
    graphs = True
    # device types whose new K/V the append kernel stores (on CPU it runs only in Triton's slow interpreter:
    # plain copies there; experiments/host_overhead.py adds "cpu" to time the CUDA path's host work)
    append_kernel_on: ClassVar[tuple[str, ...]] = ("cuda",)

    def store(self, cache, keys, values, layer):
        from hogwild_bench.engine.triton_attention import OwnBlockTables

        if cache.graph is not None:  # capturing: the graph's own device tables say where
            cache.graph.append(layer, keys, values)
            return
        tables = cache.forward_state.get(("own_tables", keys.device))
        if tables is None and keys.device.type in self.append_kernel_on and OwnBlockTables.possible(cache.rows):
            tables = OwnBlockTables(cache.rows, keys.device)
            cache.forward_state[("own_tables", keys.device)] = tables
        if tables is None:  # a block's first write allocates its storage
            super().store(cache, keys, values, layer)
        else:
            tables.append(layer, keys, values)

    def commit(self, cache, source, target):
        from hogwild_bench.engine.triton_attention import append_shifted

        stored = source.addresses()
        if stored is not None and source.keys[0].device.type in self.append_kernel_on:
            append_shifted(target, source, cache.rope)  # one launch for every layer
        else:
            super().commit(cache, source, target)

    def attend(self, cache, query, layer, scaling, groups):
        from hogwild_bench.engine.triton_attention import TritonPlan, attend_rows_triton

        plan = cache.forward_state.get(("triton_plan", query.device))
        if plan is None:  # built once per forward (per device), shared by every layer
            plan = TritonPlan.build(cache.rows, query.shape[2], groups, query.device)
            cache.forward_state[("triton_plan", query.device)] = plan
        return attend_rows_triton(query, cache.rows, layer, cache.rope, scaling, plan)


BACKENDS: dict[str, type[AttentionBackend]] = {
    backend.name: backend for backend in (QueryRotationBackend, KeyRotationBackend, TritonBackend)
}
