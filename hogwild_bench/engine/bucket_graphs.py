"""Batched decode steps replayed from CUDA graphs captured per row-count bucket.

`DecodeGraph` serves one fixed tuple of views. In a sweep the generations in flight change every few steps
(one finishes, the next joins), and a capture per new set of views costs more than the replays save. A
`BucketGraph` is captured once for up to ``rows`` rows (a power of two) and serves *any* views: every table
a decode step reads -- the Triton plan, each block's K/V addresses and capacity, each row's own-block
address and write position, the token ids -- lives in device buffers padded to capacities fixed at capture
and refreshed from the host (one copy each for the int32 and int64 tables) before each replay.

A write of several tokens (a step header, a collaboration or finisher prompt) replays too, as one-token rows
(`attention.token_rows`: row ``j`` writes the write's token ``j`` at its position and sees its own block up
to it), so the generations that start a new step need no eager forward of their own.

Padding is inert: padded rows attend to nothing and write their K/V into a scratch block; padded work items
point at a block of length 0 and return at once. A step that outgrows a capacity (more blocks, entries,
work items or partials than captured) re-captures that bucket with headroom.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from hogwild_bench.engine import triton_attention
from hogwild_bench.engine.attention import RowView, token_rows
from hogwild_bench.engine.blocks import KVBlock
from hogwild_bench.engine.cache import HogwildCache, cache_keyword, to_device
from hogwild_bench.engine.graphs import WARMUP_RUNS
from hogwild_bench.engine.model import DeviceTokens, fill_tokens, token_slots
from hogwild_bench.engine.triton_attention import (
    OwnBlockTables,
    StepIncrements,
    TritonPlan,
    ViewPositions,
    plan_steps,
    table_views,
)

HEADROOM = 1.5  # capacities at capture: what the step needs, scaled to a full bucket, times this
PER_BLOCK = ("ent_start", "ent_count", "length")
PER_ENTRY = ("ent_row", "ent_delta", "ent_qstart", "ent_slot")
PER_WORK = ("work_block", "work_split", "work_tile")


@dataclass(frozen=True)
class Capacities:
    """Table sizes a captured graph was built for (``block_m`` and ``split`` must match exactly)."""

    blocks: int  # one more than the blocks in use: the spare, empty block padded work items point at
    entries: int
    work: int
    parts: int  # partials per row
    slots: int  # partial-result slots in all
    block_m: int
    split: int

    EXACT = ("block_m", "split")  # baked into the captured kernels: never grown

    def holds(self, need: Capacities) -> bool:
        return all(getattr(self, f.name) >= getattr(need, f.name) for f in fields(self)) and all(
            getattr(self, name) == getattr(need, name) for name in self.EXACT
        )

    def exact(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.EXACT}

    def grown(self, need: Capacities, scale: float) -> Capacities:
        """Room for ``need`` scaled by ``scale`` (at least what is captured now, the exact fields kept)."""
        size = {f.name: max(getattr(self, f.name), math.ceil(getattr(need, f.name) * scale)) for f in fields(self)}
        return Capacities(**(size | self.exact()))


def bucket_for(rows: int) -> int:
    """The smallest power of two (at least 8) that holds ``rows`` rows."""
    return max(8, 1 << (rows - 1).bit_length())


def _same(now: list, then: list | None) -> bool:
    """The same objects in the same order (addresses are immutable, new ones come with new storage)."""
    return then is not None and len(now) == len(then) and all(a is b for a, b in zip(now, then))


class BucketGraph:
    """Decode steps of up to ``rows`` rows of any views, replayed from one capture."""

    def __init__(self, lm, cache: HogwildCache, rows: int):
        self.lm, self.cache, self.rows = lm, cache, rows
        self.device = lm.device
        config = lm.model.config
        self.groups = config.num_attention_heads // config.num_key_value_heads
        self.graph: torch.cuda.CUDAGraph | None = None
        self.caps: Capacities | None = None
        self.scratch = KVBlock("bucket scratch", lm.num_layers)
        self.captures = self.replays = 0
        self.view_walk: ViewPositions | None = None  # the last step's walk over the views
        self.last: _LastStep | None = None  # the last step, when its rows wrote a token each (`steps_again`)

    # -- host tables -------------------------------------------------------------------------------
    @property
    def split(self) -> int:
        """Keys per attention program: by the bucket's row count, so every step of the bucket has the same."""
        return triton_attention.settings.split_for(self.rows)

    def _plan(self, rows, moves_on: bool) -> tuple[list, dict, dict, StepIncrements | None]:
        """The step's plan (numpy tables, and with ``moves_on`` its `StepIncrements`); the walk over the views is
        reused from the previous step while the rows see the same blocks (most steps: only lengths, offsets and
        token ids change)."""
        if self.view_walk is None or not self.view_walk.same_views(rows):
            self.view_walk = ViewPositions.walk(rows)
        caps = self.caps
        return plan_steps(rows, 1, self.groups, by_capacity=True, block_m=caps.block_m if caps else None,
                          positions=self.view_walk, split=self.split, increments=moves_on)  # fmt: skip

    @staticmethod
    def _need(blocks: list, arrays: dict, sizes: dict) -> Capacities:
        return Capacities(
            blocks=len(blocks) + 1, entries=sizes["n_entries"], work=len(arrays["work_block"]),
            parts=arrays["row_parts"].shape[1], slots=sizes["n_slots"], block_m=sizes["block_m"], split=sizes["split"],
        )  # fmt: skip

    def _int32_tables(self, blocks: list, arrays: dict) -> None:
        """Every plan table padded to the capacities, written into the int32 staging buffer (`_shapes` order).
        Through numpy views: a dozen torch slice assignments cost more than the rest of this."""
        self.host_i32_np.fill(0)
        views = self.host_i32_views
        for name, values in arrays.items():
            values = np.asarray(values)
            if name == "row_parts":
                views[name][: values.shape[0], : values.shape[1]] = values
            else:
                views[name][: len(values)] = values
        views["work_block"][len(arrays["work_block"]) :] = len(blocks)  # the spare block: nothing to do

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        caps, shapes = self.caps, {}
        for name in (*PER_BLOCK, *PER_ENTRY, *PER_WORK):
            shapes[name] = (caps.blocks if name in PER_BLOCK else caps.entries if name in PER_ENTRY else caps.work,)
        return shapes | {"row_parts": (self.rows, caps.parts), "row_count": (self.rows,)}

    def _int64_tables(self, blocks: list, rows: list[RowView], tokens: Sequence[int]) -> None:
        """Into the int64 staging buffer: the token ids and write positions, then ``[3, layers, blocks]`` K/V
        addresses and capacities of the blocks read, the same of each row's own block (padded rows: the scratch
        block). Each address table is rewritten only when its blocks or their storage changed."""
        n = len(tokens)
        read = [b.addresses() for b in blocks]
        if not _same(read, self.written_read):
            self.read_np[:, :, : len(read)] = np.array([a.array for a in read]).transpose(1, 2, 0)
            self.read_np[:, :, len(read) :] = 0
            self.written_read = read
        own = [row.own.addresses() for row in rows]
        if not _same(own, self.written_own):
            self.own_np[:, :, :n] = np.array([a.array for a in own]).transpose(1, 2, 0)
            self.own_np[:, :, n:] = self.scratch.addresses().array[:, :, None]
            self.written_own = own
        self.ids_np.fill(0)
        self.ids_np[0, :n] = tokens
        self.ids_np[1, :n] = [row.own.length + row.write_offset for row in rows]

    def _ensure_scratch(self, blocks: list) -> None:
        template = next(b for b in blocks if all(k is not None for k in b.keys))
        for layer in range(self.lm.num_layers):
            if self.scratch.keys[layer] is None:
                self.scratch._reserve(layer, 1, template.keys[layer])

    # -- capture and replay ------------------------------------------------------------------------
    def _allocate(self) -> None:
        self._allocate_host(pin=True)
        layers, caps, n_i32, n_i64 = self.lm.num_layers, self.caps, self.host_i32.numel(), self.host_i64.numel()
        read, own = 3 * layers * caps.blocks, 3 * layers * self.rows
        self.tables_i32 = torch.empty(n_i32, dtype=torch.int32, device=self.device)
        self.tables_i64 = torch.empty(n_i64, dtype=torch.int64, device=self.device)
        self.uploaded = torch.cuda.Event()
        # the token ids and positions first: the model's inputs sit at the same offsets whatever the capacities
        # (a bucket compiled for them stays valid when the bucket re-captures with more room)
        ids = 2 * self.rows
        self.input_ids = self.tables_i64[: self.rows].view(self.rows, 1)
        self.positions = self.tables_i64[self.rows : ids].view(self.rows, 1)
        self.read_tables = self.tables_i64[ids : ids + read].view(3, layers, caps.blocks)
        self.own_tables = self.tables_i64[ids + read : ids + read + own].view(3, layers, self.rows)
        self.one_new = torch.ones(self.rows, dtype=torch.int32, device=self.device)

    def _allocate_host(self, pin: bool) -> None:
        """The host staging buffers for the current capacities, and the numpy views the tables are written
        through (the device copies are of ``host_i32`` and ``host_i64`` whole)."""
        layers, caps = self.lm.num_layers, self.caps
        n_i32 = sum(math.prod(shape) for shape in self._shapes().values())
        read, own = 3 * layers * caps.blocks, 3 * layers * self.rows
        self.host_i32 = torch.zeros(n_i32, dtype=torch.int32)
        self.host_i64 = torch.zeros(read + own + 2 * self.rows, dtype=torch.int64)
        if pin:
            self.host_i32, self.host_i64 = self.host_i32.pin_memory(), self.host_i64.pin_memory()
        self.host_i32_np = self.host_i32.numpy()
        self.host_i32_views = {name: v.numpy() for name, v in table_views(self.host_i32, self._shapes()).items()}
        host_i64, ids = self.host_i64.numpy(), 2 * self.rows  # `_allocate`'s order
        self.ids_np = host_i64[:ids].reshape(2, self.rows)
        self.read_np = host_i64[ids : ids + read].reshape(3, layers, caps.blocks)
        self.own_np = host_i64[ids + read :].reshape(3, layers, self.rows)
        self.written_read = self.written_own = None  # the addresses the staging tables hold

    def _upload(self, blocks: list, arrays: dict, rows: list[RowView], tokens: Sequence[int]) -> None:
        self.uploaded.synchronize()  # the previous step's copies have read the staging buffers
        self._int32_tables(blocks, arrays)
        self._int64_tables(blocks, rows, tokens)
        self.tables_i32.copy_(self.host_i32, non_blocking=True)
        self.tables_i64.copy_(self.host_i64, non_blocking=True)
        self.uploaded.record()

    def _capture(self, blocks: list, sizes: dict) -> None:
        static = table_views(self.tables_i32, self._shapes())
        sizes = dict(sizes, n_entries=self.caps.entries, n_slots=self.caps.slots)
        # a local: the graph replays from the device tables alone, and a plan kept here would keep the blocks
        # of the generations in flight at capture (their K/V storage) alive after they finish
        plan = TritonPlan.assemble(blocks, static, sizes, tuple(self.read_tables))
        self.lm.rope._freqs(self.device)  # the frequencies must exist before capture

        def forward():
            self.cache.forward_state[("triton_plan", self.device)] = plan.for_new_forward()
            decoder = self.lm.decoder or self.lm.bucket_decoder
            if decoder is not None:
                return decoder(self.cache, self.input_ids, self.positions).float()
            out = self.lm.model(
                input_ids=self.input_ids, position_ids=self.positions, hogwild_cache=self.cache, use_cache=True,
                logits_to_keep=1, **{cache_keyword(type(self.lm.model)): self.cache},
            )  # fmt: skip
            return out.logits[:, -1].float()

        self.cache.graph = self
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(WARMUP_RUNS):  # writes the same K/V at the same place as the real step: harmless
                    forward()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.no_grad():
                self.logits = forward()
        finally:
            self.cache.graph = None
        self.captures += 1

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """`HogwildCache.store_new` while capturing: each row's K/V at its own block's write position."""
        from hogwild_bench.engine.triton_attention import append_rows

        k_ptrs, v_ptrs, capacity = self.own_tables[0, layer], self.own_tables[1, layer], self.own_tables[2, layer]
        append_rows(keys, values, k_ptrs, v_ptrs, capacity, self.positions, self.one_new)

    def step(
        self,
        views: Sequence[Sequence[str]],
        tokens: Sequence[Sequence[int]],
        device_tokens: DeviceTokens | None = None,
        moves_on: bool = False,
    ) -> torch.Tensor | None:
        """Write ``tokens[b]`` at the end of ``views[b][-1]``; float32 logits of each write's last token
        ``[writes, V]``, or None (nothing written) when a block has no storage yet, so the step must run
        eagerly. The graph's rows are the writes' tokens (`token_rows`): at most ``self.rows`` in all.
        ``device_tokens``: one-token writes whose ids are on the device (copied in after the tables).
        ``moves_on``: keep the step, if its rows write a token each, for `steps_again` to move on."""
        cache = self.cache
        self.last = None
        cache.begin_forward(views, tokens)
        ok = False
        try:
            if not OwnBlockTables.possible(cache.rows):
                return None
            rows = token_rows(cache.rows)
            flat = [t for write in tokens for t in write]
            blocks, arrays, sizes, increments = self._plan(rows, moves_on)
            if any(b.addresses() is None for b in blocks):
                return None
            need = self._need(blocks, arrays, sizes)
            capture = self.caps is None or self.graph is None or not self.caps.holds(need)  # (a capture failed)
            if capture:
                start = self.caps or Capacities(**{f.name: 0 for f in fields(Capacities)} | need.exact())
                self.caps = start.grown(need, HEADROOM * self.rows / len(rows))
                blocks, arrays, sizes, increments = self._plan(rows, moves_on)  # with the captured tile
                self._ensure_scratch(blocks)
                self._allocate()
            self._upload(blocks, arrays, rows, flat)
            if device_tokens is not None:  # after the tables: they carry placeholder ids in those slots
                slots = token_slots([len(t) for t in tokens], device_tokens.writes, None)
                fill_tokens(self.input_ids, slots, device_tokens)
            if capture:
                self._capture(blocks, sizes)
            self.graph.replay()
            self.replays += 1
            if moves_on and len(rows) == len(cache.rows):  # (the tables hold its blocks' addresses: `_int64_tables`)
                self.last = _LastStep(list(cache.rows), blocks, arrays, increments, self.written_read,
                                      self.view_walk.unique, increments.visible)  # fmt: skip
            if len(flat) == len(tokens):
                logits = self.logits[: len(flat)].clone()
            else:  # each write's last token
                last = torch.tensor([len(write) for write in tokens]).cumsum(0).sub(1)
                logits = self.logits[to_device(last, self.device)]
            ok = True
            return logits
        finally:
            cache.end_forward(ok)

    def steps_again(self, count: int, first: DeviceTokens, draw: Callable[[torch.Tensor], torch.Tensor]) -> int:
        """The last step's rows ``count`` times more, each step writing one more token into each row's own block --
        the one its row drew from the step before, still on the device -- as a window's guessed steps do. Step 1's
        ids are ``first``; ``draw(logits)`` chooses each step's tokens and returns them on the device (``[rows]``,
        row order), which step ``k + 1`` reads. The steps' tables are the last step's moved on by its
        `StepIncrements` (no views resolved, no plan made), all uploaded at once; between replays the device only
        copies step ``k``'s slice into place. Returns the steps run: 0 (nothing written) unless the last step's rows
        wrote a token each, every block of their views still has the length and storage it left it with and every
        own block has room for all ``count`` tokens; the own blocks then hold them, with placeholder ids."""
        last = self.last
        if last is None or count < 1 or any(b.addresses() is not a for b, a in zip(last.blocks, last.addresses)):
            return 0
        lengths = np.fromiter((b.length for b in last.unique), dtype=np.int64, count=len(last.unique))
        owns = [row.own for row in last.rows]
        if not np.array_equal(lengths, last.visible) or any(b.room() < count for b in owns):
            return 0
        n, pin = len(owns), self.device.type == "cuda"
        self.uploaded.synchronize()  # the staging buffer is free
        tables = torch.empty((count, self.host_i32.numel()), dtype=torch.int32, pin_memory=pin)
        positions = torch.zeros((count, self.rows), dtype=torch.int64, pin_memory=pin)
        start = np.fromiter((b.length for b in owns), dtype=np.int64, count=n)
        arrays = last.arrays
        for k in range(count):
            arrays = last.increments.advance(arrays, 1)
            self._int32_tables(last.blocks, arrays)
            tables[k] = self.host_i32
            positions[k, :n] = torch.from_numpy(start + k)
        tables, positions = tables.to(self.device, non_blocking=True), positions.to(self.device, non_blocking=True)
        slots, source = token_slots([1] * n, range(n), None), first
        for k in range(count):
            self.tables_i32.copy_(tables[k])
            self.positions.view(-1).copy_(positions[k])
            fill_tokens(self.input_ids, slots, source)
            self.graph.replay()
            self.replays += 1
            source = DeviceTokens(range(n), draw(self.logits[:n].clone()), range(n))
        for block in owns:
            block.reinstate([0] * count)
        self.last = replace(last, arrays=arrays, visible=last.visible + count * last.increments.grows)
        return count


