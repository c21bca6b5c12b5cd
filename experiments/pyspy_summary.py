"""Where one thread of a profiled process spent its time: inclusive share of each function in py-spy's raw
(collapsed-stack) output.

    py-spy record --pid PID --duration 60 --rate 100 --format raw --idle --threads --nonblocking --output RAW
    python experiments/pyspy_summary.py RAW --thread MainThread --top 40 --out SUMMARY.json

A function's share counts every sample with it anywhere on the stack (once per sample, however deep the
recursion), over the thread's samples (``--idle`` keeps the samples where it waits, e.g. on the GPU).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

LINE_NUMBER = re.compile(r":\d+\)")


def inclusive_shares(raw: str, thread: str) -> tuple[int, dict[str, float]]:
    samples, counts = 0, Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or thread not in frames[0]:
            continue
        n = int(count)
        samples += n
        for name in {LINE_NUMBER.sub(")", f) for f in frames[1:]}:
            counts[name] += n
    return samples, {name: round(100 * n / samples, 1) for name, n in counts.most_common()} if samples else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw")
    parser.add_argument("--thread", default="MainThread")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out")
    args = parser.parse_args()
    samples, shares = inclusive_shares(Path(args.raw).read_text(), args.thread)
    top = dict(list(shares.items())[: args.top])
    for name, percent in top.items():
        print(f"{percent:5.1f} %  {name}")
    if args.out:
        summary = {"raw": Path(args.raw).name, "thread": args.thread, "samples": samples, "percent_inclusive": top}
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
