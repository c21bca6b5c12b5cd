"""Time the Triton attention alone for tile/launch variants (one layer, Qwen2-7B head shape, bf16).

    python experiments/tune_attention.py --out experiments/results/tune_attention_h100.json

Scenario: the bench's 16k shared context in each layout, N = 1 and 4 workers, one new token each. Reports, per
variant, the *device* time of one `attend_rows_triton` call (its kernels' durations summed, median over 20 calls,
torch.profiler): inside a CUDA-graph decode step that is what a layer pays, whereas wall-clock timing of an
eager call (this script's first version) mostly measured Python launch overhead.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from hogwild_bench.bench import layout_lengths
from hogwild_bench.engine import HogwildCache, RotaryShift, get_layout
from hogwild_bench.engine import triton_attention as ta


def scenario(layout: str, n: int, context: int):
    rope = RotaryShift(1.0 / (1e6 ** (torch.arange(0, 128, 2).float() / 128)))
    cache = HogwildCache(1, rope, "triton")
    for name, length in layout_lengths(layout, n, context).items():
        block = cache.writable(name)
        block.start_write([0] * length)
        k = torch.randn(4, length, 128, dtype=torch.bfloat16, device="cuda")
        block.write(0, k, torch.randn_like(k))
        block.finish_write()
    views = get_layout(layout).views(n)
    cache.begin_forward(views, [[1]] * n)
    for row in cache.rows:  # the new token's K/V
        row.own.write(0, torch.randn(4, 1, 128, dtype=torch.bfloat16, device="cuda"),
                      torch.randn(4, 1, 128, dtype=torch.bfloat16, device="cuda"))  # fmt: skip
    query = torch.randn(n, 28, 1, 128, dtype=torch.bfloat16, device="cuda")
    return cache, query, rope


def kernels_per_call(call, calls: int, warmup: int) -> list[list]:
    """The profiler's kernel events of each of ``calls`` calls of ``call()`` (after ``warmup`` calls), in
    launch order: ``[call][launch]``."""
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and "kernel" in e.name]
    per_call = len(kernels) // calls
    return [kernels[c * per_call : (c + 1) * per_call] for c in range(calls)]


def device_ms(call, calls: int = 20) -> float:
    """Median over ``calls`` of the summed device time of the kernels one ``call()`` launches."""
    sums = [sum(k.device_time for k in launched) for launched in kernels_per_call(call, calls, warmup=5)]
    return statistics.median(sums) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--context", type=int, default=16384)
    args = parser.parse_args()
    default = ta.settings
    variants = [replace(default, split=s, block_n=b, num_warps=w, num_stages=st)
                for s, b, w, st in itertools.product((128, 256, 512, 1024), (32, 64, 128), (4, 8), (2, 3))]  # fmt: skip
    points = [(layout, n) for layout in ("contiguous", "interleaved", "combined") for n in (1, 4)]
    results = []
    for layout, n in points:
        cache, query, rope = scenario(layout, n, args.context)
        for variant in variants:
            ta.settings = variant
            plan = ta.TritonPlan.build(cache.rows, 1, 7, query.device)
            try:
                call = lambda q=query, rows=cache.rows, r=rope, p=plan: ta.attend_rows_triton(
                    q, rows, 0, r, 128**-0.5, p
                )
                ms = device_ms(call)
            except Exception as error:  # e.g. out of shared memory for a large tile
                ms = None
                print(variant, type(error).__name__)
            results.append({"layout": layout, "workers": n, **asdict(variant), "ms": ms})
        ta.settings = default
        best = min(
            (r for r in results if r["layout"] == layout and r["workers"] == n and r["ms"]), key=lambda r: r["ms"]
        )
        now = next(r for r in results if r["layout"] == layout and r["workers"] == n and r["split"] == default.split
                   and r["block_n"] == default.block_n and r["num_warps"] == default.num_warps
                   and r["num_stages"] == default.num_stages)  # fmt: skip
        print(json.dumps({"layout": layout, "workers": n, "current_ms": now["ms"], "best": best}), flush=True)
    totals = {}
    for r in results:
        key = (r["split"], r["block_n"], r["num_warps"], r["num_stages"])
        totals[key] = totals.get(key, 0.0) + (r["ms"] if r["ms"] is not None else float("inf"))
    ranking = sorted(totals.items(), key=lambda kv: kv[1])
    print("summed over the points (split, block_n, warps, stages):", ranking[:5])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    summed = [{"variant": k, "ms": v} for k, v in ranking]
    out = {"gpu": torch.cuda.get_device_name(), "context": args.context,
           "measure": "device time per call (profiler)", "results": results, "summed_ms": summed}  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
