"""Bucket-graph replay under churn on a GPU: many generations of a tiny random model (EOS allowed, early stops,
finishers, mixed worker counts and layouts) join and leave a batch of up to ``--rows`` rows. Compares every
result with the eager batcher's; a crash here names the failing kernel (run with CUDA_LAUNCH_BLOCKING=1).

    CUDA_LAUNCH_BLOCKING=1 HOGWILD_TRITON_POISON=1 python experiments/graph_churn.py --jobs 300 --rows 128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_batching import comparable  # noqa: E402

from hogwild_bench.answers import BOXED_FINISHER, stop_on_boxed  # noqa: E402
from hogwild_bench.engine import GenerationOptions, HogwildGenerator, HogwildLM, SamplingParams  # noqa: E402
from hogwild_bench.engine.batch import BatchJob, ContinuousBatcher  # noqa: E402
from hogwild_bench.tiny import tiny_model, tiny_tokenizer  # noqa: E402


def jobs(lm, tokenizer, count: int, step_tokens: int):
    layouts = ["combined", "contiguous", "interleaved"]
    for i in range(count):
        n = (1, 2, 4)[i % 3]
        options = GenerationOptions(
            n_workers=n, layout=layouts[(i // 3) % 3], budgets=(16, 96, 160 + 8 * (i % 7)), collab_interval=24,
            sampling=SamplingParams(temperature=1.0, seed=i),
        )  # fmt: skip
        gen = HogwildGenerator(lm, tokenizer, options, boundary=lambda s: len(s) >= step_tokens,
                               stop=stop_on_boxed(tokenizer), finisher=BOXED_FINISHER)  # fmt: skip
        problem = "What is 2+2? " * (1 + i % 9)
        yield BatchJob(i, lambda cache, g=gen, p=problem: g.steps(cache, p), n, gen.worst_case_tokens(problem))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--family", default="qwen2")
    parser.add_argument("--step-tokens", type=int, default=8, help="a worker's step ends after this many tokens")
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    model = tiny_model(args.family).to("cuda")
    results = {}
    for graphs in (False, True):
        lm = HogwildLM(model, attention="triton")
        batcher = ContinuousBatcher(lm, max_rows=args.rows, cuda_graphs=graphs)
        finished = list(batcher.run(jobs(lm, tokenizer, args.jobs, args.step_tokens)))
        errors = [f.error for f in finished if not f.ok]
        print(f"graphs={graphs}: {len(finished)} done, {len(errors)} failed {errors[:1]}", flush=True)
        if graphs:
            print(f"captures {batcher.graphs.captures}, replays {batcher.graphs.replays}", flush=True)
        results[graphs] = {f.key: comparable(f.result) for f in finished if f.ok}
    same = sum(results[True].get(k) == v for k, v in results[False].items())
    print(f"{same} of {len(results[False])} generations identical with and without graphs")


if __name__ == "__main__":
    main()
