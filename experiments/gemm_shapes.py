"""Device time of the random Qwen2-7B's projections at a batched step's row count, against their weight-read floor.

    python experiments/gemm_shapes.py --out experiments/results/session28/gemm_shapes_h100.json

`gpu_timeline.py` puts the batched run's GEMMs at ~0.8 of their weight-read floor, with the k and v projections
(512 output features) in split-K GEMMs at ~5x theirs. This times each projection alone -- 28 distinct weight
tensors, one per layer, so the L2 cache cannot hold them, in one CUDA graph replayed ``--reps`` times -- and
the fused shapes a model with concatenated weights would run (q/k/v in one GEMM, gate/up in one), under the
BLAS settings torch exposes: the default, reduced-precision bf16 reductions off (which forbids some split-K
choices), and cuBLASLt preferred. What fusion or a setting would buy is then a measured number per layer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hogwild_bench.bench import copy_bandwidth  # noqa: E402

HIDDEN, Q_OUT, KV_OUT, MLP, LAYERS = 3584, 3584, 512, 18944, 28
# name: (output features, input features, has bias)
SHAPES = {
    "q": (Q_OUT, HIDDEN, True),
    "k": (KV_OUT, HIDDEN, True),
    "v": (KV_OUT, HIDDEN, True),
    "qkv_fused": (Q_OUT + 2 * KV_OUT, HIDDEN, True),
    "o": (HIDDEN, Q_OUT, False),
    "gate": (MLP, HIDDEN, False),
    "up": (MLP, HIDDEN, False),
    "gate_up_fused": (2 * MLP, HIDDEN, False),
    "down": (HIDDEN, MLP, False),
}


def time_projection(rows: int, out_features: int, in_features: int, bias: bool, reps: int) -> float:
    """Microseconds per layer of ``F.linear`` over 28 distinct weights, captured in one graph."""
    shape = (out_features, in_features)
    weights = [torch.randn(shape, dtype=torch.bfloat16, device="cuda") * 0.02 for _ in range(LAYERS)]
    biases = [torch.randn(out_features, dtype=torch.bfloat16, device="cuda") if bias else None for _ in range(LAYERS)]
    x = torch.randn(rows, in_features, dtype=torch.bfloat16, device="cuda")

    def all_layers() -> None:
        for w, b in zip(weights, biases):
            F.linear(x, w, b)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            all_layers()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        all_layers()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (reps * LAYERS)


def settings_variants():
    """(name, function that applies it); each restores the defaults first."""
    matmul = torch.backends.cuda.matmul
    default_reduction = matmul.allow_bf16_reduced_precision_reduction
    default_library = torch.backends.cuda.preferred_blas_library()

    def reset() -> None:
        matmul.allow_bf16_reduced_precision_reduction = default_reduction
        torch.backends.cuda.preferred_blas_library(default_library)

    def no_reduced_precision() -> None:
        reset()
        matmul.allow_bf16_reduced_precision_reduction = False

    def cublaslt() -> None:
        reset()
        torch.backends.cuda.preferred_blas_library("cublaslt")

    return [("default", reset), ("bf16_full_precision_reduction", no_reduced_precision), ("cublaslt", cublaslt)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    results = []
    for setting, apply in settings_variants():
        apply()
        for rows in args.rows:
            for name, (out_features, in_features, bias) in SHAPES.items():
                us = time_projection(rows, out_features, in_features, bias, args.reps)
                floor_us = out_features * in_features * 2 / bandwidth * 1e6
                point = {"setting": setting, "rows": rows, "projection": name, "us_per_layer": round(us, 2),
                         "floor_us": round(floor_us, 2), "over_floor": round(us / floor_us, 2)}  # fmt: skip
                results.append(point)
                print(json.dumps(point), flush=True)
    settings_variants()[0][1]()
    out = {"gpu": torch.cuda.get_device_name(), "command": " ".join(sys.argv),
           "copy_bandwidth_bytes_per_s": bandwidth, "results": results}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
