"""Triton decode attention over shared blocks: each block's K/V are read once per step.

One program handles (block, split of that block, kv head). It gathers the queries of *every* view entry
that holds the block -- all workers that see it, each rotated by its own ``own_offset - block_offset`` --
into one tile, and runs a flash-attention pass over the split's keys, so N workers cost one read of a
shared block, not N. Per-entry partial results (output, log-sum-exp) are merged per worker by a second
small kernel. Keys stay at block-local positions; the RoPE shift is fused into the query load.

Metadata is built once per forward (`TritonPlan`); only the per-layer block addresses change per layer.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace

import numpy as np
import torch
import triton
import triton.language as tl

from hogwild_bench.engine.attention import RowView
from hogwild_bench.engine.cache import to_device
from hogwild_bench.engine.rope import RotaryShift


@dataclass
class KernelSettings:
    """Tile sizes and launch settings (``experiments/tune_attention.py`` measures variants on a GPU)."""

    split: int = 256  # keys per program along a block (flash-decoding split), in forwards of few rows
    # Forwards of at least `batch_rows` rows (batched sweeps) have programs enough from their many blocks;
    # longer splits there mean fewer programs and partials: -24 % / -27 % attention at 1.5B x 256 / 128 rows
    # with 2k-token budgets, -3 % at 7B x 64 rows (experiments/README, "K/V loads in 16-byte vectors")
    batch_split: int = 1024
    batch_rows: int = 64
    block_n: int = 64  # keys per inner-loop tile
    num_warps: int = 4
    num_stages: int = 3  # least device time summed over the tuned points: results/tune_attention_h100.json
    # Partials the merge kernel folds per iteration, and its warps; None: by the widest row (`merge_for`)
    merge_chunk: int | None = None
    merge_warps: int | None = None
    # Query rows per program at most (16, 32 or 64): blocks seen by more (entries x group heads x T) are tiled
    max_block_m: int = 64

    def __post_init__(self):
        chunk = self.merge_chunk
        if chunk is not None and (chunk < 1 or chunk & (chunk - 1)):
            raise ValueError(f"KernelSettings.merge_chunk must be a power of two (a Triton range) or None, not {chunk}")
        if self.max_block_m not in (16, 32, 64):
            raise ValueError(f"KernelSettings.max_block_m must be 16, 32 or 64, not {self.max_block_m}")

    def split_for(self, rows: int) -> int:
        """Keys per program for a forward of ``rows`` rows."""
        return self.batch_split if rows >= self.batch_rows else self.split

    def merge_for(self, width: int) -> tuple[int, int]:
        """(chunk, warps) of the merge for rows of at most ``width`` partials: one iteration of the smallest
        power-of-two chunk from 8 that holds them, up to 32, with a warp per 8 partials. Merge programs are
        latency-bound: in a random-7B batched run (64 rows of ~7 partials) 8 / 1 took 0.21 s of kernel time and
        16 / 2 0.24 s where 32 / 4 took 0.46 s (experiments/README, "Where the GPU's time goes", session 25);
        long single-generation contexts (tens of partials) keep the 32 / 4 they were tuned with."""
        chunk = self.merge_chunk or min(32, max(8, 1 << (max(width, 1) - 1).bit_length()))
        return chunk, self.merge_warps or max(1, chunk // 8)


settings = KernelSettings()
POISON = bool(os.environ.get("HOGWILD_TRITON_POISON"))  # fill outputs with NaN first (tests)
NOT_OWN = 1 << 30  # query start for blocks other than the writer's own: nothing is masked


def _jit(tables: tuple[str, ...] = (), sizes: tuple[str, ...] = ()):
    """``triton.jit`` that does not specialise on the alignment of the plan's table pointers (views at varying
    offsets of one uploaded buffer) nor on the values of the sizes that change from forward to forward: a
    real sweep compiled 75 kernel variants (~60 s) before this. Triton versions without
    ``do_not_specialize_on_alignment`` get the plain decorator."""

    def wrap(fn):
        try:
            return triton.jit(fn, do_not_specialize=sizes, do_not_specialize_on_alignment=tables)
        except TypeError:
            return triton.jit(fn, do_not_specialize=sizes)

    return wrap


@_jit(
    tables=(
        "K_PTRS",
        "V_PTRS",
        "CAPACITY",
        "LENGTH",
        "WORK_BLOCK",
        "WORK_SPLIT",
        "WORK_TILE",
        "ENT_START",
        "ENT_COUNT",
        "ENT_ROW",
        "ENT_QSTART",
        "ENT_SLOT",
    )
)
def _block_attention_kernel(
    Q, stride_qr, stride_qh, stride_qt,
    K_PTRS, V_PTRS, CAPACITY, LENGTH,
    WORK_BLOCK, WORK_SPLIT, WORK_TILE,
    ENT_START, ENT_COUNT, ENT_ROW, ENT_QSTART, ENT_SLOT,
    ENT_COS, ENT_SIN,
    O_PART, LSE_PART, stride_os, stride_oh, stride_ot,
    scale_log2, T,
    G: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr,
    SPLIT_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    work = tl.program_id(0)
    kv_head = tl.program_id(1)
    block = tl.load(WORK_BLOCK + work)
    split = tl.load(WORK_SPLIT + work)
    tile = tl.load(WORK_TILE + work)
    length = tl.load(LENGTH + block)
    capacity = tl.load(CAPACITY + block).to(tl.int64)
    ent_start = tl.load(ENT_START + block)
    ent_count = tl.load(ENT_COUNT + block)
    if split * SPLIT_SIZE >= length:  # grids sized by capacity (CUDA graphs) have idle splits
        return
    dtype = Q.dtype.element_ty
    # Addresses read from a table carry no alignment the compiler can see, and without one it loads K/V two
    # bytes at a time, synchronously (no cp.async pipeline): the hint is what makes the key loop stream. True
    # by construction: storage is a torch allocation and a head's stride, capacity x D elements, is a multiple
    # of 16 bytes (`KVBlock.addresses` checks both).
    k_base = tl.multiple_of(tl.load(K_PTRS + block).to(tl.pointer_type(dtype)) + kv_head * capacity * D, 16)
    v_base = tl.multiple_of(tl.load(V_PTRS + block).to(tl.pointer_type(dtype)) + kv_head * capacity * D, 16)

    # query rows: (entry, head in group, query position); wide blocks are tiled over program_id(2)
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    entry = rows // (G * T)
    group = (rows // T) % G
    t = rows % T
    valid = entry < ent_count
    gentry = ent_start + tl.where(valid, entry, 0)
    worker = tl.load(ENT_ROW + gentry)
    qstart = tl.load(ENT_QSTART + gentry)
    head = kv_head * G + group
    d = tl.arange(0, D)
    swapped = (d + HALF) % D
    sign = tl.where(d < HALF, -1.0, 1.0)
    q_off = worker[:, None] * stride_qr + head[:, None] * stride_qh + t[:, None] * stride_qt
    q = tl.load(Q + q_off + d[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
    q_sw = tl.load(Q + q_off + swapped[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
    # cos/sin of each entry's RoPE delta come from a per-forward table: computing them here (accurate sin/cos
    # of angles up to ~1e5 rad) cost more than reading the keys for small blocks seen by many entries
    cos = tl.load(ENT_COS + gentry[:, None] * D + d[None, :])
    sin = tl.load(ENT_SIN + gentry[:, None] * D + d[None, :])
    q = (q * cos + sign[None, :] * q_sw * sin).to(dtype)
    # own block: causal in local positions; other blocks carry a huge qstart, so every key is visible
    q_pos = qstart + t

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    start = split * SPLIT_SIZE
    # keys after the tile's last query position are masked for every row (causal own block): not read at all,
    # which halves a prefill's attention; other blocks' huge qstart leaves their end as it was
    last = tl.max(tl.where(valid, q_pos, -1), axis=0)
    end = tl.minimum(tl.minimum(start + SPLIT_SIZE, length), last + 1)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        in_range = n < end
        k = tl.load(k_base + n[:, None] * D + d[None, :], mask=in_range[:, None], other=0.0)
        v = tl.load(v_base + n[:, None] * D + d[None, :], mask=in_range[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        visible = in_range[None, :] & (n[None, :] <= q_pos[:, None]) & valid[:, None]
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(dtype), v, input_precision=PRECISION)
        m_i = m_new

    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))  # base-2 log-sum-exp
    # each (entry, split) has its own partial slot; int64: slots x heads x D exceeds 2**31 in large batches
    slot = tl.load(ENT_SLOT + gentry).to(tl.int64) + split
    o_off = slot * stride_os + head * stride_oh + t * stride_ot
    tl.store(O_PART + o_off[:, None] + d[None, :], out, mask=valid[:, None])
    tl.store(LSE_PART + (o_off // D), lse, mask=valid)


@_jit(tables=("ROW_PARTS", "ROW_COUNT"), sizes=("max_parts",))
def _merge_kernel(
    O_PART, LSE_PART, stride_op, stride_oh, stride_ot,
    ROW_PARTS, ROW_COUNT, max_parts,
    OUT, stride_r, stride_t, stride_h,
    D: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """Log-sum-exp merge of one row's partials: a flat list of (entry, split) slots, CHUNK at a time."""
    row = tl.program_id(0)
    head = tl.program_id(1)
    t = tl.program_id(2)
    d = tl.arange(0, D)
    lanes = tl.arange(0, CHUNK)
    count = tl.load(ROW_COUNT + row)
    m = tl.full([1], float("-inf"), tl.float32)
    l_sum = tl.zeros([1], tl.float32)
    acc = tl.zeros([D], tl.float32)
    for c0 in range(0, count, CHUNK):
        used = c0 + lanes < count
        part = tl.load(ROW_PARTS + row * max_parts + c0 + lanes, mask=used, other=0).to(tl.int64)
        off = part * stride_op + head * stride_oh + t * stride_ot
        lse = tl.load(LSE_PART + off // D, mask=used, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(lse, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        w = tl.exp2(lse - m_safe)
        o = tl.load(O_PART + off[:, None] + d[None, :], mask=(used & (lse > float("-inf")))[:, None], other=0.0)
        scale_old = tl.exp2(m - m_safe)
        acc = acc * scale_old + tl.sum(w[:, None] * o, 0)
        l_sum = l_sum * scale_old + tl.sum(w, 0)
        m = m_new
    out = acc / tl.where(l_sum > 0, l_sum, 1.0)
    tl.store(OUT + row * stride_r + t * stride_t + head * stride_h + d, out.to(OUT.dtype.element_ty))


def upload(values: list | torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Small host list or CPU tensor -> device tensor without a sync (pinned staging, asynchronous copy)."""
    return to_device(values.to(dtype) if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype),
                     device)  # fmt: skip


def flat_tables(arrays: dict[str, torch.Tensor]) -> tuple[dict[str, tuple[int, ...]], torch.Tensor]:
    """CPU int tensors (1-D or 2-D) -> each one's shape, and all values in one int32 tensor (in order, rows
    flattened): one buffer to upload, cut back into views by `table_views`."""
    shapes = {name: tuple(values.shape) for name, values in arrays.items()}
    return shapes, torch.cat([values.flatten().to(torch.int32) for values in arrays.values()])


def table_views(buffer: torch.Tensor, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Views of ``buffer`` with the ``shapes`` of `flat_tables`, in its order."""
    views, offset = {}, 0
    for name, shape in shapes.items():
        size = shape[0] * (shape[1] if len(shape) == 2 else 1)
        views[name] = buffer[offset : offset + size].view(shape)
        offset += size
    return views


def pointer_tables(blocks: list, device: torch.device):
    """K/V base addresses and capacities ``[layers, blocks]`` of every block, uploaded once per forward.

    Valid when every layer's storage already holds the forward's tokens (`HogwildCache.begin_forward`
    reserves it); otherwise None, and each layer uploads its own row."""
    found = [b.addresses_with_room() for b in blocks]
    if not blocks or None in found:
        return None
    return address_tables(found, device)


def address_tables(found: list, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`BlockAddresses` of some blocks -> device ``[layers, blocks]`` K pointers, V pointers, capacities
    (one stack on the host, one upload)."""
    tables = upload(torch.stack([a.table for a in found], dim=2), torch.int64, device)  # [3, layers, blocks]
    return tables[0], tables[1], tables[2].to(torch.int32)


@dataclass
class TritonPlan:
    """Per-forward metadata shared by all layers (device tensors)."""

    blocks: list
    block_m: int  # query rows per program
    split: int  # keys per program
    work_block: torch.Tensor  # one program per (block, split, query tile) per KV head
    work_split: torch.Tensor
    work_tile: torch.Tensor
    ent_start: torch.Tensor
    ent_count: torch.Tensor
    ent_row: torch.Tensor
    ent_delta: torch.Tensor
    ent_qstart: torch.Tensor
    length: torch.Tensor
    tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # [layers, blocks]: K ptrs, V ptrs, capacity
    ent_slot: torch.Tensor  # each entry's first partial slot; its block's splits follow
    row_parts: torch.Tensor  # [rows, width]: each row's partial slots, used ones first
    row_count: torch.Tensor
    n_entries: int
    n_slots: int
    _rotation: tuple[torch.Tensor, torch.Tensor] | None = None

    def rotation(self, rope: RotaryShift) -> tuple[torch.Tensor, torch.Tensor]:
        """``[n_entries, D]`` float32 cos/sin of each entry's RoPE delta: computed on the device by the first
        layer of a forward (inside a captured graph, from the refreshed deltas), read by every layer."""
        if self._rotation is None:
            self._rotation = tuple(t.contiguous() for t in rope.cos_sin(self.ent_delta, self.ent_delta.device))
        return self._rotation

    def for_new_forward(self) -> TritonPlan:
        """The same tables, rotations not yet computed (a captured forward must compute them itself)."""
        return replace(self, _rotation=None)

    @classmethod
    def build(cls, rows: list[RowView], q_len: int, groups: int, device: torch.device,
              split: int | None = None) -> TritonPlan:  # fmt: skip
        blocks, arrays, sizes = plan_arrays(rows, q_len, groups, split=split)
        shapes, flat = flat_tables(arrays)  # one upload for every table
        tensors = table_views(upload(flat, torch.int32, device), shapes)
        return cls.assemble(blocks, tensors, sizes, pointer_tables(blocks, device))

    @classmethod
    def assemble(cls, blocks, tensors: dict, sizes: dict, tables) -> TritonPlan:
        return cls(blocks=blocks, tables=tables, block_m=sizes["block_m"], split=sizes["split"],
                   n_entries=sizes["n_entries"], n_slots=sizes["n_slots"], **tensors)  # fmt: skip


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)  # triton.cdiv is a jit-able function: ~5 us a call from Python


@dataclass(frozen=True)
class ViewPositions:
    """Every position of every row's view, in view order: its block (an index into ``unique``, the blocks in
    first-appearance order) and its row. The only part of a plan that needs a Python walk; it stays valid
    while the rows see the same blocks in the same order (`same_views`), so decode steps can reuse it."""

    unique: list
    pos_block: np.ndarray  # int64 [positions]
    row_views: list  # each row's list of blocks (identity-compared by `same_views`)
    row_sizes: np.ndarray  # int64 [rows]: positions per row

    @classmethod
    def walk(cls, rows: list[RowView]) -> ViewPositions:
        unique, index, pos_block = [], {}, []
        for row in rows:
            for block in row.blocks:
                b = index.get(id(block))
                if b is None:
                    b = index[id(block)] = len(unique)
                    unique.append(block)
                pos_block.append(b)
        sizes = np.fromiter((len(row.blocks) for row in rows), dtype=np.int64, count=len(rows))
        return cls(unique, np.array(pos_block, dtype=np.int64), [row.blocks for row in rows], sizes)

    def same_views(self, rows: list[RowView]) -> bool:
        return len(rows) == len(self.row_views) and all(r.blocks == v for r, v in zip(rows, self.row_views))


def plan_arrays(
    rows: list[RowView],
    q_len: int,
    groups: int,
    keep_empty: bool = False,
    by_capacity: bool = False,
    block_m: int | None = None,
    positions: ViewPositions | None = None,
    split: int | None = None,
) -> tuple[list, dict[str, torch.Tensor], dict[str, int]]:
    """Host-side metadata of one forward: ``(blocks, {name: int32 CPU tensor}, {name: int})``.

    Each unique block's *entries* are the (worker, RoPE delta, query start) of every view position that
    holds it. Each entry owns one partial-result slot per split of its block (packed: a short block seen by
    many entries does not pay for the longest block's splits). ``keep_empty`` keeps empty blocks and
    ``by_capacity`` sizes the work list and the slots by storage capacity rather than length, so the array
    shapes stay fixed from step to step (CUDA graphs). ``block_m`` fixes the query tile to that of a graph
    captured earlier. ``positions``: the rows' `ViewPositions`, when known (else walked here). ``split``: keys per
    program (default: `KernelSettings.split_for` the number of rows). Apart from that
    walk everything is vector ops -- numpy, not torch: this runs before every forward of a batch of hundreds of
    rows, and a torch call on a small CPU tensor costs several times a numpy one."""
    blocks, arrays, sizes, _ = plan_steps(rows, q_len, groups, keep_empty, by_capacity, block_m, positions, split,
                                          increments=False)  # fmt: skip
    return blocks, {name: torch.from_numpy(t.astype(np.int32, copy=False)) for name, t in arrays.items()}, sizes


@dataclass(frozen=True)
class StepIncrements:
    """How a plan's tables move from one decode step to the next when every row writes one more token into its
    own block and nothing else changes (the same views, no commit, no storage growth): each growing block's
    length and each own entry's query start by 1, each entry's RoPE delta by the number of growing blocks
    between it and its row's own block (under ``combined`` the other workers' steps). The shapes, the work list
    and the slots stay (sized by capacity); only the rows' lists of used partials change, when a block's length
    crosses a multiple of the split. What a window of several decode steps launched from one host plan needs."""

    length: np.ndarray  # per block
    ent_delta: np.ndarray  # per entry
    ent_qstart: np.ndarray  # per entry: 1 for the rows' own blocks
    ent_block: np.ndarray  # per entry: its block (to recount the partials used)
    split: int
    grows: np.ndarray  # per block of the views' walk, empty ones included (`ViewPositions.unique`): 1 or 0
    visible: np.ndarray  # ... and its length once this step's tokens are in

    def advance(self, arrays: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
        """The tables ``steps`` decode steps after those of ``arrays`` (`plan_steps`' numpy arrays)."""
        moved = dict(arrays)
        for name in ("length", "ent_delta", "ent_qstart"):
            moved[name] = arrays[name] + steps * getattr(self, name)
        used = (moved["length"][self.ent_block] + self.split - 1) // self.split
        n_rows, width = arrays["row_parts"].shape
        moved["row_parts"], moved["row_count"] = _row_parts(arrays["ent_row"], arrays["ent_slot"], used, n_rows, width)
        return moved


def plan_steps(
    rows: list[RowView],
    q_len: int,
    groups: int,
    keep_empty: bool = False,
    by_capacity: bool = False,
    block_m: int | None = None,
    positions: ViewPositions | None = None,
    split: int | None = None,
    increments: bool = True,
) -> tuple[list, dict[str, np.ndarray], dict[str, int], StepIncrements | None]:
    """`plan_arrays` with numpy tables, and (unless not asked for: a forward whose steps nothing moves on) the
    `StepIncrements` that give the next decode steps' tables."""
    positions = positions or ViewPositions.walk(rows)
    unique, pos_block, row_sizes = positions.unique, positions.pos_block, positions.row_sizes
    n_rows = len(rows)
    pos_row = np.repeat(np.arange(n_rows), row_sizes)
    row_first = np.cumsum(row_sizes) - row_sizes
    own_pos = row_first + row_sizes - 1

    def own_minus_block(per_block: np.ndarray) -> np.ndarray:
        """Per view position: ``per_block`` summed over the row's positions from it up to its own block."""
        seen = per_block[pos_block]
        before = np.cumsum(seen) - seen  # over all rows
        offset = before - np.repeat(before[row_first], row_sizes)  # within the position's row
        return np.repeat(offset[own_pos], row_sizes) - offset

    visible = np.fromiter((b.visible_length for b in unique), dtype=np.int64, count=len(unique))
    delta = own_minus_block(visible)  # the own block's offset in the view less the block's
    qstart = np.full(len(pos_block), NOT_OWN, dtype=np.int64)
    qstart[own_pos] = np.fromiter((row.query_start(q_len) for row in rows), dtype=np.int64, count=n_rows)
    kept_block = visible > 0 if not keep_empty else np.ones(len(unique), dtype=bool)
    keep = kept_block[pos_block]
    renumber = np.cumsum(kept_block) - 1  # kept blocks in first-appearance order
    blocks = [b for b, k in zip(unique, kept_block.tolist()) if k]
    e_block, e_row = renumber[pos_block[keep]], pos_row[keep]
    n_blocks, split = len(blocks), split or settings.split_for(n_rows)
    length = visible[kept_block]
    extent = np.fromiter(map(_capacity, blocks), dtype=np.int64, count=n_blocks) if by_capacity else length
    splits, used = (extent + split - 1) // split, (length + split - 1) // split
    # entries grouped by block (stable: view order within a block)
    order = np.argsort(e_block, kind="stable")
    ent_block, ent_row = e_block[order], e_row[order]
    ent_count = np.bincount(ent_block, minlength=n_blocks)
    ent_splits = splits[ent_block]
    ent_slot = np.cumsum(ent_splits) - ent_splits
    # One launch. The query tile fits the rows of the block with the most splits (the long context, read by
    # most programs); a block seen by more view entries (a repeated separator) gets one program per tile.
    rows_per_block = ent_count * groups * q_len
    if block_m is None:
        widest = int(np.argmax(splits * (1 << 32) + rows_per_block)) if n_blocks else None
        fit = 1 << (int(rows_per_block[widest]) - 1).bit_length() if n_blocks else 16
        block_m = min(settings.max_block_m, max(16, fit))
    tiles = (rows_per_block + block_m - 1) // block_m
    work_block = np.repeat(np.arange(n_blocks), splits * tiles)
    k = _ranks(splits * tiles)  # split-major, then tile, within each block
    # each row's partial slots: the used ones (block order, then split) then padding, so the merge reads a
    # dense prefix; the width is fixed by capacity when the shapes must not change from step to step
    widths = np.bincount(ent_row, weights=ent_splits, minlength=n_rows).astype(np.int64)
    width = max(1, int(widths.max())) if n_rows else 1
    row_parts, row_count = _row_parts(ent_row, ent_slot, used[ent_block], n_rows, width)
    ent_qstart = qstart[keep][order]
    arrays = {
        "ent_start": np.cumsum(ent_count) - ent_count, "ent_count": ent_count, "ent_row": ent_row,
        "ent_delta": delta[keep][order], "ent_qstart": ent_qstart, "ent_slot": ent_slot,
        "work_block": work_block, "work_split": k // tiles[work_block], "work_tile": k % tiles[work_block],
        "length": length, "row_parts": row_parts, "row_count": row_count,
    }  # fmt: skip
    moves = None
    if increments:
        grows = np.zeros(len(unique), dtype=np.int64)
        grows[pos_block[own_pos]] = 1
        moves = StepIncrements(
            length=grows[kept_block], ent_delta=own_minus_block(grows)[keep][order],
            ent_qstart=(ent_qstart != NOT_OWN).astype(np.int64), ent_block=ent_block, split=split, grows=grows,
            visible=visible,
        )  # fmt: skip
    sizes = dict(n_entries=len(e_row), n_slots=max(1, int(ent_splits.sum())), block_m=block_m, split=split)
    return blocks, arrays, sizes, moves


def _row_parts(ent_row: np.ndarray, ent_slot: np.ndarray, ent_used: np.ndarray, n_rows: int, width: int):
    """Each row's used partial slots, in entry order then split (``[rows, width]``, zero-padded), and their count."""
    part_row = np.repeat(ent_row, ent_used)
    part_slot = np.repeat(ent_slot, ent_used) + _ranks(ent_used)
    by_row = np.argsort(part_row, kind="stable")
    row_count = np.bincount(part_row, minlength=n_rows)
    row_parts = np.zeros((n_rows, width), dtype=np.int32)
    row_parts[part_row[by_row], _ranks(row_count)] = part_slot[by_row]
    return row_parts, row_count


def _capacity(block) -> int:
    """Tokens every layer of ``block`` has storage for (0 without); cached per storage version, unlike a
    tensor's shape."""
    found = block.addresses()
    return 0 if found is None else found.min_capacity


def _ranks(counts: np.ndarray) -> np.ndarray:
    """``0..counts[0]-1, 0..counts[1]-1, ...``: each item's rank within its group."""
    total = int(counts.sum())
    starts = np.cumsum(counts) - counts
    return np.arange(total) - np.repeat(starts, counts)


@_jit(tables=("K_PTRS", "V_PTRS", "CAPACITY", "POS", "N_NEW"))
def _append_kernel(
    NEW_K, NEW_V, stride_r, stride_h, stride_t, K_PTRS, V_PTRS, CAPACITY, POS, N_NEW, Q_LEN, D: tl.constexpr
):
    """Write each row's new K/V (the last ``N_NEW[row]`` of ``Q_LEN`` left-padded slots) into its own block
    from position ``POS[row]`` on, at addresses read from device memory (graph-safe)."""
    row = tl.program_id(0)
    head = tl.program_id(1)
    t = tl.program_id(2)
    skip = Q_LEN - tl.load(N_NEW + row)
    if t >= skip:
        d = tl.arange(0, D)
        dtype = NEW_K.dtype.element_ty
        k_base = tl.multiple_of(tl.load(K_PTRS + row).to(tl.pointer_type(dtype)), 16)  # see the attention kernel
        v_base = tl.multiple_of(tl.load(V_PTRS + row).to(tl.pointer_type(dtype)), 16)
        position = tl.load(POS + row).to(tl.int64) + t - skip
        offset = head * tl.load(CAPACITY + row).to(tl.int64) * D + position * D + d
        source = row * stride_r + head * stride_h + t * stride_t + d
        tl.store(k_base + offset, tl.load(NEW_K + source))
        tl.store(v_base + offset, tl.load(NEW_V + source))


def append_rows(
    keys: torch.Tensor, values: torch.Tensor, k_ptrs, v_ptrs, capacity, positions, n_new: torch.Tensor
) -> None:
    """``keys/values [rows, kv_heads, T, D]`` (left-padded) -> each row's own block: its last ``n_new[row]``
    slots at ``positions[row]`` on. One launch per layer, whatever the number of rows."""
    rows, kv_heads, q_len, dim = keys.shape
    keys, values = keys.contiguous(), values.contiguous()
    with torch.cuda.device(keys.device) if keys.device.type == "cuda" else contextlib.nullcontext():
        _append_kernel[(rows, kv_heads, q_len)](
            keys, values, keys.stride(0), keys.stride(1), keys.stride(2),
            k_ptrs, v_ptrs, capacity, positions, n_new, q_len, D=dim,
        )  # fmt: skip


class OwnBlockTables:
    """Where each row of a forward writes: per layer its own block's K/V addresses and capacity, plus its
    write position and number of new tokens. Built once per forward, read by every layer's append."""

    def __init__(self, rows: list[RowView], device: torch.device):
        self.k_ptrs, self.v_ptrs, self.capacity = address_tables([row.own.addresses() for row in rows], device)
        where = upload([[row.own.length for row in rows], [row.n_new for row in rows]], torch.int32, device)
        self.positions, self.n_new = where[0], where[1]

    @staticmethod
    def possible(rows: list[RowView]) -> bool:
        """Every own block has storage for the forward's tokens in every layer (`begin_forward` reserved it)."""
        return all(row.own.addresses_with_room() is not None for row in rows)

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        append_rows(keys, values, self.k_ptrs[layer], self.v_ptrs[layer], self.capacity[layer], self.positions,
                    self.n_new)  # fmt: skip


def attend_rows_triton(
    query: torch.Tensor,
    rows: list[RowView],
    layer: int,
    rope: RotaryShift,
    scaling: float,
    plan: TritonPlan | None = None,
) -> torch.Tensor:
    """``query [rows, heads, T, D]`` -> ``[rows, T, heads, D]``, same contract as the torch paths."""
    n_rows, heads, q_len, dim = query.shape
    device = query.device
    kv_heads = next(b.keys[layer].shape[0] for row in rows for b in row.blocks if b.keys[layer] is not None)
    groups = heads // kv_heads
    plan = plan or TritonPlan.build(rows, q_len, groups, device)
    if not plan.blocks:
        return torch.zeros(n_rows, q_len, heads, dim, dtype=query.dtype, device=device)
    # every element of `out` and every used partial is written by the kernels; POISON checks that
    out = torch.empty(n_rows, q_len, heads, dim, dtype=query.dtype, device=device)
    query = query.contiguous()
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():  # the layer's GPU
        _launch(query, out, plan, layer, rope, scaling, kv_heads)
    return out


def _launch(query: torch.Tensor, out: torch.Tensor, plan: TritonPlan, layer: int, rope: RotaryShift, scaling: float,
            kv_heads: int) -> None:  # fmt: skip
    """The attention kernel over every (block, split, tile) work item, then the per-row merge into ``out``."""
    n_rows, heads, q_len, dim = query.shape
    groups, device = heads // kv_heads, query.device
    if plan.tables is not None:
        k_ptrs, v_ptrs, capacity = (table[layer] for table in plan.tables)
    else:
        k_ptrs = upload([b.keys[layer].data_ptr() for b in plan.blocks], torch.int64, device)
        v_ptrs = upload([b.values[layer].data_ptr() for b in plan.blocks], torch.int64, device)
        capacity = upload([b.keys[layer].shape[1] for b in plan.blocks], torch.int32, device)
    o_part = torch.empty(plan.n_slots, heads, q_len, dim, dtype=torch.float32, device=device)
    lse_part = torch.empty(plan.n_slots, heads, q_len, dtype=torch.float32, device=device)
    if POISON:
        out.fill_(float("nan"))
        o_part.fill_(float("nan"))
        lse_part.fill_(float("nan"))
    if plan.work_block.numel():
        _block_attention_kernel[(plan.work_block.numel(), kv_heads)](
            query, query.stride(0), query.stride(1), query.stride(2),
            k_ptrs, v_ptrs, capacity, plan.length,
            plan.work_block, plan.work_split, plan.work_tile,
            plan.ent_start, plan.ent_count, plan.ent_row, plan.ent_qstart, plan.ent_slot, *plan.rotation(rope),
            o_part, lse_part, o_part.stride(0), o_part.stride(1), o_part.stride(2),
            scaling * 1.4426950408889634, q_len,
            G=groups, D=dim, HALF=dim // 2, SPLIT_SIZE=plan.split, BLOCK_M=plan.block_m, BLOCK_N=settings.block_n,
            PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
            num_warps=settings.num_warps, num_stages=settings.num_stages if device.type == "cuda" else 1,
        )  # fmt: skip
    chunk, warps = settings.merge_for(plan.row_parts.shape[1])
    _merge_kernel[(n_rows, heads, q_len)](
        o_part, lse_part, o_part.stride(0), o_part.stride(1), o_part.stride(2),
        plan.row_parts, plan.row_count, plan.row_parts.shape[1],
        out, out.stride(0), out.stride(1), out.stride(2),
        D=dim, CHUNK=chunk, num_warps=warps,
    )  # fmt: skip


@_jit(sizes=("n_tokens", "start"))
def _shift_append_kernel(
    LIKE, SRC, DST, COS, SIN, n_tokens, start, layers,
    BLOCK_T: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr,
):  # fmt: skip
    """Append one block's K/V to another in every layer: keys rotated by the target's length (float32 math,
    as `RotaryShift.rotate`), values copied. ``SRC``/``DST``: `BlockAddresses` tables ``[3, layers]``;
    ``LIKE``: a tensor of the storage dtype."""
    layer = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    t = (tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    valid = (t < n_tokens)[:, None]
    d = tl.arange(0, D)
    swapped = (d + HALF) % D
    sign = tl.where(d < HALF, -1.0, 1.0)
    dtype = LIKE.dtype.element_ty
    src_k = tl.multiple_of(tl.load(SRC + layer).to(tl.pointer_type(dtype)), 16)  # see the attention kernel
    src_v = tl.multiple_of(tl.load(SRC + layers + layer).to(tl.pointer_type(dtype)), 16)
    dst_k = tl.multiple_of(tl.load(DST + layer).to(tl.pointer_type(dtype)), 16)
    dst_v = tl.multiple_of(tl.load(DST + layers + layer).to(tl.pointer_type(dtype)), 16)
    src = head * tl.load(SRC + 2 * layers + layer) * D + t[:, None] * D
    dst = head * tl.load(DST + 2 * layers + layer) * D + (start + t[:, None]) * D
    k = tl.load(src_k + src + d[None, :], mask=valid, other=0.0).to(tl.float32)
    k_sw = tl.load(src_k + src + swapped[None, :], mask=valid, other=0.0).to(tl.float32)
    cos = tl.load(COS + d)[None, :]
    sin = tl.load(SIN + d)[None, :]
    tl.store(dst_k + dst + d[None, :], (k * cos + sign[None, :] * k_sw * sin).to(dtype), mask=valid)
    tl.store(dst_v + dst + d[None, :], tl.load(src_v + src + d[None, :], mask=valid), mask=valid)


SHIFT_BLOCK_T = 32  # tokens per program of `append_shifted`


def append_shifted(target, source, rope: RotaryShift) -> None:
    """`KVBlock.extend_from` in one launch for all layers (a commit otherwise costs ~15 small launches per
    layer: with hundreds of rows in a batch, steps end every few forwards and those launches add up)."""
    if not target.prepare_extend(source):
        return
    src, dst = source.addresses(), target.addresses()
    if src is None or dst is None:  # a layer without storage: the per-layer path handles it
        raise ValueError("append_shifted needs storage in every layer of both blocks")
    like = source.keys[0]
    device, n, layers = like.device, source.length, source.num_layers
    kv_heads, dim = like.shape[0], like.shape[-1]
    cos, sin = rope.cos_sin(target.length, device)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        _shift_append_kernel[(layers, kv_heads, _cdiv(n, SHIFT_BLOCK_T))](
            like, src.on(device), dst.on(device), cos, sin, n, target.length, layers,
            BLOCK_T=SHIFT_BLOCK_T, D=dim, HALF=dim // 2,
        )  # fmt: skip
    target.note_extended(source)
