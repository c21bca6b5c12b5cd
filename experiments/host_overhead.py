"""Host cost of a batched forward on the Triton path, measured on a CPU with the kernels stubbed out.

A batched decode step on the GPU is host-bound (issue 13): the device waits while Python builds tables,
walks blocks and runs the model's module code. That cost does not need a GPU to be measured: this runs the
continuous batcher on a tiny random Qwen2-shaped model with 28 layers (the 7B's depth) where every Triton
launch is replaced by a no-op and the attention output by zeros, so what is timed is the host work alone
(plus the tiny model's CPU matmuls). The profile names the functions that cost the most.

    python experiments/host_overhead.py --out experiments/results/host_overhead_cpu.json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # lets the Triton path run on a CPU model; every kernel is stubbed below
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import torch  # noqa: E402
from batch_bench import jobs, prompts  # noqa: E402

import hogwild_bench.engine.triton_attention as triton_attention  # noqa: E402
from hogwild_bench.engine import HogwildLM  # noqa: E402
from hogwild_bench.engine.backends import TritonBackend  # noqa: E402
from hogwild_bench.engine.batch import ContinuousBatcher  # noqa: E402
from hogwild_bench.tiny import tiny_model, tiny_tokenizer  # noqa: E402


class NoLaunch:
    """Stands in for a `triton.jit` function: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def stub_kernels() -> None:
    TritonBackend.append_kernel_on = ("cuda", "cpu")  # the CUDA path's host work: K/V stored by the kernel
    for name in ("_block_attention_kernel", "_merge_kernel", "_append_kernel", "_shift_append_kernel"):
        setattr(triton_attention, name, NoLaunch())
    attend = triton_attention.attend_rows_triton
    triton_attention.attend_rows_triton = lambda *args, **kwargs: attend(*args, **kwargs).zero_()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--generations", type=int, default=32, help="N=2 generations: twice as many rows")
    parser.add_argument("--budget", type=int, default=96)
    args = parser.parse_args()
    stub_kernels()
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    lm = HogwildLM(tiny_model("qwen2", num_hidden_layers=args.layers), attention="triton", cuda_graphs=False)
    job_list = jobs(lm, tokenizer, prompts(args.generations, 64, tokenizer), 2, args.budget)
    forwards: list[tuple[int, float]] = []
    batcher = ContinuousBatcher(lm, max_rows=2 * args.generations, on_step=lambda r, s: forwards.append((r, s)))
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    finished = list(batcher.run(job_list))
    profiler.disable()
    wall = time.perf_counter() - start
    assert all(f.ok for f in finished), [f.error for f in finished if not f.ok][:1]
    full = sorted(s for rows, s in forwards if rows > args.generations)
    stats = pstats.Stats(profiler).stats
    top = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:20]  # by own time
    result = {
        "command": " ".join(sys.argv),
        "cpu": os.cpu_count(),
        "layers": args.layers,
        "rows": 2 * args.generations,
        "wall_seconds": round(wall, 2),
        "forwards": len(forwards),
        "median_ms_per_forward_over_half_full": round(1000 * full[len(full) // 2], 1),
        "top_own_time": [
            {
                "function": f"{Path(file).name}:{line}({name})",
                "calls": calls,
                "ms_per_forward": round(1000 * own / len(forwards), 2),
            }
            for (file, line, name), (_, calls, own, _, _) in top
        ],  # fmt: skip
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "top_own_time"}))


if __name__ == "__main__":
    main()
