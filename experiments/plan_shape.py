"""The attention plan's shape for a batched combined-layout step (CPU, no kernel run): programs that read keys
and partial results per row. Compares plan layouts without a GPU: a program that reads a 5-token
header costs about as much fixed work (table loads, query rotation, a partial written and merged) as one
that reads a thousand keys.

    python experiments/plan_shape.py --generations 32 --workers 2 --history 1024
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hogwild_bench.engine.attention import RowView  # noqa: E402
from hogwild_bench.engine.blocks import KVBlock  # noqa: E402
from hogwild_bench.engine.layouts import get_layout  # noqa: E402
from hogwild_bench.engine.triton_attention import ViewPositions, plan_arrays  # noqa: E402


def block(name: str, length: int) -> KVBlock:
    out = KVBlock(name, 1)
    if length:
        out.start_write(list(range(length)))
        out.write(0, torch.zeros(1, length, 8), torch.zeros(1, length, 8))
        out.finish_write()
    return out


def step_rows(generations: int, workers: int, layout: str, lengths: dict[str, int]) -> list[RowView]:
    """Every generation's rows for one decode step: each generation has blocks of its own."""
    rows, chosen = [], get_layout(layout)
    for g in range(generations):
        names = {name for i in range(workers) for name in chosen.view(i, workers)}
        blocks = {name: block(f"{g}/{name}", lengths.get(name, lengths["step"])) for name in names}
        for i in range(workers):
            view = [blocks[name] for name in chosen.view(i, workers)]
            view[-1].start_write([0])
            rows.append(RowView(view, 1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--layout", default="combined")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--history", type=int, default=1024)
    parser.add_argument("--step", type=int, default=15, help="tokens of each step in progress")
    parser.add_argument("--split", type=int, default=1024)
    parser.add_argument("--heads-per-kv-head", type=int, default=7)
    parser.add_argument("--time", action="store_true", help="also the host time of one plan (as a bucket step)")
    args = parser.parse_args()
    lengths = {"prompt": args.prompt, "history": args.history, "step": args.step,
               "others_header": 10, "separator": 4, "own_header": 8}  # fmt: skip
    rows = step_rows(args.generations, args.workers, args.layout, lengths)
    blocks, arrays, sizes = plan_arrays(rows, 1, args.heads_per_kv_head, split=args.split)
    a = {name: t.numpy() for name, t in arrays.items()}
    work = len(a["work_seg"] if "work_seg" in a else a["work_block"])  # the grouped plan's tables, or main's
    parts = a["row_count"]
    result = {"args": vars(args), "rows": len(rows), "blocks": len(blocks), "programs_per_kv_head": work,
              "partials_per_row_mean": round(float(np.mean(parts)), 2), "partials_max": int(parts.max()),
              "partial_slots": sizes["n_slots"]}  # fmt: skip
    if args.time:  # as `BucketGraph._plan` makes it: by capacity, the walk over the views reused; best of 7
        walk = ViewPositions.walk(rows)
        step = lambda: plan_arrays(rows, 1, args.heads_per_kv_head, by_capacity=True, positions=walk, split=args.split)  # noqa: E731
        result["plan_us"] = round(min(timeit.repeat(step, number=100, repeat=7)) / 100 * 1e6)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
