"""Where the host part of one replayed single-generation decode step goes (the decode bench's ``host_ms``).

The decode bench times ``lm.forward`` synchronised per step; ``--profile-graph`` splits that into the graph's
device time and the rest. This splits the rest, per step (median over ``--steps``): ``before_replay`` (from
the call to `DecodeGraph.step` up to ``graph.replay()``: begin_forward, the plan, the table upload),
``replay_call`` (the host time of ``replay()`` itself, the graph launch), ``after_replay`` (the logits copy,
end_forward, returning), and ``gpu_tail`` (from the host's return to the device finishing). Plus a
torch.profiler table of CPU-side calls over a few steps.

    python experiments/decode_host.py --out experiments/results/decode_host_h100.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hogwild_bench.bench import build_model, cache_shape, fill_cache, layout_lengths  # noqa: E402
from hogwild_bench.engine import HogwildLM, get_layout  # noqa: E402
from hogwild_bench.engine.model import Write  # noqa: E402


class TimedReplay:
    """Stands in for the captured graph: notes when its ``replay()`` starts and returns on the host."""

    def __init__(self, graph, marks: dict):
        self.graph, self.marks = graph, marks

    def replay(self) -> None:
        self.marks["replay_start"] = time.perf_counter()
        self.graph.replay()
        self.marks["replay_end"] = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--layouts", nargs="+", default=["combined", "contiguous"])
    parser.add_argument("--context", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--layers", type=int, default=None)
    args = parser.parse_args()
    model = build_model(args.layers)
    shape = cache_shape(model)
    lm = HogwildLM(model, cuda_graphs=True, compile=args.compile)
    points = []
    for n in args.workers:
        for layout in args.layouts:
            cache = lm.new_cache("triton")
            fill_cache(cache, layout_lengths(layout, n, args.context), shape[1], shape[2], shape[0])
            views = get_layout(layout).views(n)
            writes = [Write(views[i], [100 + i]) for i in range(n)]
            for _ in range(3):
                lm.forward(cache, writes)
            torch.cuda.synchronize()
            graph = cache.decode_graphs[tuple(tuple(v) for v in views)]
            real = graph.graph
            marks: dict = {}
            graph.graph = TimedReplay(real, marks)
            parts = {"before_replay": [], "replay_call": [], "after_replay": [], "gpu_tail": [], "total": []}
            for _ in range(args.steps):
                start = time.perf_counter()
                lm.forward(cache, writes)
                returned = time.perf_counter()
                torch.cuda.synchronize()
                end = time.perf_counter()
                parts["before_replay"].append(marks["replay_start"] - start)
                parts["replay_call"].append(marks["replay_end"] - marks["replay_start"])
                parts["after_replay"].append(returned - marks["replay_end"])
                parts["gpu_tail"].append(end - returned)
                parts["total"].append(end - start)
            point = {"workers": n, "layout": layout, "compiled": args.compile}
            point.update({f"{k}_ms": round(1e3 * statistics.median(v), 3) for k, v in parts.items()})
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    lm.forward(cache, writes)
                    torch.cuda.synchronize()
            events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
            point["cpu_top_us_per_step"] = {e.key[:70]: round(e.self_cpu_time_total / 5, 1) for e in events}
            graph.graph = real
            points.append(point)
            print(json.dumps(point), flush=True)
            cache.blocks.clear()
            cache.decode_graphs.clear()
            torch.cuda.empty_cache()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "command": " ".join(sys.argv),
                                          "points": points}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
