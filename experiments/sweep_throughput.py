"""A timed stretch of a real sweep, summarised: generations completed, the tokens they wrote, and where the
time went (the run's last ``batch time`` log line).

    python experiments/sweep_throughput.py --log RUN.log --records RUN_DIR/records.shard0of1.jsonl \\
        --out experiments/results/real_model/sweep_throughput.json

Only completed generations count (one per problem x grid point; its tokens are those of its largest budget),
so the tokens/s is a lower bound on what the batch generated: the generations still in flight when the run was
stopped wrote tokens too. The wall time is the progress bar's last elapsed time (model loading excluded).
Shards run side by side on one GPU (`experiments/shards_on_one_gpu.sh`): one log and records file per shard,
and ``--side-by-side`` adds their sum over the longest shard's time; ``--gpu-csv`` the mean of nvidia-smi's
``utilization.gpu`` logged beside them.

    python experiments/sweep_throughput.py --side-by-side --log shard0of2.log shard1of2.log \
        --records R/records.shard0of2.jsonl R/records.shard1of2.jsonl --gpu-csv gpu.csv --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hogwild_bench.analysis import sampled_tokens  # noqa: E402

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
    sampled = sum(sampled_tokens(r) for r in last.values() if r.get("total_tokens") is not None)
    done, seconds = progress_seconds(log_text.replace("\r", "\n"))
    times = [m.group(1) for line in log_text.replace("\r", "\n").splitlines() if (m := BATCH_TIME.search(line))]
    return {
        "generations": len(last),
        "generations_by_workers": dict(sorted(Counter(k[2] for k in last).items())),
        "failed_records": sum(1 for r in records if r.get("status") != "ok"),
        "tokens_of_completed_generations": tokens,
        "progress_seconds": seconds,
        "progress_generations": done,
        "completed_tokens_per_second": round(tokens / seconds, 1) if seconds else None,  # sampled and inserted
        "sampled_tokens_of_completed_generations": sampled,
        "completed_sampled_tokens_per_second": round(sampled / seconds, 1) if seconds else None,
        "batch_time": times[-1] if times else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", required=True, nargs="+")
    parser.add_argument("--records", required=True, nargs="+", help="one records file per log, same order")
    parser.add_argument("--out", required=True)
    parser.add_argument("--side-by-side", action="store_true", help="the runs are shards run at the same time")
    parser.add_argument("--gpu-csv", help="nvidia-smi --query-gpu=timestamp,utilization.gpu,... --format=csv")
    args = parser.parse_args()
    if len(args.log) != len(args.records):
        raise SystemExit(f"{len(args.log)} logs but {len(args.records)} records files: give one of each per run")
    runs = []
    for log, records in zip(args.log, args.records):
        rows = [json.loads(line) for line in Path(records).read_text().splitlines() if line.strip()]
        runs.append({"log": Path(log).name, **summarise(Path(log).read_text(errors="replace"), rows)})
    out: dict = {"runs": runs}
    if args.side_by_side:
        out["side_by_side"] = together(runs)
    if args.gpu_csv:
        out["gpu_utilization_mean_percent"] = mean_utilization(Path(args.gpu_csv).read_text())
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


def together(runs: list[dict]) -> dict:
    """Shards that ran at the same time: their generations and tokens summed over the longest one's time."""
    seconds = max(r["progress_seconds"] for r in runs)
    tokens = sum(r["tokens_of_completed_generations"] for r in runs)
    sampled = sum(r["sampled_tokens_of_completed_generations"] for r in runs)
    generations = sum(r["generations"] for r in runs)
    return {
        "processes": len(runs),
        "generations": generations,
        "tokens_of_completed_generations": tokens,
        "progress_seconds": seconds,
        "completed_tokens_per_second": round(tokens / seconds, 1) if seconds else None,  # sampled and inserted
        "sampled_tokens_of_completed_generations": sampled,
        "completed_sampled_tokens_per_second": round(sampled / seconds, 1) if seconds else None,
        "generations_per_second": round(generations / seconds, 3) if seconds else None,
    }


def mean_utilization(csv_text: str) -> float | None:
    """Mean ``utilization.gpu`` (percent) of an nvidia-smi CSV log (the column named so in its header)."""
    lines = [line.split(",") for line in csv_text.strip().splitlines()]
    column = next((i for i, name in enumerate(lines[0]) if "utilization.gpu" in name), None) if lines else None
    if column is None:
        return None
    values = [float(row[column].strip().rstrip("%").strip()) for row in lines[1:] if len(row) > column]
    return round(sum(values) / len(values), 1) if values else None


if __name__ == "__main__":
    main()
