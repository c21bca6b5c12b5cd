"""Where the GPU's time goes in a batched run with steps launched ahead (``batch.overlap``): busy or idle.

`step_profile.py` synchronises every step, so it cannot see whether an overlapped run keeps the device fed.
This runs the batch benchmark's point (random Qwen2-7B shape, bf16, ~512-token prompts, N workers, combined
layout, compiled bucket steps, one lane, overlap) once untimed (compilations, captures) and then again under
``torch.profiler`` (device activity only: the host's Python is not slowed by CPU tracing), and splits the
device timeline of the profiled run into kernel time by kind (matrix products, attention, the compiled fused
kernels, sampling, copies), and idle gaps by length. CUDA events around each replayed forward, eager forward
(prefills, inserts) and token draw give the device time of each kind of work (an event pair spans the device
time from the work's start to its end, idle gaps inside it included). The run's wall time, ``BatchTimes`` and
the roofline of `batch_bench.py` come with it, so busy seconds can be read against the 0.6x target. The first
(untimed) run also logs the K/V every forward reads (`batch_bench.forward_reads`): each timed run then reports
its sampled tokens/s against the roofline of the K/V its decode steps actually read
(``generated_fraction_of_roofline``) and the run's memory floor -- every forward's weights and K/V over the copy
bandwidth -- over its wall time (``floor_over_wall``), beside the nominal ``fraction_of_roofline`` of sessions
7-27 (all tokens, step labels and prompts included, against the K/V of ``prompt + N x budget / 2`` tokens).
``--variants`` times attention kernel settings (`KernelSettings` fields, e.g. ``merge_chunk=8,merge_warps=1``;
``default``: as shipped) in turn in one process, each on a batcher of its own (its graphs captured afresh).

    python experiments/gpu_timeline.py --out experiments/results/gpu_timeline.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch._inductor import config as inductor_config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from batch_bench import add_point_arguments, forward_reads, generated, jobs, measured_floor, prompts  # noqa: E402

from hogwild_bench.bench import build_model, copy_bandwidth, weight_bytes_read  # noqa: E402
from hogwild_bench.engine import HogwildLM, triton_attention  # noqa: E402
from hogwild_bench.engine import batch as batch_module  # noqa: E402
from hogwild_bench.engine.batch import BatchTimes, ContinuousBatcher  # noqa: E402
from hogwild_bench.engine.bucket_graphs import BucketGraphs  # noqa: E402
from hogwild_bench.tiny import tiny_tokenizer  # noqa: E402

KINDS = (  # first match wins
    ("attention", re.compile(r"_block_attention|_merge_kernel|append|_attend")),
    ("gemm", re.compile(r"nvjet|gemm|cublas|cutlass|splitK|sm90_xmma|ampere_")),
    ("sampling", re.compile(r"gumbel|argmax|argMax|reduce_kernel|multinomial|softmax|sort", re.I)),
    ("compiled_fused", re.compile(r"^triton_")),
    ("copy", re.compile(r"[Mm]emcpy|[Mm]emset|copy", re.I)),
)
GAPS_US = (5, 20, 100, 1000, 10000)  # idle gap edges


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


def device_intervals(trace_path: Path) -> list[tuple[float, float, str]]:
    """``(start_us, end_us, name)`` of every kernel, copy and memset on the device, in start order."""
    trace = json.loads(trace_path.read_text())
    out = []
    for event in trace.get("traceEvents", []):
        if event.get("ph") != "X" or event.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        start = float(event["ts"])
        out.append((start, start + float(event.get("dur", 0.0)), event["name"]))
    return sorted(out)


def split_timeline(intervals: list[tuple[float, float, str]]) -> dict:
    """Busy time (the union of device intervals), idle gaps by length, and device time by kind and kernel."""
    by_kind, by_kernel, counts = defaultdict(float), defaultdict(float), defaultdict(int)
    for start, end, name in intervals:
        by_kind[kind_of(name)] += end - start
        by_kernel[name[:90]] += end - start
        counts[name[:90]] += 1
    busy, gaps = 0.0, []
    current_start, current_end = intervals[0][0], intervals[0][1]
    for start, end, _ in intervals[1:]:
        if start > current_end:
            busy += current_end - current_start
            gaps.append(start - current_end)
            current_start = start
        current_end = max(current_end, end)
    busy += current_end - current_start
    window = intervals[-1][1] - intervals[0][0]
    edges = (0, *GAPS_US, float("inf"))
    histogram = {}
    for low, high in zip(edges, edges[1:]):
        inside = [g for g in gaps if low <= g < high]
        histogram[f"{low}-{high}us"] = {"count": len(inside), "seconds": round(sum(inside) / 1e6, 3)}
    heaviest = sorted(by_kernel, key=by_kernel.get, reverse=True)[:30]
    return {
        "window_seconds": round(window / 1e6, 3),
        "busy_seconds": round(busy / 1e6, 3),
        "idle_seconds": round((window - busy) / 1e6, 3),
        "idle_gaps": histogram,
        "device_seconds_by_kind": {k: round(v / 1e6, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "kernels": [{"name": n, "count": counts[n], "seconds": round(by_kernel[n] / 1e6, 4)} for n in heaviest],
    }


@contextlib.contextmanager
def device_spans(spans: dict[str, list]):
    """CUDA events around every replayed forward, eager forward and token draw, into ``spans[kind]``."""

    def timed(kind, fn):
        def wrapper(*args, **kwargs):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            try:
                return fn(*args, **kwargs)
            finally:
                end.record()
                spans[kind].append((begin, end))

        return wrapper

    saved = BucketGraphs.forward, HogwildLM.forward, batch_module.enqueue_draws
    BucketGraphs.forward = timed("replayed", saved[0])
    HogwildLM.forward = timed("eager", saved[1])
    batch_module.enqueue_draws = timed("draw", saved[2])
    try:
        yield
    finally:
        BucketGraphs.forward, HogwildLM.forward, batch_module.enqueue_draws = saved


def span_seconds(spans: dict[str, list]) -> dict:
    torch.cuda.synchronize()
    return {kind: {"count": len(pairs), "device_seconds": round(sum(b.elapsed_time(e) for b, e in pairs) / 1e3, 3)}
            for kind, pairs in spans.items()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    add_point_arguments(parser)
    parser.add_argument("--shape", default="7b")
    parser.add_argument("--no-overlap", action="store_true")
    parser.add_argument("--variants", nargs="+", default=["default"], help="KernelSettings fields per variant")
    parser.add_argument("--no-profile", action="store_true", help="time each variant unprofiled only (quicker)")
    parser.add_argument(
        "--freeze",
        action="store_true",
        help="compile with Inductor's freezing (weights as constants; on an H100 it fused gate/up, not q/k/v)",
    )
    parser.add_argument(
        "--autotune",
        action="store_true",
        help="compile with Inductor's GEMM autotuning (max_autotune_gemm: Triton templates beside cuBLAS, per shape)",
    )
    parser.add_argument(
        "--blas",
        choices=["default", "cublas", "cublaslt"],
        default="default",
        help="torch.backends.cuda.preferred_blas_library for every GEMM (default: torch's choice)",
    )
    args = parser.parse_args()
    if args.blas != "default":
        torch.backends.cuda.preferred_blas_library(args.blas)
    torch.set_num_threads(1)  # as the runner does (batch.cpu_threads)
    if args.freeze:
        inductor_config.freezing = True
    if args.autotune:
        inductor_config.max_autotune_gemm = True
    from torch.profiler import ProfilerActivity, profile

    model = build_model(None, args.shape)
    tokenizer = tiny_tokenizer("qwen")
    lm = HogwildLM(model, cuda_graphs=True, compile_buckets=True)
    bandwidth, weight_bytes = copy_bandwidth(), weight_bytes_read(model)
    count = args.rows // args.workers
    problems = prompts(count, args.prompt_tokens, tokenizer)
    mean_context = args.prompt_tokens + args.workers * (args.budget // 2)
    roofline = args.rows * bandwidth / (weight_bytes + count * mean_context * lm.kv_bytes_per_token)

    floor: dict = {}  # of the untimed first run (the jobs' block structure does not depend on the tokens drawn)

    def run(profiled: bool, reads: list | None = None) -> dict:
        times, spans = BatchTimes(), {"replayed": [], "eager": [], "draw": []}
        batcher = ContinuousBatcher(lm, max_rows=args.rows, cuda_graphs=True, overlap=not args.no_overlap, times=times)
        job_list = jobs(lm, tokenizer, problems, args.workers, args.budget)
        torch.cuda.synchronize()
        start = time.perf_counter()
        if profiled:
            with profile(activities=[ProfilerActivity.CUDA]) as prof, device_spans(spans):
                finished = list(batcher.run(job_list))
                torch.cuda.synchronize()
        else:
            with forward_reads(reads) if reads is not None else contextlib.nullcontext():
                finished = list(batcher.run(job_list))
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        assert all(f.ok for f in finished), [str(f.error) for f in finished if not f.ok][:1]
        tokens = generated(finished)
        sampled, total = tokens["tokens"], tokens["total_tokens"]
        point = {"wall_seconds": round(wall, 2), "tokens": sampled, "total_tokens": total,
                 "tokens_per_second": round(sampled / wall, 1),
                 "fraction_of_roofline": round(total / wall / roofline, 3), "times": times.summary()}  # fmt: skip
        if floor:
            point |= {"generated_fraction_of_roofline": round(sampled / wall / floor["roofline"], 3),
                      "floor_over_wall": round(floor["floor_seconds"] / wall, 3)}  # fmt: skip
        if profiled:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "trace.json"
                prof.export_chrome_trace(str(path))
                point["device"] = split_timeline(device_intervals(path))
            point["spans"] = span_seconds(spans)
        return point

    shipped = triton_attention.settings

    def use(variant: str) -> None:
        fields = {} if variant == "default" else dict(item.split("=") for item in variant.split(","))
        triton_attention.settings = dataclasses.replace(shipped, **{k: int(v) for k, v in fields.items()})

    result = {"gpu": torch.cuda.get_device_name(), "command": " ".join(sys.argv)}
    reads: list[tuple[int, int]] = []
    result |= {"roofline_tokens_per_second": round(roofline, 1), "warmup": run(False, reads), "variants": {}}
    floor |= measured_floor(reads, weight_bytes, lm.kv_bytes_per_token, bandwidth, args.rows)
    result["measured_floor"] = floor | {"roofline": round(floor["roofline"], 1)}
    failed = result["failed"] = {}
    for variant in args.variants:
        use(variant)
        try:
            timed = {"unprofiled": run(False)}
            result["variants"][variant] = timed | ({} if args.no_profile else {"profiled": run(True)})
        except Exception as error:  # e.g. a tile that does not fit shared memory: the other variants still run
            failed[variant] = f"{type(error).__name__}: {error}"[:500]
            print(f"{variant}: failed, {failed[variant]}", flush=True)
            continue
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(summary(variant, result["variants"][variant]), flush=True)  # a device call's log tail reads this
    triton_attention.settings = shipped
    for variant in result["variants"]:  # a second timing of each, after all of them (machine drift)
        use(variant)
        result["variants"][variant]["unprofiled_again"] = run(False)
        print(summary(variant, result["variants"][variant]), flush=True)
    triton_attention.settings = shipped
    result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    Path(args.out).write_text(json.dumps(result, indent=1))


def summary(variant: str, timed: dict) -> str:
    """One line per variant: the fraction of the roofline of each timing, device busy / idle and merge time."""
    fractions = " ".join(
        f"{name} {t['fraction_of_roofline']} (generated {t.get('generated_fraction_of_roofline')}, "
        f"floor/wall {t.get('floor_over_wall')})"
        for name, t in timed.items()
        if name != "profiled"
    )
    if "profiled" not in timed:
        return f"{variant}: {fractions}"
    device = timed["profiled"]["device"]
    merge = sum(k["seconds"] for k in device["kernels"] if "_merge_kernel" in k["name"])
    return (f"{variant}: {fractions}, profiled {timed['profiled']['fraction_of_roofline']}; device busy "
            f"{device['busy_seconds']} s, idle {device['idle_seconds']} s, merge kernel {merge:.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
