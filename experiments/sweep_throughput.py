"""A timed stretch of a real sweep, summarised: generations completed, the tokens they wrote, and where the
time went (the run's last ``batch time`` log line).

    python experiments/sweep_throughput.py --log RUN.log --records RUN_DIR/records.shard0of1.jsonl \\
        --out experiments/results/real_model/sweep_throughput.json

Only completed generations count (one per problem x grid point; its tokens are those of its largest budget),
so the tokens/s is a lower bound on what the batch generated: the generations still in flight when the run was
stopped wrote tokens too. The wall time is the progress bar's last elapsed time (model loading excluded).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

ELAPSED = re.compile(r"\| *(\d+)/\d+ \[(\d+):(\d+)(?::(\d+))?<")
BATCH_TIME = re.compile(r"batch time: (.*)$")


def progress_seconds(log: str) -> tuple[int, float]:
    """Generations done and elapsed seconds at the progress bar's last update."""
    done, seconds = 0, 0.0
    for match in ELAPSED.finditer(log):
        parts = [int(p) for p in match.groups()[1:] if p is not None]
        done = int(match.group(1))
        seconds = float(parts[0] * 3600 + parts[1] * 60 + parts[2] if len(parts) == 3 else parts[0] * 60 + parts[1])
    return done, seconds


def summarise(log_text: str, records: list[dict]) -> dict:
    last: dict[tuple, dict] = {}
    for record in records:
        key = (record["problem_id"], record["protocol"], record["workers"], record["layout"])
        if key not in last or record["budget"] > last[key]["budget"]:
            last[key] = record
    tokens = sum(r.get("total_tokens") or 0 for r in last.values())
    done, seconds = progress_seconds(log_text.replace("\r", "\n"))
    times = [m.group(1) for line in log_text.replace("\r", "\n").splitlines() if (m := BATCH_TIME.search(line))]
    return {
        "generations": len(last),
        "generations_by_workers": dict(sorted(Counter(k[2] for k in last).items())),
        "failed_records": sum(1 for r in records if r.get("status") != "ok"),
        "tokens_of_completed_generations": tokens,
        "progress_seconds": seconds,
        "progress_generations": done,
        "completed_tokens_per_second": round(tokens / seconds, 1) if seconds else None,
        "batch_time": times[-1] if times else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", required=True, nargs="+")
    parser.add_argument("--records", required=True, nargs="+", help="one records file per log, same order")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if len(args.log) != len(args.records):
        raise SystemExit(f"{len(args.log)} logs but {len(args.records)} records files: give one of each per run")
    runs = []
    for log, records in zip(args.log, args.records):
        rows = [json.loads(line) for line in Path(records).read_text().splitlines() if line.strip()]
        runs.append({"log": Path(log).name, **summarise(Path(log).read_text(errors="replace"), rows)})
    Path(args.out).write_text(json.dumps({"runs": runs}, indent=1))
    print(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
