"""Where a batched decode step's wall time goes, with bucket-graph replay (issue 13).

The batch benchmark's setup (random Qwen2-7B shape, bf16, ~512-token random prompts, N = 2, combined
layout, steps of 64 tokens) at each ``--rows``. Every replayed step is split into:
  - ``prepare``: host work in `BucketGraph.step` before the replay (begin_forward, the Triton plan, the
    padded tables and their upload),
  - ``replay_gpu``: GPU time of the replayed graph (CUDA events around ``graph.replay()``),
  - ``replay_host``: host time of the ``replay()`` call itself (launch),
  - ``between``: from the end of one forward to the start of the next (token draw and its device sync,
    the generation coroutines, admission).
The whole run is also split (``timeline``): seconds in replayed forwards, in eager forwards (prefills,
step prefixes, finisher prompts), in captures, and outside any forward, each synchronised at its end.
A probe after ``--probe-at`` full-batch steps replays that step's graph ``--repeats`` times back to back (the
GPU time of a step with no host work at all) and lists its kernels, beside the K/V floor of that step (its
unique K/V tokens read once at copy bandwidth). Median ms of each, over replayed steps with the batch full.

    python experiments/step_profile.py --out experiments/results/step_profile_h100.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from batch_bench import jobs, prompts  # noqa: E402
from profile_sweep import top as top_functions  # noqa: E402

from hogwild_bench.bench import build_model, copy_bandwidth, weight_bytes_read  # noqa: E402
from hogwild_bench.engine import HogwildLM, triton_attention  # noqa: E402
from hogwild_bench.engine import bucket_graphs as bucket_module  # noqa: E402
from hogwild_bench.engine.batch import PREFILL_TOKENS, ContinuousBatcher  # noqa: E402
from hogwild_bench.tiny import tiny_tokenizer  # noqa: E402


class ProbeTaken(BaseException):
    """Ends a run at its probe (``--stop-after-probe``); not an `Exception`, so the batcher does not record it
    as its generations' failure."""


