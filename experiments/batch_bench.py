"""Sweep throughput: many Hogwild! generations per forward (`ContinuousBatcher`) vs one at a time.

The random-weight Qwen2-7B shape of the decode bench, bf16, on one GPU. P generations ("problems", each a
random ~512-token prompt) x N workers, ``--budget`` tokens per worker, combined layout, steps of 64 tokens
(a random model never writes the sentence-then-paragraph boundary), collaboration prompt every 256 tokens.
For each worker count it measures generated tokens/s and wall time of:
  (a) today's one-at-a-time path (one generation in flight, its decode steps replayed from CUDA graphs),
  (b) the batcher at each ``--rows`` (eager Triton steps; "+graphs": decode steps replayed from graphs
      captured once per row-count bucket, whichever generations are in flight; "+compile_buckets" with
      ``--compile-buckets``: those steps run the ``torch.compile``d model, one static compilation per bucket,
      made in an untimed warm-up run of the same jobs as a sweep makes it once for all its generations),
  (c) plain HF ``generate`` at the same number of rows (single-thread decoding, no Hogwild!, sampling),
  (d) the roofline: rows per step / ((weight bytes + every row's unique KV bytes at the mean context) /
      copy bandwidth), with the bandwidth measured in the same run.

    python experiments/batch_bench.py --out experiments/results/batch_bench_h100.json
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hogwild_bench.bench import build_model, copy_bandwidth, random_model_options, weight_bytes_read  # noqa: E402
from hogwild_bench.engine import HogwildGenerator, HogwildLM  # noqa: E402
from hogwild_bench.engine.batch import BatchJob, ContinuousBatcher  # noqa: E402
from hogwild_bench.engine.cache import HogwildCache  # noqa: E402
from hogwild_bench.tiny import tiny_tokenizer  # noqa: E402

WORDS = "the of and to in is was for on that with as by at from it an be this which or are".split()


def prompts(count: int, tokens: int, tokenizer, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        text = ""
        while len(tokenizer.encode(text)) < tokens:
            text += " ".join(rng.choice(WORDS) for _ in range(32)) + ". "
        out.append(text)
    return out


def jobs(lm, tokenizer, problems: list[str], n: int, budget: int) -> list[BatchJob]:
    out = []
    for index, problem in enumerate(problems):
        options = random_model_options(lm, tokenizer, n, budget, collab_interval=256, seed=index)
        gen = HogwildGenerator(lm, tokenizer, options, boundary=lambda step: len(step) >= 64)
        out.append(
            BatchJob(index, lambda cache, g=gen, p=problem: g.steps(cache, p), n, gen.worst_case_tokens(problem))
        )
    return out


def throughput(tokens: int, wall: float) -> dict:
    return {"tokens": tokens, "wall_seconds": round(wall, 2), "tokens_per_second": round(tokens / wall, 1)}


def generated(finished) -> dict:
    """Tokens of finished generations at their last budget: ``tokens`` the sampled ones (what HF's count and a
    tokens/s target mean), ``total_tokens`` with the step labels and collaboration prompts the engine
    inserted (each one a row of some forward too: ~15 % more at 64-token steps)."""
    last = [f.result.snapshots[max(f.result.snapshots)] for f in finished]
    return {"tokens": sum(s.sampled_tokens for s in last), "total_tokens": sum(s.total_tokens for s in last)}


DECODE_MAX_NEW = 128  # a forward whose rows each write fewer tokens is a decode step (a prefill writes a prompt)


@contextlib.contextmanager
def forward_reads(log: list[tuple[int, int]]):
    """Each forward begun on any `HogwildCache` appends ``(largest write, K/V tokens read)``: the visible tokens
    of every distinct block its rows see, its new tokens included -- the K/V bytes a step must read at least."""
    begin = HogwildCache.begin_forward_blocks

    def logged(cache, views, new_tokens):
        begin(cache, views, new_tokens)
        blocks = {id(block): block for view in views for block in view}
        log.append((max(map(len, new_tokens)), sum(block.visible_length for block in blocks.values())))

    HogwildCache.begin_forward_blocks = logged
    try:
        yield
    finally:
        HogwildCache.begin_forward_blocks = begin


def measured_floor(
    log: list[tuple[int, int]], weight_bytes: int, kv_bytes_per_token: int, bandwidth: float, rows: int
) -> dict:
    """From `forward_reads`' log: the mean K/V tokens a decode forward reads, the run's floor -- every
    forward's weights plus its K/V over the copy bandwidth (a time: the design's "memory floor") -- and the
    roofline of ``rows`` rows reading that mean (tokens/s, unrounded)."""
    decode = [tokens for widest, tokens in log if widest < DECODE_MAX_NEW]
    mean = round(sum(decode) / max(1, len(decode)), 1)
    floor = sum(weight_bytes + tokens * kv_bytes_per_token for _, tokens in log) / bandwidth
    return {"forwards": len(log), "mean_decode_kv_tokens": mean, "floor_seconds": round(floor, 3),
            "roofline": rows * bandwidth / (weight_bytes + mean * kv_bytes_per_token)}  # fmt: skip


def add_point_arguments(parser: argparse.ArgumentParser) -> None:
    """The batched point `gpu_timeline.py` times (and `bucket_plan_cpu.py` replays on a CPU)."""
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--prompt-tokens", type=int, default=512)


def run_batched(
    lm,
    job_list,
    max_rows: int,
    max_jobs: int | None,
    graphs: bool,
    lanes: int = 1,
    overlap: bool = False,
    warm: list | None = None,
    reads: list | None = None,
    window: int = 1,
) -> dict:
    """Time one run of ``job_list``; with ``warm`` (the same jobs made afresh) the batcher first runs those
    untimed, so the timed run replays graphs already captured, as a sweep's does after its first wave.
    ``reads``: `forward_reads`' log of the warm run, or (without one) of the timed run (the log adds host work
    to each timed forward: a set of the rows' blocks)."""
    forwards = []
    batcher = ContinuousBatcher(
        lm, max_rows=max_rows, max_jobs=max_jobs, cuda_graphs=graphs, on_step=lambda rows, s: forwards.append(rows),
        lanes=lanes, overlap=overlap, window=window,
    )  # fmt: skip
    logging = forward_reads(reads) if reads is not None else contextlib.nullcontext()
    if warm is not None:
        with logging:
            for _ in batcher.run(warm):
                pass
        logging = contextlib.nullcontext()
        forwards.clear()
        batcher.times = type(batcher.times)()
    graph_counts = [(lane.graphs.captures, lane.graphs.replays) for lane in batcher.lanes if lane.graphs is not None]
    torch.cuda.synchronize()
    start = time.perf_counter()
    with logging:
        finished = list(batcher.run(job_list))
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    errors = [str(f.error) for f in finished if not f.ok]
    if errors:
        raise RuntimeError(f"{len(errors)} generations failed: {errors[0]}")
    tokens = generated(finished)
    peak = max(f.cost.peak_kv_bytes for f in finished)
    lane_graphs = [lane.graphs for lane in batcher.lanes if lane.graphs is not None]
    replayed = {
        "graph_captures": sum(g.captures for g in lane_graphs) - sum(c for c, _ in graph_counts),
        "graph_replays": sum(g.replays for g in lane_graphs) - sum(r for _, r in graph_counts),
        "eager_forwards": batcher.times.eager,
    } if lane_graphs else {}  # fmt: skip
    if overlap:
        replayed |= {"steps_ahead": batcher.times.ahead, "taken_back": batcher.times.taken_back}
    if window > 1:
        replayed |= {"window_steps_ahead": batcher.times.ahead, "window_steps_kept": batcher.times.kept}
    del batcher
    torch.cuda.empty_cache()
    return {
        "generations": len(finished),
        **throughput(tokens["tokens"], wall),
        "total_tokens": tokens["total_tokens"],
        "forwards": len(forwards),
        "mean_rows_per_forward": round(sum(forwards) / len(forwards), 1),
        "peak_kv_bytes_per_generation": peak,
        **replayed,
    }


