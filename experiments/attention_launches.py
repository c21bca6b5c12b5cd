"""Device time of each kernel launch of one layer's Triton attention (one layer, Qwen2-7B head shape, bf16).

    python experiments/attention_launches.py --out experiments/results/attention_launches_h100.json

Same scenario as `tune_attention.py` (the bench's 16k shared context, one new token per worker). For each
layout and N it lists, in launch order, every kernel of one `attend_rows_triton` call (the block-attention
launch, then the merge) with its grid and median device time over 30 calls, so
the N- and layout-dependent part of the attention can be attributed to a launch.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from tune_attention import kernels_per_call, scenario

from hogwild_bench.engine import triton_attention as ta

CALLS = 30


def launches(layout: str, n: int, context: int) -> dict:
    cache, query, rope = scenario(layout, n, context)
    plan = ta.TritonPlan.build(cache.rows, 1, 7, query.device)
    call = lambda: ta.attend_rows_triton(query, cache.rows, 0, rope, 128**-0.5, plan)  # noqa: E731
    calls = kernels_per_call(call, CALLS, warmup=10)
    rows = []
    for i, kernel in enumerate(calls[0]):
        # the first launch is the block attention (grid: work items x KV heads), then the merge
        meta = {"grid": (plan.work_block.numel(), 4), "block_m": plan.block_m} if i == 0 else {}
        rows.append({"kernel": kernel.name, **meta, "us": statistics.median(c[i].device_time for c in calls)})
    return {"layout": layout, "workers": n, "context": context, "n_entries": plan.n_entries,
            "n_blocks": len(plan.blocks), "launches": rows, "total_us": sum(r["us"] for r in rows)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--context", type=int, default=16384)
    args = parser.parse_args()
    points = []
    for layout in ("contiguous", "interleaved", "combined"):
        for n in (1, 4):
            points.append(launches(layout, n, args.context))
            print(json.dumps(points[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "points": points}, indent=1))


if __name__ == "__main__":
    main()
