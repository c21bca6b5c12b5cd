"""Host cost of a real sweep's replayed decode steps, on a CPU: bucket-graph tables, the generation
coroutines (step boundaries, the boxed-answer stop, snapshots) and token draws, per row and step.

On the H100 a real GSM8K sweep (1.5B, ~200 rows) spends most of its time on the host (BatchTimes in the run's
log). This runs the same host code without a GPU: `ContinuousBatcher` with bucket graphs whose capture and
replay are stubbed (`tests/helpers.py`: a replay returns random logits, as in `tests/test_bucket_tables.py`),
the framework's stop rule and paragraph boundary, collaboration prompts and the finisher, on a 2-layer tiny
model (the eager forwards -- prefills, step headers -- are the tiny model's, so only the replayed path is
representative).
Random logits write random text: a step ends every ~``--step`` tokens (``--step 0``: at paragraph breaks).
Each replayed step's host time (views, plan, tables, "upload" into host buffers) is timed on its own;
``--layers 28`` gives the address tables the depth of the 1.5B and 7B; ``--profile-steps`` runs cProfile over
the replayed steps only (it inflates Python-heavy code: compare like with like). Compare runs on one machine.

    python experiments/sweep_host_cpu.py --out experiments/results/sweep_host_cpu.json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))
sys.path.insert(0, str(ROOT / "tests"))

from helpers import host_buffers, random_replay  # noqa: E402  (the stubs of tests/test_bucket_tables.py)
from profile_sweep import top  # noqa: E402

from hogwild_bench.answers import BOXED_FINISHER, stop_on_boxed  # noqa: E402
from hogwild_bench.engine import GenerationOptions, HogwildGenerator, HogwildLM  # noqa: E402
from hogwild_bench.engine import bucket_graphs as bucket_module  # noqa: E402
from hogwild_bench.engine.batch import BatchJob, ContinuousBatcher  # noqa: E402
from hogwild_bench.engine.sampling import SamplingParams  # noqa: E402
from hogwild_bench.tiny import tiny_model, tiny_tokenizer  # noqa: E402

LAYOUTS = ("combined", "contiguous", "interleaved")


def jobs(lm, tokenizer, count: int, budget: int, step: int) -> list[BatchJob]:
    out = []
    stop = stop_on_boxed(tokenizer)
    for index in range(count):
        workers = (1, 2, 4)[index % 3]
        options = GenerationOptions(
            n_workers=workers, layout=LAYOUTS[(index // 3) % 3], budgets=(budget // 4, budget // 2, budget),
            collab_interval=budget // 2, sampling=SamplingParams(temperature=1.0, seed=index),
        )  # fmt: skip
        boundary = (lambda s: len(s) >= step) if step else None
        gen = HogwildGenerator(lm, tokenizer, options, boundary=boundary, stop=stop, finisher=BOXED_FINISHER)
        problem = f"Problem {index}: what is {index} + {index * 7}? " * 4
        out.append(BatchJob(index, lambda cache, g=gen, p=problem: g.steps(cache, p), workers,
                            gen.worst_case_tokens(problem)))  # fmt: skip
    return out


class ReplayedSteps:
    """Host seconds and one-token rows of every replayed step (an eager fallback, None, is not counted)."""

    def __init__(self, profiler: cProfile.Profile | None):
        self.profiler, self.seconds, self.rows = profiler, [], []
        self.rebuilds = {"after_a_step": 0, "same_views_reordered_or_repeated": 0, "rows_joined": 0, "rows_left": 0}

    def churn(self, before: list, after: list) -> None:
        """Why a bucket's walk was rebuilt: the rows' views (as tuples of block identities) before and after.
        The same distinct views in another order or multiplicity (a write of several tokens rides along as a
        row per token) count as ``same_views_reordered_or_repeated``."""
        old, new = ({tuple(map(id, view)) for view in views} for views in (before, after))
        counts = self.rebuilds
        counts["after_a_step"] += 1
        counts["same_views_reordered_or_repeated"] += old == new
        counts["rows_joined"] += len(new - old)
        counts["rows_left"] += len(old - new)

    def summary(self, walks: int) -> dict:
        ordered, n = sorted(self.seconds), len(self.seconds)
        return {
            "count": n,
            "mean_rows": round(sum(self.rows) / n, 1),
            "median_host_ms": round(1e3 * ordered[n // 2], 3),
            "mean_host_ms": round(1e3 * sum(ordered) / n, 3),
            "host_us_per_row": round(1e6 * sum(ordered) / sum(self.rows), 2),
            "walk_rebuilds_per_step": round(walks / n, 3),
            "walk_rebuilds_after_a_step": self.rebuilds,  # others: a first step, or after `release`
        }


def time_replayed_steps(profiler: cProfile.Profile | None) -> tuple[ReplayedSteps, list[int]]:
    """Wrap `BucketGraph.step` and `steps_again` (timed, optionally profiled; the token draws inside `steps_again`
    left out, as `step` has none) and `ViewPositions.walk` (counted)."""
    steps, walks = ReplayedSteps(profiler), [0]
    step, walk, plan = bucket_module.BucketGraph.step, bucket_module.ViewPositions.walk, bucket_module.BucketGraph._plan
    again = bucket_module.BucketGraph.steps_again

    def timed(run, rows):
        if profiler is not None:
            profiler.enable()
        started = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
        if out is not None:
            steps.seconds.append(seconds)
            steps.rows.append(rows)
        return out

    def timed_step(graph, views, tokens, *args):
        return timed(lambda: step(graph, views, tokens, *args), sum(len(t) for t in tokens))

    def timed_again(graph, count, first, draw):
        drawing = [0.0]

        def timed_draw(logits):
            started = time.perf_counter()
            out = draw(logits)
            drawing[0] += time.perf_counter() - started
            return out

        if profiler is not None:
            profiler.enable()
        started = time.perf_counter()
        moved = again(graph, count, first, timed_draw)
        seconds = time.perf_counter() - started - drawing[0]
        if profiler is not None:
            profiler.disable()
        steps.seconds += [seconds / moved] * moved if moved else []
        steps.rows += [len(first.writes)] * moved
        return moved

    def counted_walk(rows):
        walks[0] += 1
        return walk(rows)

    def watched_plan(graph, rows, *args):
        before = graph.view_walk
        if before is not None and not before.same_views(rows):
            steps.churn(before.row_views, [row.blocks for row in rows])
        return plan(graph, rows, *args)

    bucket_module.BucketGraph.step = timed_step
    bucket_module.BucketGraph.steps_again = timed_again
    bucket_module.BucketGraph._plan = watched_plan
    bucket_module.ViewPositions.walk = staticmethod(counted_walk)
    return steps, walks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--generations", type=int, default=150)
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--step", type=int, default=48, help="tokens per step (0: paragraph breaks)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--profile-steps", action="store_true", help="cProfile the replayed steps only")
    parser.add_argument("--window", type=int, default=1, help="batch.window: decode steps per host round (1: off)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    bucket_module.BucketGraph._allocate = host_buffers
    bucket_module.BucketGraph._capture = random_replay(scale=3.0)
    steps, walks = time_replayed_steps(cProfile.Profile() if args.profile_steps else None)
    tokenizer = tiny_tokenizer()
    lm = HogwildLM(tiny_model("qwen2", num_hidden_layers=args.layers), attention="query_rotation")
    batcher = ContinuousBatcher(lm, max_rows=args.rows, window=args.window)
    batcher.graphs = bucket_module.BucketGraphs(lm, batcher.cache)
    job_list = jobs(lm, tokenizer, args.generations, args.budget, args.step)
    profiler = cProfile.Profile() if args.cprofile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    finished = list(batcher.run(job_list))
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - started
    assert all(f.ok for f in finished), [str(f.error) for f in finished if not f.ok][:1]
    times = batcher.times
    sampled = sum(max(f.result.snapshots.values(), key=lambda s: s.budget).total_tokens for f in finished)
    result = {
        "command": " ".join(["experiments/sweep_host_cpu.py", *sys.argv[1:]]),
        "wall_seconds": round(wall, 2),
        "tokens": sampled,
        "times": {k: round(v, 2) if isinstance(v, float) else v for k, v in vars(times).items()},
        "ms_per_replayed_step": {
            phase: round(1000 * getattr(times, phase) / times.replayed, 2) for phase in ("forward", "draw", "resume")
        },
        "us_per_token": {
            phase: round(1e6 * getattr(times, phase) / sampled, 1) for phase in ("forward", "draw", "resume")
        },
        "replayed_steps": steps.summary(walks[0]),
    }
    if profiler:
        result["top_own"] = top(pstats.Stats(profiler).stats, 2, 30)
    if steps.profiler is not None:
        stats = pstats.Stats(steps.profiler).stats
        result["top_own_in_replayed_steps"] = top(stats, 2, 20, digits=3)
        result["top_cumulative_in_replayed_steps"] = top(stats, 3, 30, digits=3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("top_")}, indent=1))


if __name__ == "__main__":
    main()
