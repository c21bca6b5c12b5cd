"""How far two runs of the same grid agree, record by record (same `store.record_key`): identical responses,
same extracted answer, same correctness; and each run's accuracy on the shared records. Greedy bf16 runs of
different code or batch composition can flip near-tie tokens (README, "batch"), so this says how much.

    python experiments/record_agreement.py OLD.jsonl [...] --new NEW.jsonl [...] --out OUT.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from hogwild_bench.store import iter_records, record_key


def load(paths: list[str]) -> dict[tuple, dict]:
    """Records by key (the store's reader: lines a crash cut are skipped, as a resumed run skips them)."""
    return {record_key(record): record for record in iter_records(map(Path, paths))}


def agreement(old: dict[tuple, dict], new: dict[tuple, dict]) -> dict:
    """Shares over the records both runs hold, in all and per (workers, layout, budget) cell."""
    cells: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for key, record in new.items():
        if key in old:
            cells["all"].append((old[key], record))
            cells[f"{record['workers']}w {record['layout']} {record['budget']}"].append((old[key], record))

    def shares(pairs: list[tuple[dict, dict]]) -> dict:
        n = len(pairs)
        return {
            "records": n,
            "same_response": round(sum(a["response"] == b["response"] for a, b in pairs) / n, 4),
            "same_answer": round(sum(a["extracted_answer"] == b["extracted_answer"] for a, b in pairs) / n, 4),
            "same_correct": round(sum(a["correct"] == b["correct"] for a, b in pairs) / n, 4),
            "accuracy_old": round(sum(bool(a["correct"]) for a, _ in pairs) / n, 4),
            "accuracy_new": round(sum(bool(b["correct"]) for _, b in pairs) / n, 4),
        }

    return {cell: shares(pairs) for cell, pairs in sorted(cells.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", nargs="+")
    parser.add_argument("--new", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = {"old": args.old, "new": args.new, "agreement": agreement(load(args.old), load(args.new))}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["agreement"]["all"]))


if __name__ == "__main__":
    main()
