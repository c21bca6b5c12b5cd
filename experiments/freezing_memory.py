"""What Inductor's freezing (``torch.compile(..., options={"freezing": True})``) costs and buys on the decode
bench's single-generation step: GPU memory held after each static compilation (one per number of rows) and
the step time, against the plain compiled decoder, at 16k (random Qwen2-7B shape, bf16).

Freezing treats the weights as constants, so Inductor may fold them: it concatenates the MLP's gate and up
projections into one matrix product (session 19's profile: 198 -> 170 GEMM launches, -0.3 ms a step). The
folded copy is new memory, per compilation, beside the model's own weights (still used by eager forwards).

    python experiments/freezing_memory.py --out experiments/results/session19/freezing_memory_h100.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hogwild_bench.bench import build_model, cache_shape, engine_step_ms  # noqa: E402
from hogwild_bench.engine import HogwildLM  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--freezing", action="store_true")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--context", type=int, default=16384)
    args = parser.parse_args()
    model = build_model()
    shape = cache_shape(model)
    lm = HogwildLM(model, cuda_graphs=True, compile=True)
    if args.freezing:
        lm.decoder.compiled = torch.compile(model, options={"freezing": True})
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    points = []
    for n in args.workers:
        ms, _ = engine_step_ms(lm, "triton", "combined", n, args.context, shape, 3, 10)
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() - base
        points.append({"workers": n, "compiled_ms": round(ms, 3), "memory_held_after_gib": round(held / 2**30, 2)})
        print(json.dumps(points[-1]), flush=True)
    out = {"gpu": torch.cuda.get_device_name(), "freezing": args.freezing, "command": " ".join(sys.argv),
           "model_gib": round(base / 2**30, 2), "points": points}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
