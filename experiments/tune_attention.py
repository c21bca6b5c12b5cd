"""Time the Triton attention alone for tile/launch variants (one layer, Qwen2-7B head shape, bf16).

    python experiments/tune_attention.py --out experiments/results/tune_attention_h100.json

Scenario: the bench's 16k shared context in the interleaved and combined layouts, N = 1 and 4 workers, one new
token each. Reports the median time of `attend_rows_triton` per variant (triton.testing.do_bench).
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
import triton

from hogwild_bench.bench import layout_lengths
from hogwild_bench.engine import HogwildCache, RotaryShift, get_layout
from hogwild_bench.engine import triton_attention as ta


def scenario(layout: str, n: int, context: int):
    rope = RotaryShift(1.0 / (1e6 ** (torch.arange(0, 128, 2).float() / 128)))
    cache = HogwildCache(1, rope, "triton")
    for name, length in layout_lengths(layout, n, context).items():
        block = cache.block(name)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--context", type=int, default=16384)
    args = parser.parse_args()
    default = ta.settings
    variants = [replace(default, split=s, block_n=b, num_warps=w, num_stages=st)
                for s, b, w, st in itertools.product((128, 256, 512), (32, 64, 128), (4, 8), (2, 3))]  # fmt: skip
    points = [(layout, n) for layout in ("interleaved", "combined") for n in (1, 4)]
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
                ms = triton.testing.do_bench(call, warmup=25, rep=100)
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
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "context": args.context,
                                          "results": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
