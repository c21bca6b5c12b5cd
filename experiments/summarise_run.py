"""Summarise one run directory into a committed JSON (and the accuracy-vs-tokens PNG).

Cells of a run cut short hold different problems; comparing their accuracies would compare problem sets,
so ``--common`` (the default) keeps only problems that have records in every cell. Per cell and budget:
accuracy with its 95 % Wilson interval; at the largest budget also how generations ended (degenerate,
end-of-turn, stopped on their own answer) and the collaboration metrics (`hogwild_bench.analysis`).

    python experiments/summarise_run.py RUN_DIR --out experiments/results/real_model/gsm8k_small_h100.json \\
        --png experiments/results/real_model/gsm8k_small_h100.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hogwild_bench.analysis import (  # noqa: E402
    accuracy_vs_budget,
    collaboration,
    load_runs,
    plot_accuracy_vs_budget,
    sampled_tokens,
)

CELL = ["protocol", "workers", "layout"]


def common_problems(df):
    """Rows of the problems that every cell has a record for (at every budget)."""
    cells = df.groupby(CELL, dropna=False)["problem_id"].agg(set)
    shared = set.intersection(*cells)
    return df[df["problem_id"].isin(shared)]


def endings(cell) -> dict:
    def ended_by_eos(ends) -> bool:
        return any(e and e[0] == "eos" for e in ends or [])

    return {
        "degenerate": int(cell["degenerate"].astype(bool).sum()),
        "ended_by_eos": int(cell["worker_ends"].map(ended_by_eos).sum()),
        "stopped_on_answer": int(cell["answered_by"].notna().sum()),
        "mean_tokens_per_worker": round(float(cell["tokens_per_worker"].mean()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--png")
    parser.add_argument("--all-problems", action="store_true", help="every record, even where cells differ")
    args = parser.parse_args()
    every = load_runs(args.run_dir)
    df = every if args.all_problems else common_problems(every)
    curve = accuracy_vs_budget(df, by=CELL)
    top = df[df["budget"] == df["budget"].max()]
    collab = collaboration(top, by=CELL).set_index(CELL)
    cells = []
    for key, cell in top.groupby(CELL, dropna=False):
        row = dict(zip(CELL, key))
        row["by_budget"] = [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k not in CELL}
            for r in curve[(curve[CELL] == list(key)).all(axis=1)].to_dict("records")
        ]
        row.update(endings(cell))
        row["redundancy"] = round(float(collab.loc[key, "redundancy"]), 4)
        row["collab_checks"] = int(collab.loc[key, "collab_checks"])
        row["collab_yes_rate"] = float(collab.loc[key, "collab_yes_rate"])
        cells.append(row)
    generations = every[every["budget"] == every["budget"].max()]
    summary = {
        "run_dir": str(args.run_dir),
        "command": " ".join(sys.argv),
        "records": len(every),
        "problems_per_cell": int(df.groupby(CELL)["problem_id"].nunique().min()),
        "generated_tokens": sum(map(sampled_tokens, generations.to_dict("records"))),  # before session 28: total
        "total_tokens": int(generations["total_tokens"].sum()),  # with the step labels and prompts inserted
        "code_versions": sorted(every["code_version"].unique().tolist()),
        "cells": cells,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, default=float))
    if args.png:
        plot_accuracy_vs_budget(df, args.png)
    for c in cells:
        last = c["by_budget"][-1]
        interval = f"[{last['ci_low']:.3f}, {last['ci_high']:.3f}]"
        print(f"{c['protocol']} N={c['workers']} {c['layout']:11s} n={last['n']} acc={last['accuracy']:.3f} "
              f"{interval} degenerate={c['degenerate']} red={c['redundancy']}")  # fmt: skip


if __name__ == "__main__":
    main()
