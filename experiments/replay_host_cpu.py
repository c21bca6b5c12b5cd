"""Host work of the bucket-graph path of a batched sweep, measured on a CPU (no GPU time needed).

A real sweep on the GPU is host-bound (experiments/README, sessions 11-13): per replayed step the host builds
the views, the attention plan and the padded tables, and between steps it runs every generation's own code.
None of that needs the GPU. This runs the continuous batcher with bucket graphs whose capture and replay are
stand-ins (a replay yields random logits; the tables are built and "uploaded" into host buffers exactly as on
the GPU), on a tiny random Qwen2 with 28 layers (the depth of the 1.5B and 7B: the address tables scale with
it), over a mix of worker counts and layouts with steps of 64 tokens and a finisher at each budget. Eager
forwards (prefills, writes too long for a replay) run the torch attention path and are not what is timed.

    python experiments/replay_host_cpu.py --out experiments/results/replay_host_cpu.json

Reported: host milliseconds per replayed step (and per one-token row), the generations' own code per sampled
token, how often a step rebuilt its walk over the views, and with ``--profile`` (cProfile over the replayed
steps only; it inflates Python-heavy code) the functions with the most own time per step. Compare runs on one
machine only.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the stand-in capture and buffers of the CPU bucket-graph tests

import torch  # noqa: E402
from helpers import host_buffers, random_replay  # noqa: E402

from hogwild_bench.answers import BOXED_FINISHER  # noqa: E402
from hogwild_bench.engine import GenerationOptions, HogwildGenerator, HogwildLM  # noqa: E402
from hogwild_bench.engine import bucket_graphs as bucket_module  # noqa: E402
from hogwild_bench.engine.batch import BatchJob, ContinuousBatcher  # noqa: E402
from hogwild_bench.tiny import tiny_model, tiny_tokenizer  # noqa: E402

LAYOUTS = ("combined", "contiguous", "interleaved")


def jobs(lm, tokenizer, count: int, budgets: tuple[int, ...]) -> list[BatchJob]:
    out = []
    for index in range(count):
        options = GenerationOptions(
            n_workers=(1, 2, 4)[index % 3], layout=LAYOUTS[(index // 3) % 3], budgets=budgets, collab_interval=128,
            early_stop=False, worker_eos="forbid",
        )  # fmt: skip
        gen = HogwildGenerator(lm, tokenizer, options, finisher=BOXED_FINISHER, boundary=lambda s: len(s) >= 64)
        problem = "What is the sum of the first n odd numbers? " * (1 + index % 4)
        out.append(BatchJob(index, lambda cache, g=gen, p=problem: g.steps(cache, p), options.n_workers,
                            gen.worst_case_tokens(problem)))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--generations", type=int, default=90)
    parser.add_argument("--rows", type=int, default=128, help="batch.max_rows (one lane)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--profile", action="store_true", help="also name the functions with the most own time")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # as the runner does on CUDA (batch.cpu_threads)
    bucket_module.BucketGraph._allocate = host_buffers
    bucket_module.BucketGraph._capture = random_replay()
    step_seconds: list[float] = []
    step_rows: list[int] = []
    walks = [0]
    step, walk = bucket_module.BucketGraph.step, bucket_module.ViewPositions.walk

    profiler = cProfile.Profile() if args.profile else None

    def timed_step(graph, views, tokens):
        if profiler is not None:  # only the bucket-graph steps are profiled
            profiler.enable()
        started = time.perf_counter()
        out = step(graph, views, tokens)
        if profiler is not None:
            profiler.disable()
        if out is not None:
            step_seconds.append(time.perf_counter() - started)
            step_rows.append(sum(len(t) for t in tokens))
        return out

    def counted_walk(rows):
        walks[0] += 1
        return walk(rows)

    bucket_module.BucketGraph.step = timed_step
    bucket_module.ViewPositions.walk = staticmethod(counted_walk)
    tokenizer = tiny_tokenizer("qwen")
    lm = HogwildLM(tiny_model("qwen2", num_hidden_layers=args.layers), attention="query_rotation")
    batcher = ContinuousBatcher(lm, max_rows=args.rows)
    batcher.graphs = bucket_module.BucketGraphs(lm, batcher.cache)
    started = time.perf_counter()
    finished = list(batcher.run(jobs(lm, tokenizer, args.generations, tuple(args.budgets))))
    wall = time.perf_counter() - started
    assert all(f.ok for f in finished), [str(f.error) for f in finished if not f.ok][:1]
    sampled = sum(f.result.tokens_per_worker * n for f, n in ((f, (1, 2, 4)[f.key % 3]) for f in finished))
    stats = pstats.Stats(profiler).stats if profiler is not None else {}
    top = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:20]  # by own time
    ordered = sorted(step_seconds)
    result = {
        "command": " ".join(sys.argv),
        "cpu_count": os.cpu_count(),
        "wall_seconds": round(wall, 2),
        "batch_time": batcher.times.summary(),
        "replayed_steps": len(step_seconds),
        "mean_rows_per_replayed_step": round(sum(step_rows) / len(step_rows), 1),
        "median_host_ms_per_replayed_step": round(1e3 * ordered[len(ordered) // 2], 3),
        "mean_host_ms_per_replayed_step": round(1e3 * sum(step_seconds) / len(step_seconds), 3),
        "host_us_per_replayed_row": round(1e6 * sum(step_seconds) / sum(step_rows), 2),
        "walk_rebuilds_per_replayed_step": round(walks[0] / len(step_seconds), 3),
        "sampled_tokens": sampled,
        "resume_us_per_sampled_token": round(1e6 * batcher.times.resume / sampled, 2),
        "profiled": args.profile,  # cProfile inflates Python-heavy code: compare like with like
        "top_own_time_per_replayed_step": [
            {
                "function": f"{Path(file).name}:{line}({name})",
                "calls": calls,
                "ms_per_step": round(1e3 * own / len(step_seconds), 3),
            }
            for (file, line, name), (_, calls, own, _, _) in top
        ],  # fmt: skip
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "top_own_time_per_replayed_step"}, indent=1))


if __name__ == "__main__":
    main()
