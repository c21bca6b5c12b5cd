"""Device time of one layer's attention in a batched decode step, against the time to read its K/V once
(random Qwen2-7B head shape: 28 query heads, 4 KV heads, head dim 128, bf16).

    python experiments/attention_batched.py --out experiments/results/attention_batched_h100.json

`gpu_timeline.py` puts the batched run's attention kernel at ~0.46 of its K/V floor (64 rows, combined N = 2).
This asks why, one layer at a time: G generations of N rows each, every generation's cache cut into blocks as
the layout cuts it (prompt, history, each worker's step in progress, the combined layout's headers), one new
token per row, and the same K/V bytes with less structure:

- ``layout``: the layout's blocks (steps of ``--step`` tokens; the rest of ``--context`` in the history, or in
  the workers' own blocks under ``contiguous``);
- ``one_block``: each generation's tokens but its own step blocks in one block, seen by all its rows -- the
  fewest programs and partials the plan can make of this cache;
- ``one_row``: one row per generation over ``one_block``'s cache (``N`` times fewer queries, same K/V): what
  a plain flash-decoding kernel does.

and, with ``--bucket``, the layout's blocks planned as a replayed bucket step plans them: storage reserved as a
generation reserves it (steps 1,024 tokens, the history N x the worker's tokens, doubling capacities), the work
list sized by capacity (``capacity``: programs past a block's length return at once) and then padded with
programs of an empty spare block to `bucket_graphs.HEADROOM` times its size (``bucket``).

For each, and each ``split`` (keys per program), the median device time of the block kernel and of the merge
over ``--calls`` calls (torch.profiler), the programs launched, and the floor: the unique K/V bytes the rows see
over the device's copy bandwidth (as `hogwild_bench.bench.copy_bandwidth` measures it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_attention import kernels_per_call  # noqa: E402

from hogwild_bench.bench import copy_bandwidth, layout_lengths  # noqa: E402
from hogwild_bench.engine import HogwildCache, RotaryShift, get_layout  # noqa: E402
from hogwild_bench.engine import triton_attention as ta  # noqa: E402
from hogwild_bench.engine.bucket_graphs import HEADROOM  # noqa: E402
from hogwild_bench.engine.layouts import HISTORY, PROMPT, step_block  # noqa: E402

HEADS, KV_HEADS, DIM = 28, 4, 128


def generation_blocks(layout: str, n: int, context: int, prompt: int, step: int) -> tuple[dict, list]:
    """One generation's block lengths and its rows' views (block names), for ``layout`` or a structure."""
    if layout == "one_block":
        return {"all": context - n * step} | {step_block(i): step for i in range(n)}, [
            ["all", step_block(i)] for i in range(n)
        ]
    if layout == "one_row":
        return {"all": context - step, step_block(0): step}, [["all", step_block(0)]]
    views = get_layout(layout).views(n)
    lengths = layout_lengths(layout, n, context)  # its blocks and headers; prompt and steps as asked here
    if layout == "contiguous":
        lengths |= {PROMPT: prompt} | {step_block(i): (context - prompt) // n for i in range(n)}
    else:
        lengths |= {PROMPT: prompt, HISTORY: context - prompt - n * step} | {step_block(i): step for i in range(n)}
    seen = {name for view in views for name in view}
    return {name: lengths.get(name, 0) for name in seen}, views


def reserved(n: int, budget: int) -> dict[str, int]:
    """Tokens a generation of ``budget`` tokens per worker reserves per block (`HogwildGenerator.reserved_tokens`
    for a layout with a history: step blocks at most 1,024, the history N x the worker's tokens)."""
    per_worker = int(1.25 * budget) + 256
    return {HISTORY: n * per_worker} | {step_block(i): min(per_worker, 1024) for i in range(n)}


def scenario(layout: str, n: int, generations: int, context: int, prompt: int, step: int, device: str,
             reserve: dict[str, int] | None = None):  # fmt: skip
    """A one-layer cache holding ``generations`` generations (block names prefixed ``g<k>:``), a forward begun
    with one new token per row (written), the queries, the rotary table and the unique K/V tokens seen.
    ``reserve``: tokens of storage reserved per block name before the writes."""
    rope = RotaryShift(1.0 / (1e6 ** (torch.arange(0, DIM, 2).float() / DIM)))
    cache = HogwildCache(1, rope, "triton")
    views, unique = [], 0
    for g in range(generations):
        lengths, gen_views = generation_blocks(layout, n, context, prompt, step)
        for name, length in lengths.items():
            block = cache.writable(f"g{g}:{name}")
            if reserve and name in reserve:
                template = torch.empty(KV_HEADS, 1, DIM, dtype=torch.bfloat16, device=device)
                block._reserve(0, reserve[name], template)
            if length:
                block.start_write([0] * length)
                k = torch.randn(KV_HEADS, length, DIM, dtype=torch.bfloat16, device=device)
                block.write(0, k, torch.randn_like(k))
                block.finish_write()
        unique += sum(lengths.values())
        views += [[f"g{g}:{name}" for name in view] for view in gen_views]
    cache.begin_forward(views, [[1]] * len(views))
    for row in cache.rows:
        k = torch.randn(KV_HEADS, 1, DIM, dtype=torch.bfloat16, device=device)
        row.own.write(0, k, torch.randn_like(k))
    unique += len({id(row.own) for row in cache.rows})
    query = torch.randn(len(views), HEADS, 1, DIM, dtype=torch.bfloat16, device=device)
    return cache, query, rope, unique


def bucket_plan(rows, device, padded: bool) -> ta.TritonPlan:
    """The plan a replayed bucket step launches for ``rows``: work sized by capacity and, when ``padded``,
    `HEADROOM` times that many programs, the extra ones on an empty spare block (`BucketGraph._int32_tables`)."""
    blocks, arrays, sizes = ta.plan_arrays(rows, 1, HEADS // KV_HEADS, by_capacity=True)
    arrays = {name: values.numpy() for name, values in arrays.items()}
    if padded:
        spare, extra = len(blocks), int(len(arrays["work_block"]) * (HEADROOM - 1))
        for name in ("ent_start", "ent_count", "length"):
            arrays[name] = np.append(arrays[name], 0)
        for name, fill in (("work_block", spare), ("work_split", 0), ("work_tile", 0)):
            arrays[name] = np.append(arrays[name], np.full(extra, fill))
        blocks = [*blocks, blocks[0]]  # the spare's addresses: never read (length 0)
    shapes, flat = ta.flat_tables({name: torch.from_numpy(values.astype(np.int32)) for name, values in arrays.items()})
    tensors = ta.table_views(ta.upload(flat, torch.int32, device), shapes)
    return ta.TritonPlan.assemble(blocks, tensors, sizes, ta.pointer_tables(blocks, device))


def measure(cache, query, rope, calls: int, plan_kind: str = "length") -> dict:
    """Median device ms of the block kernel and of the merge over ``calls`` calls, and the plan's shape."""
    if plan_kind == "length":
        plan = ta.TritonPlan.build(cache.rows, 1, HEADS // KV_HEADS, query.device)
    else:
        plan = bucket_plan(cache.rows, query.device, padded=plan_kind == "bucket")
    call = lambda: ta.attend_rows_triton(query, cache.rows, 0, rope, DIM**-0.5, plan)  # noqa: E731
    launched = kernels_per_call(call, calls, warmup=5)

    def kind(name: str) -> str:
        return "block" if "_block_attention_kernel" in name else "merge" if "_merge_kernel" in name else "other"

    by_kind: dict[str, list[float]] = {"block": [], "merge": [], "other": []}
    for kernels in launched:
        per_call = dict.fromkeys(by_kind, 0.0)
        for k in kernels:
            per_call[kind(k.name)] += k.device_time
        for name, us in per_call.items():
            by_kind[name].append(us)
    return {
        **{f"{kind}_ms": round(statistics.median(us) / 1e3, 4) for kind, us in by_kind.items()},
        "programs_per_kv_head": len(plan.work_tile),
        "block_m": plan.block_m,
        "partial_slots": plan.n_slots,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--generations", type=int, default=32)
    parser.add_argument("--context", type=int, default=1536, help="tokens per generation (prompt + history)")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--step", type=int, default=16, help="tokens in each worker's step in progress")
    parser.add_argument("--layouts", nargs="+", default=["combined", "contiguous", "one_block", "one_row"])
    parser.add_argument("--splits", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--bucket", action="store_true", help="also the layouts planned as a bucket step plans them")
    parser.add_argument("--budget", type=int, default=1024, help="tokens per worker the --bucket storage is for")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bandwidth = copy_bandwidth() if device == "cuda" else None
    kv_bytes_per_token = 2 * KV_HEADS * DIM * 2
    shipped, results = ta.settings, []
    runs = [(layout, "length") for layout in args.layouts]
    if args.bucket:
        runs += [(layout, kind) for layout in args.layouts if layout in ("combined", "contiguous")
                 for kind in ("capacity", "bucket")]  # fmt: skip
    for layout, plan_kind in runs:
        reserve = reserved(args.workers, args.budget) if plan_kind != "length" else None
        cache, query, rope, unique = scenario(
            layout, args.workers, args.generations, args.context, args.prompt, args.step, device, reserve
        )
        floor_ms = unique * kv_bytes_per_token / bandwidth * 1e3 if bandwidth else None
        for split in args.splits:
            ta.settings = replace(shipped, split=split, batch_split=split)
            try:
                point = measure(cache, query, rope, args.calls, plan_kind)
            finally:
                ta.settings = shipped
            point |= {"layout": layout, "plan": plan_kind, "split": split, "rows": len(cache.rows),
                      "unique_kv_tokens": unique}  # fmt: skip
            if floor_ms:
                point |= {"floor_ms": round(floor_ms, 4), "block_over_floor": round(point["block_ms"] / floor_ms, 2)}
            results.append(point)
            print(json.dumps(point), flush=True)
        cache.end_forward(ok=False)
    out = {"gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu", "command": " ".join(sys.argv),
           "copy_bandwidth_bytes_per_s": bandwidth, "results": results}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