class StepClock:
    """Wraps `BucketGraph.step` and the replay to time each part of a replayed step."""

    def __init__(self):
        self.steps: list[dict] = []
        self.last_end: float | None = None
        self.current: dict | None = None

    def reset(self, full_rows: int = 0, probe_at: int = 0, repeats: int = 20, stop_after_probe: bool = False) -> None:
        """``probe_at``: after that many full-batch replayed steps, replay the step's graph alone (GPU time and
        kernels) while its generations are alive (after the run their K/V storage is freed)."""
        self.full_rows, self.probe_at, self.repeats = full_rows, probe_at, repeats
        self.full_steps, self.probe, self.stop_after_probe = 0, None, stop_after_probe
        self.steps.clear()
        self.last_end = None
        self.spans = {"replayed": [0, 0.0], "eager": [0, 0.0], "capture": [0, 0.0]}
        self.forwards = {"prefill": [], "insert": []}  # every eager forward: rows, tokens, host and synced ms
        self.profile_insert, self.insert_profile = 3, None  # torch.profiler on this insert forward

    def span(self, name: str, seconds: float) -> None:
        self.spans[name][0] += 1
        self.spans[name][1] += seconds

    def install(self) -> None:
        self.reset()
        clock, step, capture = self, bucket_module.BucketGraph.step, bucket_module.BucketGraph._capture
        eager = HogwildLM.forward

        def timed_forward(lm, cache, writes, *args, **kwargs):
            torch.cuda.synchronize()
            start = time.perf_counter()
            lengths = [len(w.tokens) for w in writes]
            kind = "prefill" if max(lengths) > PREFILL_TOKENS else "insert"
            profiled = kind == "insert" and clock.profile_insert == len(clock.forwards[kind])
            with _kernel_profile() if profiled else contextlib.nullcontext() as prof:
                out = eager(lm, cache, writes, *args, **kwargs)
                host = time.perf_counter() - start
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            clock.span("eager", seconds)
            clock.forwards[kind].append(
                {"rows": len(writes), "tokens": sum(lengths), "q_len": max(lengths), "host_ms": round(1e3 * host, 2),
                 "ms": round(1e3 * seconds, 2), "profiled": profiled}
            )  # fmt: skip
            if profiled:
                clock.insert_profile = _top_events(prof)
            return out

        def timed_step(graph, views, tokens, *args):
            start = time.perf_counter()
            clock.current = {"rows": len(tokens), "start": start}
            if clock.last_end is not None:
                clock.current["between"] = start - clock.last_end
            replayed_before = graph.replays
            out = step(graph, views, tokens, *args)
            torch.cuda.synchronize()
            end = time.perf_counter()
            if out is not None:
                clock.span("replayed", end - start - clock.current.get("capture", 0.0))
            if out is not None and graph.replays > replayed_before and "replay_start" in clock.current:
                clock.current["total"] = end - start
                clock.current["kv_tokens"] = sum(b.visible_length for b in graph.view_walk.unique)
                clock.steps.append(clock.current)
                if clock.current["rows"] == clock.full_rows and clock.probe is None:
                    clock.full_steps += 1
                    if clock.full_steps == clock.probe_at:  # the generations are alive: their tables are valid
                        clock.probe = {"full_step": clock.full_steps, "kv_tokens": clock.current["kv_tokens"]}
                        clock.probe["replay_alone_gpu_ms"] = replay_alone(graph.real_graph, clock.repeats)
                        clock.probe["replay_kernels"] = replay_kernels(graph.real_graph)
                        end = time.perf_counter()  # the next step's `between` leaves the probe out
                        if clock.stop_after_probe:
                            raise ProbeTaken
            clock.current = None
            clock.last_end = end
            return out

        def timed_capture(graph, blocks, sizes):
            start = time.perf_counter()
            capture(graph, blocks, sizes)
            torch.cuda.synchronize()
            clock.span("capture", time.perf_counter() - start)
            if clock.current is not None:
                clock.current["capture"] = time.perf_counter() - start
            real = graph.graph

            class Timed:
                def replay(self):
                    current = clock.current
                    if current is None:
                        return real.replay()
                    begin, finish = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    current["replay_start"] = time.perf_counter()
                    begin.record()
                    real.replay()
                    finish.record()
                    current["replay_host"] = time.perf_counter() - current["replay_start"]
                    current["events"] = (begin, finish)

            graph.graph = Timed()
            graph.real_graph = real

        HogwildLM.forward = timed_forward
        bucket_module.BucketGraph.step = timed_step
        bucket_module.BucketGraph._capture = timed_capture

    def timeline(self, wall: float) -> dict:
        out = {name: {"count": n, "seconds": round(sec, 2)} for name, (n, sec) in self.spans.items()}
        out["outside_forwards_seconds"] = round(wall - sum(sec for _, sec in self.spans.values()), 2)
        return out

    def eager_summary(self) -> dict:
        """Per kind of eager forward (prompt prefills; inserts: step headers and collaboration prompts of several
        tokens that did not fit in a replayed forward): count, seconds, median host / synced ms, and the list."""
        out = {}
        for kind, items in self.forwards.items():
            timed = [f for f in items if not f["profiled"]]
            out[kind] = {
                "count": len(items),
                "seconds": round(sum(f["ms"] for f in timed) / 1e3, 2),
                "median_ms": round(statistics.median(f["ms"] for f in timed), 2) if timed else None,
                "median_host_ms": round(statistics.median(f["host_ms"] for f in timed), 2) if timed else None,
                "forwards": items,
            }
        if self.insert_profile is not None:
            out["insert_profile"] = self.insert_profile
        return out

    def summary(self, full_rows: int) -> dict:
        torch.cuda.synchronize()
        rows = [s for s in self.steps if s["rows"] == full_rows and "between" in s]
        parts = {"total": [], "prepare": [], "replay_host": [], "replay_gpu": [], "between": []}
        for s in rows:
            begin, finish = s["events"]
            parts["total"].append(s["total"])
            parts["prepare"].append(s["replay_start"] - s["start"])
            parts["replay_host"].append(s["replay_host"])
            parts["replay_gpu"].append(begin.elapsed_time(finish) / 1e3)
            parts["between"].append(s["between"])
        out = {"steps": len(rows)}
        for name, values in parts.items():
            out[f"{name}_ms"] = round(1e3 * statistics.median(values), 2) if values else None
        if rows:  # unique K/V tokens read by the step: the median full step, and the last
            out["kv_tokens_median"] = int(statistics.median(s["kv_tokens"] for s in rows))
            out["kv_tokens_last"] = rows[-1]["kv_tokens"]
        return out


def _kernel_profile():
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])


def _top_events(prof, top: int = 25) -> dict:
    """The heaviest ops of a profiled forward by host time and by device time."""
    events = prof.key_averages()

    def rows(key):
        return [
            {"name": e.key[:90], "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 3),
             "device_ms": round(e.self_device_time_total / 1e3, 3)}
            for e in sorted(events, key=key, reverse=True)[:top]
        ]  # fmt: skip

    return {
        "device_ms_total": round(sum(e.self_device_time_total for e in events) / 1e3, 2),
        "by_cpu": rows(lambda e: e.self_cpu_time_total),
        "by_device": rows(lambda e: e.self_device_time_total),
    }


def replay_alone(graph, repeats: int) -> float:
    """Median GPU ms of a captured graph replayed back to back (no host work; it rewrites the same K/V)."""
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(repeats):
        begin, finish = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        graph.replay()
        finish.record()
        finish.synchronize()
        times.append(begin.elapsed_time(finish))
    return round(statistics.median(times), 2)