def run_hf(model, tokenizer, problems: list[str], budget: int) -> dict:
    """Plain HF sampling of ``len(problems)`` rows for ``budget`` new tokens each (no EOS stop)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        ids = [tokenizer.encode(p) for p in problems]
        width = max(map(len, ids))
        input_ids = torch.tensor([[0] * (width - len(x)) + x for x in ids], device="cuda")
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device="cuda")
        from torch.nn.attention import SDPBackend, sdpa_kernel

        torch.cuda.synchronize()
        start = time.perf_counter()
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]), torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=budget,
                min_new_tokens=budget,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                pad_token_id=0,
            )
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    finally:
        model.set_attn_implementation(previous)
    tokens = (out.shape[1] - width) * out.shape[0]
    torch.cuda.empty_cache()
    return {"rows": len(problems), **throughput(tokens, wall)}


def profile_batched(lm, tokenizer, args, name: str) -> dict:
    """Where a batched forward's time goes: torch.profiler over a short run of ``--profile`` rows (N=2)."""
    from torch.profiler import ProfilerActivity, profile

    job_list = jobs(lm, tokenizer, prompts(args.profile // 2, args.prompt_tokens, tokenizer, seed=7), 2, 96)
    forwards = []
    batcher = ContinuousBatcher(lm, max_rows=args.profile, on_step=lambda rows, s: forwards.append((rows, s)))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in batcher.run(job_list):
            pass
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:25]
    decode = [s for rows, s in forwards if rows > 1]
    return {
        "method": f"profile_{name}",
        "rows": args.profile,
        "wall_seconds": round(wall, 2),
        "forwards": len(forwards),
        "median_forward_ms": round(1000 * sorted(decode)[len(decode) // 2], 2) if decode else None,
        "device_ms_total": round(sum(e.self_device_time_total for e in events) / 1000, 1),
        "top_self_cpu": [
            {
                "name": e.key[:80],
                "calls": e.count,
                "self_cpu_ms": round(e.self_cpu_time_total / 1000, 1),
                "device_ms": round(e.self_device_time_total / 1000, 1),
            }
            for e in top
        ],  # fmt: skip
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--alone", type=int, default=2, help="generations timed one at a time (a)")
    parser.add_argument("--graph-rows", type=int, nargs="*", default=[64])
    parser.add_argument("--compiled-rows", type=int, nargs="*", default=[64, 128],
                        help="row counts also timed with the model compiled once with dynamic shapes")  # fmt: skip
    parser.add_argument("--profile", type=int, default=0, help="rows of a short profiled batched run (0: none)")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--shape", default="7b", help="random model shape: 7b (issue 13's) or 1.5b (the real sweep's)")
    parser.add_argument("--cpu-threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--compile-buckets",
        action="store_true",
        help="also time the graph rows with batch.compile_buckets (compiled in a warm-up run)",
    )
    parser.add_argument(
        "--warm-batcher", action="store_true",
        help="time each batched variant on a batcher that has run the same jobs once (graphs captured: a sweep's "
        "steady state); without it the timed run includes the captures",
    )  # fmt: skip
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-eager", action="store_true", help="time the batcher with graphs only")
    parser.add_argument("--lanes", type=int, nargs="+", default=[1], help="batch.lanes values timed with graphs")
    parser.add_argument(
        "--overlap", type=int, nargs="+", default=[0], choices=[0, 1],
        help="batch.overlap values timed for each batched variant (1: steps launched before their tokens are read)",
    )  # fmt: skip
    parser.add_argument(
        "--window", type=int, nargs="+", default=[1],
        help="batch.window values timed for each batched variant without overlap (1: off; k: k steps per host round)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)  # as the runner does (batch.cpu_threads)
    gpu = torch.cuda.get_device_name()
    model = build_model(args.layers, args.shape)
    tokenizer = tiny_tokenizer("qwen")
    lm = HogwildLM(model, cuda_graphs=True)
    weight_bytes = weight_bytes_read(model)
    bandwidth = copy_bandwidth()
    kvb = lm.kv_bytes_per_token
    print(f"{gpu}: weights {weight_bytes / 1e9:.2f} GB, copy bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    out = Path(args.out)
    result = {
        "gpu": gpu,
        "bandwidth_bytes_per_s": bandwidth,
        "weight_bytes": weight_bytes,
        "budget": args.budget,
        "prompt_tokens": args.prompt_tokens,
        "command": " ".join(sys.argv),
        "points": [],
    }

    def save(point):
        result["points"].append(point)
        print(json.dumps(point), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))

    warm = jobs(lm, tokenizer, prompts(2, 64, tokenizer, seed=99), 2, 32)
    run_batched(lm, warm, 64, None, False)  # compile the kernels once
    compiled = None
    if args.compiled_rows:
        compiled = HogwildLM(model, cuda_graphs=False, compile_dynamic=True)
        started = time.perf_counter()
        run_batched(compiled, jobs(compiled, tokenizer, prompts(8, 64, tokenizer, seed=98), 2, 48), 16, None, False)
        save({"method": "compile_dynamic_warmup", "wall_seconds": round(time.perf_counter() - started, 1)})
    bucketed = HogwildLM(model, cuda_graphs=True, compile_buckets=True) if args.compile_buckets else None
    if args.profile:
        for name, engine in (("eager", lm), ("compile_dynamic", compiled)):
            if engine is not None:
                save(profile_batched(engine, tokenizer, args, name))
    for n in args.workers:
        alone = run_batched(
            lm,
            jobs(lm, tokenizer, prompts(args.alone, args.prompt_tokens, tokenizer), n, args.budget),
            max_rows=n,
            max_jobs=1,
            graphs=True,
        )
        save({"method": "one_at_a_time", "workers": n, "rows": n, **alone})
        for rows in args.rows:
            count = rows // n
            problems = prompts(count, args.prompt_tokens, tokenizer)
            mean_context = args.prompt_tokens + n * (args.budget // 2)
            floor = (weight_bytes + count * mean_context * kvb) / bandwidth
            roofline = rows / floor
            variants = [] if args.skip_eager else [("batched", lm, False, 1)]
            if rows in args.graph_rows:
                variants += [(f"batched+graphs{'' if k == 1 else f'+lanes{k}'}", lm, True, k) for k in args.lanes]
            if compiled is not None and rows in args.compiled_rows:
                variants.append(("batched+compile_dynamic", compiled, False, 1))
            if bucketed is not None and rows in args.graph_rows:
                started = time.perf_counter()
                run_batched(bucketed, jobs(bucketed, tokenizer, problems, n, args.budget), rows, None, True)
                save({"method": "compile_buckets_warmup", "workers": n, "rows": rows,
                      "wall_seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
                variants.append(("batched+graphs+compile_buckets", bucketed, True, 1))
            for (method, engine, graphs, lanes), overlap, window in itertools.product(
                variants, args.overlap, args.window
            ):
                if overlap and window > 1:
                    continue  # one or the other
                warm = jobs(engine, tokenizer, problems, n, args.budget) if args.warm_batcher else None
                reads: list[tuple[int, int]] = []
                batched = run_batched(
                    engine, jobs(engine, tokenizer, problems, n, args.budget), rows, None, graphs, lanes, bool(overlap),
                    warm, reads, window,
                )  # fmt: skip
                floor = measured_floor(reads, weight_bytes, kvb, bandwidth, rows)
                measured = floor.pop("roofline")
                point = {
                    "method": method
                    + ("+overlap" if overlap else "")
                    + (f"+window{window}" if window > 1 else "")
                    + ("+warm_batcher" if warm else ""),
                    "workers": n,
                    "rows": rows,
                    **batched,
                    # nominal: the K/V of prompt_tokens + N x budget / 2 per generation (sessions 7-27's figure)
                    "roofline_tokens_per_second": round(roofline, 1),
                    "fraction_of_roofline": round(batched["total_tokens"] / batched["wall_seconds"] / roofline, 3),
                    # measured: the K/V the run's decode forwards read (prompt template, labels, history included)
                    "measured_roofline_tokens_per_second": round(measured, 1),
                    "generated_fraction_of_roofline": round(batched["tokens_per_second"] / measured, 3),
                    "floor_over_wall": round(floor["floor_seconds"] / batched["wall_seconds"], 3),
                    "floor": floor,
                    "speedup_vs_one_at_a_time": round(batched["tokens_per_second"] / alone["tokens_per_second"], 2),
                }
                save(point)
            if not args.skip_hf and n == args.workers[0]:  # HF decoding has no workers: once per row count
                hf = run_hf(model, tokenizer, prompts(rows, args.prompt_tokens, tokenizer), args.budget)
                save({"method": "hf_generate", "workers": 1, **hf})


if __name__ == "__main__":
    main()
