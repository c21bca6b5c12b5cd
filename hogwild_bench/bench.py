"""Decode-step benchmark against the memory floor: ``python -m hogwild_bench.bench --out FILE.json``.

A random-weight Qwen2-7B-shaped model in bf16 (hidden 3584, 28 layers, 28 heads, 4 KV heads, vocab 152064).
For each worker count N, shared context C and layout, one decode step of N workers (one new token each)
is timed for:
  (a) plain HF batched decode at batch N (SDPA, DynamicCache holding C tokens per row),
  (b) the engine's torch query-rotation path, (c) the engine's Triton path (eager; replayed from a
  CUDA graph: "graph"; and replayed from a CUDA graph of the torch.compile'd model: "compiled"),
and compared with (d) the floor = (weight bytes + unique KV bytes) / device-to-device copy bandwidth,
all measured in the same run. Cache contents are random (never zeros). It also times end-to-end
generation (prefill, decode, step commits, finisher) in tokens/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from hogwild_bench.engine import GenerationOptions, HogwildGenerator, HogwildLM, SamplingParams, Write, get_layout
from hogwild_bench.engine.cache import cache_keyword
from hogwild_bench.engine.layouts import HISTORY, PROMPT, step_block

QWEN2_7B_SHAPE = dict(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
    vocab_size=152064, max_position_embeddings=65536, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    tie_word_embeddings=False,
)  # fmt: skip
QWEN25_15B_SHAPE = dict(
    hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
    vocab_size=151936, max_position_embeddings=32768, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    tie_word_embeddings=True,
)  # fmt: skip
SHAPES = {"7b": QWEN2_7B_SHAPE, "1.5b": QWEN25_15B_SHAPE}  # random-weight models of real shapes
# method -> attention backend; "graph": Triton steps replayed from CUDA graphs, "compiled": the same with the
# model torch.compile'd around the engine's op
METHODS = (("torch", "query_rotation"), ("triton", "triton"), ("graph", "triton"), ("compiled", "triton"))
STEP_TOKENS = 64  # length of each worker's current step in the history layouts


def build_model(layers: int | None = None, shape_name: str = "7b"):
    """A random-weight bf16 Qwen2 of shape ``shape_name`` (`SHAPES`: the 7B of the decode bench, or the 1.5B of
    the real GSM8K sweep) on CUDA, optionally with fewer layers."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    if shape_name not in SHAPES:
        raise ValueError(f"unknown model shape {shape_name!r}; valid: {', '.join(SHAPES)}")
    shape = dict(SHAPES[shape_name], **({"num_hidden_layers": layers} if layers else {}))
    config = Qwen2Config(**shape)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval()


def cache_shape(model) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)``: the cache shape the bench's helpers (`fill_cache`, `engine_step_ms`) take."""
    config = model.config
    return config.num_hidden_layers, config.num_key_value_heads, config.hidden_size // config.num_attention_heads


def weight_bytes_read(model) -> int:
    """Bytes of weights a decode step reads: every parameter but the embedding table (only a row per token),
    unless the output layer is that same table (tied embeddings: read whole for the logits)."""
    embed = model.get_input_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # a tied table is counted once
    return total if model.get_output_embeddings().weight is embed else total - embed.numel() * embed.element_size()


def copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written (median of 20)."""
    src = torch.randn(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(25):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * nbytes / statistics.median(times[5:])


def time_steps(step, warmup: int, steps: int) -> float:
    """Median ms per call of ``step()`` (synchronised per step)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def layout_lengths(layout: str, n: int, context: int) -> dict[str, int]:
    """Block lengths for a shared context of ``context`` tokens (prompt + history or others' blocks)."""
    prompt = min(1024, context // 2)
    rest = context - prompt
    if layout == "contiguous":
        lengths = {PROMPT: prompt}
        lengths.update({step_block(i): rest // n for i in range(n)})
        return lengths
    lengths = {PROMPT: prompt, HISTORY: rest}
    lengths.update({step_block(i): STEP_TOKENS for i in range(n)})
    if layout == "combined":
        lengths.update({"others_header": 12, "separator": 4, "own_header": 10})
    return lengths


def fill_cache(cache, lengths: dict[str, int], kv_heads: int, head_dim: int, layers: int) -> None:
    for name, length in lengths.items():
        block = cache.writable(name)
        block.start_write([0] * length)
        for layer in range(layers):
            shape = (kv_heads, length, head_dim)
            k = torch.randn(shape, dtype=torch.bfloat16, device="cuda")
            block.write(layer, k, torch.randn_like(k))
        block.finish_write()


def unique_kv_tokens(layout_name: str, n: int, lengths: dict[str, int]) -> int:
    layout = get_layout(layout_name)
    seen = {name for view in layout.views(n) for name in view}
    return sum(lengths.get(name, 0) for name in seen)


def engine_step_ms(lm, attention, layout_name, n, context, model_shape, warmup, steps) -> tuple[float, int]:
    layers, kv_heads, head_dim = model_shape
    cache = lm.new_cache(attention)
    lengths = layout_lengths(layout_name, n, context)
    fill_cache(cache, lengths, kv_heads, head_dim, layers)
    views = get_layout(layout_name).views(n)
    writes = [Write(views[i], [100 + i]) for i in range(n)]
    ms = time_steps(lambda: lm.forward(cache, writes), warmup, steps)
    cache.blocks.clear()
    cache.decode_graphs.clear()  # graphs hold their blocks and memory pool
    torch.cuda.empty_cache()
    return ms, unique_kv_tokens(layout_name, n, lengths)


def hf_step_ms(model, n, context, model_shape, warmup, steps) -> float:
    from transformers import DynamicCache

    layers, kv_heads, head_dim = model_shape
    previous = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        cache = DynamicCache(config=model.config)
        for layer in range(layers):
            k = torch.randn(n, kv_heads, context, head_dim, dtype=torch.bfloat16, device="cuda")
            cache.update(k, torch.randn_like(k), layer)
        position = [context]
        ids = torch.full((n, 1), 100, device="cuda")

        @torch.inference_mode()
        def step():
            positions = torch.full((n, 1), position[0], device="cuda")
            cached = {cache_keyword(type(model)): cache}
            model(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1, **cached)
            position[0] += 1

        # flash/memory-efficient SDPA: cuDNN's SDPA (PyTorch's default for bf16 on H100) builds a new plan for
        # every new KV length, i.e. every decode step, which would make this baseline look far slower
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            ms = time_steps(step, warmup, steps)
    finally:
        model.set_attn_implementation(previous)
    torch.cuda.empty_cache()
    return ms


def random_model_options(lm, tokenizer, n: int, budget: int, collab_interval: int, seed: int = 0) -> GenerationOptions:
    """Generation settings for timing a random-weight model: sampled, combined layout, never stopping early.

    Ids past the tokenizer's vocabulary are forbidden (they do not decode), and so are end-of-turn tokens
    (``worker_eos="forbid"``): a random model samples them, and a worker that ends its turn early would
    shrink the work being timed."""
    return GenerationOptions(
        n_workers=n,
        layout="combined",
        budgets=[budget],
        collab_interval=collab_interval,
        early_stop=False,
        worker_eos="forbid",
        sampling=SamplingParams(
            temperature=1.0, seed=seed, forbidden_token_ids=tuple(range(len(tokenizer), lm.model.config.vocab_size))
        ),
    )


def end_to_end(lm, tokenizer, attention, n, budget) -> dict:
    options = random_model_options(lm, tokenizer, n, budget, collab_interval=128)
    lm.attention = attention
    generator = HogwildGenerator(lm, tokenizer, options, boundary=lambda step: len(step) >= 48)
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = generator.generate("What is the sum of the first 10 positive integers?")
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    snap = result.snapshots[budget]
    return {"workers": n, "attention": attention, "cuda_graphs": lm.cuda_graphs, "compiled": lm.decoder is not None,
            "budget": budget,
            "total_tokens": snap.total_tokens, "sampled_tokens": snap.sampled_tokens,
            "wall_seconds": round(wall, 3), "tokens_per_second": round(snap.sampled_tokens / wall, 1),
            "steps_per_second": round(budget / wall, 2)}  # fmt: skip


def profile_graph(lm, shape, n, context, layout, floor_ms) -> dict:
    """Where a CUDA-graph decode step's time goes: graph replay (device) vs host preparation, and the
    device time of the heaviest kernels inside the replay."""
    from torch.profiler import ProfilerActivity, profile

    layers, kv_heads, head_dim = shape
    cache = lm.new_cache("triton")
    fill_cache(cache, layout_lengths(layout, n, context), kv_heads, head_dim, layers)
    views = get_layout(layout).views(n)
    writes = [Write(views[i], [100 + i]) for i in range(n)]
    step_ms = time_steps(lambda: lm.forward(cache, writes), 3, 20)
    graph = cache.decode_graphs[tuple(tuple(v) for v in views)]
    replays = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.graph.replay()  # rewrites the same position with the same values: harmless
        end.record()
        torch.cuda.synchronize()
        replays.append(start.elapsed_time(end))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            graph.graph.replay()
        torch.cuda.synchronize()
    kernels = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
    groups: dict[str, dict[str, float]] = {}
    for e in kernels:
        group = groups.setdefault(kernel_group(e.key), {"ms": 0.0, "kernels": 0})
        group["ms"] += e.device_time_total / 5 / 1e3
        group["kernels"] += e.count / 5
    result = {
        "workers": n, "context": context, "layout": layout, "compiled": lm.decoder is not None, "floor_ms": floor_ms,
        "step_ms": step_ms, "replay_ms": statistics.median(replays), "host_ms": step_ms - statistics.median(replays),
        "captures": graph.captures, "kernel_groups_per_step": groups,
        "top_kernels_ms_per_step": {e.key[:80]: e.device_time_total / 5 / 1e3 for e in kernels[:8]},
    }  # fmt: skip
    cache.blocks.clear()
    cache.decode_graphs.clear()
    torch.cuda.empty_cache()
    return result


KERNEL_GROUPS = (  # (group, substrings of the kernel name), first match wins
    ("gemm", ("nvjet", "gemm", "cutlass", "xmma")),
    ("hogwild_attention", ("_block_attention_kernel",)),
    ("hogwild_merge", ("_merge_kernel",)),
    ("hogwild_append", ("_append_kernel",)),
    ("inductor_fused", ("triton_",)),
    ("elementwise", ("elementwise",)),
    ("reduce", ("reduce",)),
)


def kernel_group(name: str) -> str:
    return next((group for group, keys in KERNEL_GROUPS if any(k in name for k in keys)), "other")


def profile_steps(model, lm, shape, n, context) -> None:
    """torch.profiler tables (host and device time) for one HF step and one Triton-path step."""
    from torch.profiler import ProfilerActivity, profile

    for name, run in (
        ("hf", lambda: hf_step_ms(model, n, context, shape, 2, 3)),
        ("triton", lambda: engine_step_ms(lm, "triton", "combined", n, context, shape, 2, 3)),
    ):
        run()  # compile and warm up outside the profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            ms = run()
        print(f"--- {name}: {ms}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=50))
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=8, max_name_column_width=50))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 16384, 32768])
    parser.add_argument("--layouts", nargs="+", default=["combined", "contiguous", "interleaved"])
    parser.add_argument("--methods", nargs="+", default=["hf", "torch", "triton", "graph", "compiled"])
    parser.add_argument("--layers", type=int, default=None, help="fewer layers for a quick check")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--e2e-budget", type=int, default=256)
    parser.add_argument("--profile", action="store_true", help="print where one step's time goes, then exit")
    parser.add_argument("--profile-graph", action="store_true", help="graph replay vs host time, per point")
    args = parser.parse_args(argv)

    from hogwild_bench.tiny import tiny_tokenizer

    gpu = torch.cuda.get_device_name()
    model = build_model(args.layers)
    shape = cache_shape(model)
    lm = HogwildLM(model, cuda_graphs=False)
    lm_graph = HogwildLM(model, cuda_graphs=True)
    lm_compiled = HogwildLM(model, cuda_graphs=True, compile=True)
    weight_bytes = weight_bytes_read(model)
    kv_bytes_per_token = lm.kv_bytes_per_token
    bandwidth = copy_bandwidth()
    print(f"{gpu}: weights read per step {weight_bytes / 1e9:.2f} GB, copy bandwidth {bandwidth / 1e12:.2f} TB/s")

    if args.profile:
        profile_steps(model, lm, shape, args.workers[-1], args.contexts[-1])
        return
    if args.profile_graph:
        points = []
        for n in args.workers:
            for context in args.contexts:
                for layout in args.layouts:
                    lengths = layout_lengths(layout, n, context)
                    kv = unique_kv_tokens(layout, n, lengths) * kv_bytes_per_token
                    floor_ms = (weight_bytes + kv) / bandwidth * 1e3
                    for engine in (lm_graph, lm_compiled) if "compiled" in args.methods else (lm_graph,):
                        points.append(profile_graph(engine, shape, n, context, layout, floor_ms))
                        print(json.dumps(points[-1]), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps({"gpu": gpu, "bandwidth_bytes_per_s": bandwidth, "points": points}, indent=1)
        )
        return

    rows = []
    for n in args.workers:
        for context in args.contexts:
            hf = hf_step_ms(model, n, context, shape, args.warmup, args.steps) if "hf" in args.methods else None
            for layout in args.layouts:
                row = {"gpu": gpu, "workers": n, "context": context, "layout": layout, "hf_ms": hf}
                for method, attention in METHODS:
                    if method in args.methods:
                        engine = {"graph": lm_graph, "compiled": lm_compiled}.get(method, lm)
                        ms, unique = engine_step_ms(
                            engine, attention, layout, n, context, shape, args.warmup, args.steps
                        )
                        row[f"{method}_ms"] = ms
                        row["unique_kv_tokens"] = unique
                kv_bytes = row["unique_kv_tokens"] * kv_bytes_per_token
                row["floor_ms"] = (weight_bytes + kv_bytes) / bandwidth * 1e3
                for method in ("hf", *(m for m, _ in METHODS)):
                    if row.get(f"{method}_ms") is not None:
                        row[f"{method}_over_floor"] = row[f"{method}_ms"] / row["floor_ms"]
                        if hf:
                            row[f"{method}_over_hf"] = row[f"{method}_ms"] / hf
                rows.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
                write_results(args, gpu, weight_bytes, bandwidth, kv_bytes_per_token, rows, [])  # kept if cut off

    e2e = []
    if args.e2e_budget:
        tokenizer = tiny_tokenizer()
        runs = [(lm_compiled, 1, "triton"), (lm_compiled, 2, "triton"), (lm_compiled, 4, "triton"),
                (lm_graph, 2, "triton"), (lm, 2, "triton"), (lm, 2, "query_rotation")]  # fmt: skip
        for engine, n, attention in runs:
            if n in args.workers:
                e2e.append(end_to_end(engine, tokenizer, attention, n, args.e2e_budget))
                print(json.dumps(e2e[-1]), flush=True)
    write_results(args, gpu, weight_bytes, bandwidth, kv_bytes_per_token, rows, e2e)
    print(f"wrote {args.out}")


def write_results(args, gpu, weight_bytes, bandwidth, kv_bytes_per_token, rows, e2e) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"gpu": gpu, "torch": torch.__version__, "weight_bytes": weight_bytes, "bandwidth_bytes_per_s": bandwidth,
            "kv_bytes_per_token": kv_bytes_per_token, "args": vars(args)}  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "decode": rows, "end_to_end": e2e}, indent=1))


if __name__ == "__main__":
    main()
