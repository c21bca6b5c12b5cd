"""How many decode steps a real generation runs between step boundaries: what a multi-step window can keep.

A window (`batch.window`) gives a generation several decode steps per host round, up to its first request
that is not "each worker writes the token it drew": above all a step boundary of *any* of its workers (the
next step's header rides in). This reads a run's records (the generation at its last budget, one per
problem x grid point) and reports, per worker count and layout, the sampled tokens per step of one worker and
the generation's decode steps per boundary (``tokens_per_worker`` over the boundaries of all its workers, the
first step of each worker not counted): the longest run a window could keep on average.

    python experiments/step_lengths.py STORE_DIR --out experiments/results/step_lengths.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def generation_records(store: Path) -> list[dict]:
    """Each generation's record at its largest budget (its other budgets share its decode steps)."""
    last: dict[tuple, dict] = {}
    for path in sorted(store.glob("records*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("status") != "ok" or "steps_per_worker" not in record:
                continue
            key = (record["problem_id"], record["workers"], record["layout"], record.get("seed"))
            if key not in last or record["budget"] > last[key]["budget"]:
                last[key] = record
    return list(last.values())


def summarise(records: list[dict]) -> dict[str, dict]:
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        steps, decode = record["steps_per_worker"], record["tokens_per_worker"]
        written = record.get("worker_written_tokens") or [decode] * len(steps)
        cell = cells[f"N={record['workers']} {record['layout']}"]
        cell["tokens_per_step"].append(sum(written) / max(1, sum(steps)))
        cell["decode_steps_per_boundary"].append(decode / max(1, sum(steps) - len(steps)))
        cell["decode_steps"].append(decode)
    out = {}
    for name, cell in sorted(cells.items()):
        out[name] = {"generations": len(cell["decode_steps"])} | {
            f"{what}_{stat}": round(fn(values), 1)
            for what, values in cell.items()
            for stat, fn in (("mean", statistics.mean), ("median", statistics.median))
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", type=Path, help="a run directory holding records*.jsonl")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = {"store": str(args.store), "cells": summarise(generation_records(args.store))}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