@dataclass
class _LastStep:
    """A bucket's last step whose rows wrote one token each: what `BucketGraph.steps_again` moves on from."""

    rows: list[RowView]
    blocks: list[KVBlock]  # the plan's (non-empty) blocks
    arrays: dict[str, np.ndarray]
    increments: StepIncrements
    addresses: list  # the plan's blocks' storage then
    unique: list[KVBlock]  # every block of the views, empty ones included
    visible: np.ndarray  # their lengths after the step


class BucketGraphs:
    """The `BucketGraph` of each row-count bucket a batch uses, over one cache."""

    def __init__(self, lm, cache: HogwildCache):
        self.lm, self.cache = lm, cache
        self.graphs: dict[int, BucketGraph] = {}

    @staticmethod
    def usable(lm, cache: HogwildCache) -> bool:
        return cache.backend.graphs and lm.device.type == "cuda" and lm.cuda_graphs

    @property
    def captures(self) -> int:
        return sum(g.captures for g in self.graphs.values())

    @property
    def replays(self) -> int:
        return sum(g.replays for g in self.graphs.values())

    def release(self, blocks: Sequence[KVBlock]) -> None:
        """Forget the last step's walk of every graph that holds one of ``blocks`` (a finished generation's),
        so their K/V storage is freed now, not when that bucket next replays (a bucket may not run again for
        a long time, and the batch admits new generations in the memory it counts as freed)."""
        gone = {id(block) for block in blocks}
        for graph in self.graphs.values():
            walk = graph.view_walk
            if walk is not None and any(id(block) in gone for block in walk.unique):
                graph.view_walk = None
            if graph.last is not None and any(id(block) in gone for block in graph.last.unique):
                graph.last = None

    def forward_again(self, rows: int, count: int, first: DeviceTokens, draw: Callable) -> int:
        """`BucketGraph.steps_again` of the bucket of ``rows`` one-token rows, whose last step had them (0: not run)."""
        graph = self.graphs.get(bucket_for(rows))
        if graph is None or graph.last is None or len(graph.last.rows) != rows:
            return 0
        return graph.steps_again(count, first, draw)

    def forward(self, writes, device_tokens: DeviceTokens | None = None, moves_on: bool = False) -> torch.Tensor | None:
        """Logits of each write's last token, replayed from the graph of the bucket that holds all of the
        writes' tokens as one-token rows; None when the step cannot replay (the caller runs it eagerly). A view
        naming an unknown block raises `UnknownBlockError` from `begin_forward`, as an eager forward would.
        ``moves_on``: `BucketGraph.step`'s."""
        rows = bucket_for(sum(len(w.tokens) for w in writes))
        if rows not in self.graphs:
            self.graphs[rows] = BucketGraph(self.lm, self.cache, rows)
        return self.graphs[rows].step([w.view for w in writes], [w.tokens for w in writes], device_tokens, moves_on)
