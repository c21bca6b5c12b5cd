"""Format ablation on a real model: which parts of the Hogwild! format cost a small instruct model accuracy.

Each variant is an ordinary run of the framework (``hogwild_bench.runner.run``; its records land in
``--root``, resumable: a second call continues where a first one stopped), then summarised into one JSON
row: accuracy with a 95 % Wilson interval, how many generations stopped on their own answer, the share
flagged degenerate and the mean compression ratio (`hogwild_bench.metrics`). The JSON is rewritten after
every variant, so a call cut off by its time limit still returns what finished.

    python experiments/format_ablation.py --limit 100 --budgets 128,256,512 --out results/format_ablation_h100.json \\
        --variants single,n2_combined_forbid,n2_combined
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from hogwild_bench.analysis.accuracy import wilson_interval  # noqa: E402
from hogwild_bench.config import register_configs  # noqa: E402
from hogwild_bench.runner import run, run_dir_of  # noqa: E402
from hogwild_bench.store import ResultStore  # noqa: E402

N2 = ["protocol=hogwild", "protocol.workers=2"]
SAMPLED = ["generation.temperature=0.6", "generation.top_p=0.95"]
VARIANTS: dict[str, list[str]] = {
    # one worker, plain chain of thought (the `single` protocol)
    "single": ["protocol=single", "protocol.workers=1"],
    # one worker in the Hogwild! format: combined layout's headers, step labels, collaboration prompt
    "n1_combined": ["protocol=hogwild", "protocol.workers=1", "layout=combined"],
    "n1_combined_forbid": [
        "protocol=hogwild",
        "protocol.workers=1",
        "layout=combined",
        "generation.worker_eos=forbid",
    ],  # fmt: skip
    # two workers: the collapsed setting (end-of-turn tokens forbidden), then one change at a time
    "n2_combined_forbid": [*N2, "layout=combined", "generation.worker_eos=forbid"],
    "n2_combined": [*N2, "layout=combined"],
    "n2_combined_no_headers": [*N2, "layout=combined", "layout.headers=false"],
    "n2_combined_no_labels": [*N2, "layout=combined", "generation.step_labels=false"],
    "n2_combined_no_greeting": [*N2, "layout=combined", "generation.greeting=false"],
    "n2_combined_no_collab": [*N2, "layout=combined", "generation.collab_interval=null"],
    # the collaboration prompt where it fires: every 128 tokens (the default 512 never fires below budget 512)
    "n2_combined_collab128": [*N2, "layout=combined", "generation.collab_interval=128"],
    "n2_paper_collab128": [*N2, "layout=combined", "prompt=paper", "generation.collab_interval=128"],
    "n2_combined_in_context": [*N2, "layout=combined", "generation.header_prefill=in_context"],
    "n2_contiguous": [*N2, "layout=contiguous"],
    "n2_interleaved": [*N2, "layout=interleaved"],
    # the step labels alone: one worker with and without them (the rest of its format is `single`'s), and
    # two workers without them
    "n1_contiguous": ["protocol=hogwild", "protocol.workers=1", "layout=contiguous"],
    "n1_contiguous_no_labels": [
        "protocol=hogwild",
        "protocol.workers=1",
        "layout=contiguous",
        "generation.step_labels=false",
    ],  # fmt: skip
    "n2_interleaved_no_labels": [*N2, "layout=interleaved", "generation.step_labels=false"],
    # the paper's prompt layout (prompt=paper: rules in the user turn, the first worker proposes a plan)
    "n2_paper": [*N2, "layout=combined", "prompt=paper"],
    # sampling instead of greedy decoding (greedy workers loop on their own and each other's lines)
    "single_sampled": ["protocol=single", "protocol.workers=1", *SAMPLED],
    "n2_combined_sampled": [*N2, "layout=combined", *SAMPLED],
    "n2_paper_sampled": [*N2, "layout=combined", "prompt=paper", *SAMPLED],
}


def summarise(name: str, overrides: list[str], run_dir: Path, seconds: float) -> dict:
    """The row at the largest budget, plus accuracy (and interval) at every budget of the same generations."""
    every = [r for r in ResultStore(run_dir).records() if r.get("status") == "ok"]
    budgets = sorted({r["budget"] for r in every})
    curve = {}
    for budget in budgets:
        at = [r for r in every if r["budget"] == budget]
        hits = sum(bool(r["correct"]) for r in at)
        curve[budget] = {"n": len(at), "accuracy": hits / len(at), "ci95": list(wilson_interval(hits, len(at)))}
    records = [r for r in every if r["budget"] == budgets[-1]]
    hits = sum(bool(r["correct"]) for r in records)
    low, high = wilson_interval(hits, len(records))
    ratios = [max(r["worker_compression"]) for r in records]
    return {
        "variant": name,
        "overrides": overrides,
        "n": len(records),
        "accuracy": hits / len(records) if records else None,
        "ci95": [low, high],
        "stopped_on_answer": sum(r.get("answered_by") is not None for r in records),
        "ended_by_eos": sum(any(e and e[0] == "eos" for e in r.get("worker_ends") or []) for r in records),
        "degenerate": sum(bool(r["degenerate"]) for r in records),
        "mean_max_compression": sum(ratios) / len(ratios) if ratios else None,
        "mean_tokens_per_worker": sum(r["tokens_per_worker"] for r in records) / len(records) if records else None,
        "placeholder_answers": sum(bool(r.get("placeholder_answer")) for r in records),
        "seconds": round(seconds, 1),
        "by_budget": curve,
        "run_dir": str(run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="qwen25_coder_15b_instruct")
    parser.add_argument("--dataset", default="gsm8k")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--budgets", default="128,256,512")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--root", default="/tmp/ablation")
    parser.add_argument("--out", default="format_ablation.json")
    parser.add_argument("--set", action="append", default=[], metavar="OVERRIDE",
                        help="a speed-only override for every variant, e.g. batch.cuda_graphs=false")  # fmt: skip
    args = parser.parse_args()
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    register_configs()
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; valid: {', '.join(VARIANTS)}")
        overrides = [f"model={args.model}", f"dataset={args.dataset}", f"dataset.limit={args.limit}",
                     f"generation.budgets=[{args.budgets}]", "generation.collab_interval=512",
                     f"store.root={args.root}", f"store.run_name=ablation-{name}", "progress=false", "plot=false",
                     "batch.max_rows=128", "batch.cuda_graphs=true", "model.compile=false",
                     *args.set, *VARIANTS[name]]  # fmt: skip
        if not any(o.startswith("prompt=") for o in VARIANTS[name]):
            overrides.append("prompt=ours")  # the default when the committed rows ran (session 7); now paper
        with initialize_config_dir(config_dir=str(ROOT / "hogwild_bench" / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        started = time.perf_counter()
        run(cfg)
        row = summarise(name, VARIANTS[name], run_dir_of(cfg), time.perf_counter() - started)
        rows = [r for r in rows if r["variant"] != name] + [row]
        out.write_text(json.dumps({"model": args.model, "dataset": args.dataset, "limit": args.limit,
                                   "budgets": args.budgets, "command": " ".join(sys.argv), "rows": rows},
                                  indent=1))  # fmt: skip
        print(json.dumps({k: row[k] for k in ("variant", "n", "accuracy", "ci95", "degenerate", "seconds")}),
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