def replay_kernels(graph, repeats: int = 5, top: int = 15) -> list[dict]:
    """GPU kernels of a captured graph's replay (torch.profiler), by device time per replay."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            graph.replay()
        torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: e.self_device_time_total, reverse=True)[:top]
    return [
        {"kernel": e.key[:90], "calls_per_replay": e.count / repeats,
         "ms_per_replay": round(e.self_device_time_total / 1e3 / repeats, 3)}
        for e in events
    ]  # fmt: skip


def host_profile(lm, tokenizer, args, count: int = 40) -> list[dict]:
    """cProfile of one batched run at the first ``--rows`` (functions by own time; cProfile slows Python
    code, so the split, not the sum, is what to read)."""
    import cProfile
    import pstats

    rows = args.rows[0]
    job_list = jobs(lm, tokenizer, prompts(rows // args.workers, args.prompt_tokens, tokenizer), args.workers, 128)
    batcher = ContinuousBatcher(lm, max_rows=rows, cuda_graphs=True)
    profiler = cProfile.Profile()
    profiler.enable()
    list(batcher.run(job_list))
    torch.cuda.synchronize()
    profiler.disable()
    return top_functions(pstats.Stats(profiler).stats, 2, count, digits=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--shape", default="7b", help="random model shape: 7b (decode bench) or 1.5b (real sweep)")
    parser.add_argument("--cpu-threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--kernel", default="", help="attention KernelSettings to use, e.g. split=512,num_stages=2")
    parser.add_argument("--cprofile", action="store_true", help="also a cProfile pass at the first --rows")
    parser.add_argument("--compile-buckets", action="store_true", help="replayed steps run the compiled model")
    parser.add_argument("--probe-at", type=int, default=0, help="full steps before the probe (0: 3/4 of --budget)")
    parser.add_argument("--stop-after-probe", action="store_true", help="end each run at its probe")
    args = parser.parse_args()
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)  # as the runner does (batch.cpu_threads)
    if args.kernel:
        fields = dict(item.split("=") for item in args.kernel.split(","))
        triton_attention.settings = replace(triton_attention.settings, **{k: int(v) for k, v in fields.items()})
    model = build_model(args.layers, args.shape)
    tokenizer = tiny_tokenizer("qwen")
    lm = HogwildLM(model, cuda_graphs=True, compile_buckets=args.compile_buckets)
    weight_bytes = weight_bytes_read(model)
    bandwidth = copy_bandwidth()
    kv_bytes_per_token = lm.kv_bytes_per_token

    def kv_floor_ms(tokens: int) -> float:  # reading each unique token's K/V once at copy bandwidth
        return round(1e3 * tokens * kv_bytes_per_token / bandwidth, 2)

    result = {
        "gpu": torch.cuda.get_device_name(),
        "bandwidth_bytes_per_s": bandwidth,
        "weight_ms": round(1e3 * weight_bytes / bandwidth, 2),
        "kv_bytes_per_token": kv_bytes_per_token,
        "command": " ".join(sys.argv),
        "kernel_settings": asdict(triton_attention.settings),
        "points": [],
    }
    clock = StepClock()
    clock.install()
    warm = jobs(lm, tokenizer, prompts(2, 64, tokenizer, seed=99), 2, 32)
    list(ContinuousBatcher(lm, max_rows=64).run(warm))
    for rows in args.rows:
        clock.reset(rows, args.probe_at or (3 * args.budget) // 4, args.repeats, args.stop_after_probe)
        count = rows // args.workers
        job_list = jobs(lm, tokenizer, prompts(count, args.prompt_tokens, tokenizer), args.workers, args.budget)
        batcher = ContinuousBatcher(lm, max_rows=rows, cuda_graphs=True)
        torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            finished = list(batcher.run(job_list))
        except ProbeTaken:
            finished = []
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
        assert all(f.ok for f in finished), [str(f.error) for f in finished if not f.ok][:1]
        point = {"rows": rows, "workers": args.workers, "wall_seconds": round(wall, 2), **clock.summary(rows)}
        point["timeline"] = clock.timeline(wall)
        point["eager_forwards"] = clock.eager_summary()
        for which in ("median", "last"):
            if f"kv_tokens_{which}" in point:
                point[f"kv_floor_ms_{which}"] = kv_floor_ms(point[f"kv_tokens_{which}"])
        if clock.probe is not None:
            point["probe"] = {**clock.probe, "kv_floor_ms": kv_floor_ms(clock.probe["kv_tokens"])}
        result["points"].append(point)
        brief = {k: v for k, v in point.items() if k != "eager_forwards"}
        brief["eager"] = {k: {n: x for n, x in v.items() if n != "forwards"} for k, v in point["eager_forwards"].items()
                          if k != "insert_profile"}  # fmt: skip
        print(json.dumps(brief), flush=True)
        del batcher
        torch.cuda.empty_cache()
    if args.cprofile:
        result["cprofile"] = host_profile(lm, tokenizer, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
