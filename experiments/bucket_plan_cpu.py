"""What a replayed bucket step's attention launches, against what the same step's rows need (CPU, no kernel).

    python experiments/bucket_plan_cpu.py --out experiments/results/session28/bucket_plan_cpu_n2.json

`attention_batched.py` (one layer, blocks sized by their lengths, session 28 on an H100) runs the combined
N = 2 structure of `gpu_timeline.py`'s point at 45-50 us a layer, while the profiled run's attention kernel
averaged ~71 us a call. A bucket graph's plan differs from a plain one in two ways: its work list is sized by
each block's storage capacity (programs past a block's length return at once) and padded to the capacities
captured (times `bucket_graphs.HEADROOM`), and its query tile (``block_m``) is the one of the step it was first
captured with. This runs `gpu_timeline.py`'s jobs (batch_bench's: combined layout, ~512-token prompts, steps
of 64 tokens, collaboration prompt every 256 tokens, sampled) through `ContinuousBatcher` with bucket graphs
whose capture and replay are stubbed (`tests/helpers.py`), on a tiny model with the 7B's head grouping
(28 query heads, 4 KV heads), and for every replayed step compares: the programs per KV head the bucket
launches (its captured work capacity), those of the step's plan by capacity and by length, and the bucket's
query tile against the tile a plan of this step alone would take.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))
sys.path.insert(0, str(ROOT / "tests"))

from batch_bench import add_point_arguments, generated, jobs, prompts  # noqa: E402
from helpers import host_buffers, random_replay  # noqa: E402

from hogwild_bench.bench import random_model_options  # noqa: E402
from hogwild_bench.engine import HogwildGenerator, HogwildLM  # noqa: E402
from hogwild_bench.engine import bucket_graphs as bucket_module  # noqa: E402
from hogwild_bench.engine.batch import ContinuousBatcher  # noqa: E402
from hogwild_bench.engine.triton_attention import plan_arrays  # noqa: E402
from hogwild_bench.tiny import tiny_model, tiny_tokenizer  # noqa: E402


def block_label(name: str) -> str:
    """A block's name without the generation's prefix (``g<k>/``); the batch's shared blocks (``shared<k>/``:
    the prompt's template) as ``template (shared)``."""
    prefix, _, local = name.partition("/")
    return local if prefix.startswith("g") else "template (shared)"


def tokens_by_block(blocks: list) -> dict[str, int]:
    """Visible tokens per block label (`block_label`), over all generations."""
    tokens: Counter = Counter()
    for block in blocks:
        tokens[block_label(block.name)] += block.visible_length
    return dict(tokens)


def watch_plans(points: list[dict]) -> None:
    """Wrap `BucketGraph._plan`: each call appends the bucket's and the step's own plan shapes."""
    plan = bucket_module.BucketGraph._plan

    def watched(graph, rows, *args):
        out = plan(graph, rows, *args)
        blocks, arrays, sizes, _ = out
        _, by_length, length_sizes = plan_arrays(rows, 1, graph.groups, split=graph.split)
        _, own_tile, own_sizes = plan_arrays(rows, 1, graph.groups, by_capacity=True, split=graph.split)
        points.append({
            "rows": len(rows),
            "unique_kv_tokens": sum(b.visible_length for b in blocks),
            "generations": len({b.name.split("/")[0] for b in blocks if b.name.startswith("g")}),
            "kv_tokens_by_block": tokens_by_block(blocks),
            "bucket_block_m": sizes["block_m"],
            "own_block_m": own_sizes["block_m"],
            "launched_programs": graph.caps.work if graph.caps else None,
            "capacity_programs": len(arrays["work_block"]),
            "capacity_programs_own_tile": len(own_tile["work_block"]),
            "length_programs": len(by_length["work_block"]),
            "length_block_m": length_sizes["block_m"],
        })  # fmt: skip
        return out

    bucket_module.BucketGraph._plan = watched


def summarise(points: list[dict]) -> dict:
    steps = [p for p in points if p["launched_programs"] is not None]
    mean = lambda key: round(statistics.fmean(p[key] for p in steps), 1)  # noqa: E731
    return {
        "steps": len(steps),
        "mean_rows": mean("rows"),
        "mean_generations": mean("generations"),
        "mean_unique_kv_tokens": mean("unique_kv_tokens"),
        "mean_unique_kv_tokens_per_generation": round(
            statistics.fmean(p["unique_kv_tokens"] / p["generations"] for p in steps), 1
        ),
        "mean_kv_tokens_per_generation_by_block": {
            name: round(sum(p["kv_tokens_by_block"].get(name, 0) / p["generations"] for p in steps) / len(steps), 1)
            for name in sorted({name for p in steps for name in p["kv_tokens_by_block"]})
        },
        "bucket_block_m": dict(Counter(p["bucket_block_m"] for p in steps)),
        "own_block_m": dict(Counter(p["own_block_m"] for p in steps)),
        "length_block_m": dict(Counter(p["length_block_m"] for p in steps)),
        "mean_programs_per_kv_head": {
            "launched (bucket capacity)": mean("launched_programs"),
            "plan by capacity, bucket tile": mean("capacity_programs"),
            "plan by capacity, own tile": mean("capacity_programs_own_tile"),
            "plan by length": mean("length_programs"),
        },
    }


def shared_template(lm, tokenizer, problem: str, workers: int, budget: int) -> dict:
    """The jobs' prompt tokens; those of its text before the problem (the chat header and collaboration rules:
    the same in every generation of the point); how many leading tokens the prompt shares with them (the
    tokenizer may merge the last of them with the problem's first); and how many the batch shares between
    generations (`HogwildGenerator.shared_opening`)."""
    gen = HogwildGenerator(lm, tokenizer, random_model_options(lm, tokenizer, workers, budget, collab_interval=256))
    prompt = gen.fmt.prompt_text(problem, has_history=gen.layout.has_history)
    prefix, ids = gen.fmt.encode(prompt[: prompt.index(problem)]), gen.fmt.encode(prompt)
    common = next((i for i, (a, b) in enumerate(zip(prefix, ids)) if a != b), len(prefix))
    return {
        "prompt_tokens": len(ids), "template_tokens": len(prefix), "tokens_shared_with_template": common,
        "tokens_shared_between_generations": len(gen.shared_opening(ids)),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    add_point_arguments(parser)
    parser.add_argument("--problems", type=int, default=None, help="default: rows / workers, as gpu_timeline.py")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    bucket_module.BucketGraph._allocate = host_buffers
    bucket_module.BucketGraph._capture = random_replay(scale=3.0)
    points: list[dict] = []
    watch_plans(points)
    tokenizer = tiny_tokenizer("qwen")
    model = tiny_model("qwen2", num_hidden_layers=1, num_attention_heads=28, num_key_value_heads=4, hidden_size=448)
    lm = HogwildLM(model, attention="query_rotation")
    batcher = ContinuousBatcher(lm, max_rows=args.rows)
    batcher.graphs = bucket_module.BucketGraphs(lm, batcher.cache)
    problems = prompts(args.problems or args.rows // args.workers, args.prompt_tokens, tokenizer)
    finished = list(batcher.run(jobs(lm, tokenizer, problems, args.workers, args.budget)))
    assert all(f.ok for f in finished), [str(f.error) for f in finished if not f.ok][:1]
    result = {
        "command": " ".join(["experiments/bucket_plan_cpu.py", *sys.argv[1:]]),
        **generated(finished),  # sampled tokens, and all tokens (step labels and prompts too)
        "first_prompt": shared_template(lm, tokenizer, problems[0], args.workers, args.budget),
        **summarise(points),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
