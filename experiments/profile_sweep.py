"""Where a real sweep's host time goes: cProfile of ``python -m hogwild_bench ARGS`` for ``--seconds``.

The run is interrupted after ``--seconds`` (what it stored so far stays, as after any kill; it resumes), and
the functions with the most own and cumulative time are written as JSON, with the counts of replayed and
eager forwards.

    python experiments/profile_sweep.py --seconds 150 --out prof.json -- +exp=gsm8k_small batch.cuda_graphs=true
"""

from __future__ import annotations

import _thread
import argparse
import cProfile
import json
import pstats
import runpy
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def top(stats: dict, column: int, count: int, digits: int = 2) -> list[dict]:
    """The ``count`` functions of ``pstats.Stats(...).stats`` ranked by ``column`` (2: own time, 3: cumulative)."""
    ranked = sorted(stats.items(), key=lambda item: item[1][column], reverse=True)[:count]
    return [
        {"function": f"{Path(file).name}:{line}:{name}", "calls": calls, "own_s": round(own, digits),
         "cumulative_s": round(cumulative, digits)}
        for (file, line, name), (_, calls, own, cumulative, _) in ranked
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stats", help="also write the raw profile here (read it with pstats)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    command = " ".join(["experiments/profile_sweep.py", *sys.argv[1:]])
    timer = threading.Timer(args.seconds, _thread.interrupt_main)
    timer.start()
    sys.argv = ["hogwild_bench", *args.overrides]

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    try:
        runpy.run_module("hogwild_bench", run_name="__main__")  # as `python -m hogwild_bench`
    except (KeyboardInterrupt, SystemExit) as stop:  # the timer's interrupt, or the run's own exit
        print(f"profile_sweep: run ended by {type(stop).__name__} {stop}", file=sys.stderr)
    finally:
        profiler.disable()
        timer.cancel()
    wall = time.perf_counter() - start
    if args.stats:
        profiler.dump_stats(args.stats)
    stats = pstats.Stats(profiler).stats
    calls = {f"{Path(f).name}:{name}": s[1] for (f, _, name), s in stats.items() if name in ("step", "forward")}
    result = {
        "command": command,
        "wall_seconds": round(wall, 1),
        "step_and_forward_calls": calls,
        "top_own": top(stats, 2, 40),
        "top_cumulative": top(stats, 3, 60),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
