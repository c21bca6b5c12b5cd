"""Compile the Triton attention kernel for Hopper (sm_90) on a machine without a GPU: does it build, and
with how many registers, spilled bytes and how much shared memory per program (``cuobjdump``/``nvdisasm``
ship with Triton's CUDA backend). A check before spending device time, not a timing: occupancy follows from
registers (65,536 per SM) and shared memory (228 KB per SM), and spills inside the key loop cost loads.

    python experiments/kernel_resources.py --out experiments/results/kernel_resources.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hogwild_bench.engine import triton_attention  # noqa: E402

CONSTEXPR = {"G": 7, "D": 128, "HALF": 64, "BLOCK_N": 64, "PRECISION": "tf32", "SPLIT_SIZE": 1024}  # Qwen2-7B
FLOAT_POINTERS = {"ENT_COS", "ENT_SIN", "O_PART", "LSE_PART"}
INT64_POINTERS = {"K_PTRS", "V_PTRS"}


def signature(kernel, block_m: int) -> tuple[dict, dict]:
    """Argument types from the kernel's names: ``Q`` bf16, upper-case tables int32 pointers (the pointer and
    rotation tables as named above), strides and sizes int32, the scale float32."""
    types, constants = {}, {}
    for name in kernel.arg_names:
        if name in CONSTEXPR or name == "BLOCK_M":
            types[name] = "constexpr"
            constants[(kernel.arg_names.index(name),)] = block_m if name == "BLOCK_M" else CONSTEXPR[name]
        elif name == "Q":
            types[name] = "*bf16"
        elif name in FLOAT_POINTERS or name in INT64_POINTERS:
            types[name] = "*fp32" if name in FLOAT_POINTERS else "*i64"
        elif name.isupper() and name != "T":
            types[name] = "*i32"
        else:
            types[name] = "fp32" if name == "scale_log2" else "i32"
    return types, constants


def resources(kernel, block_m: int, warps: int, stages: int) -> dict:
    types, constants = signature(kernel, block_m)
    source = ASTSource(fn=kernel, signature=types, constexprs=constants)
    options = {"num_warps": warps, "num_stages": stages}
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as cubin:
        cubin.write(compiled.asm["cubin"])
    try:
        usage = subprocess.run([tools / "cuobjdump", "--dump-resource-usage", cubin.name], capture_output=True,
                               text=True, check=True).stdout  # fmt: skip
        sass = subprocess.run([tools / "nvdisasm", "-c", cubin.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(cubin.name)
    fields = dict(item.split(":") for item in next(line for line in usage.splitlines() if "REG:" in line).split())
    return {"block_m": block_m, "registers": int(fields["REG"]), "spill_stack_bytes": int(fields["STACK"]),
            "shared_bytes": compiled.metadata.shared, "local_stores": sass.count("STL"),
            "local_loads": sass.count("LDL")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out")
    parser.add_argument("--block-m", type=int, nargs="+", default=[16, 32, 64])
    args = parser.parse_args()
    settings = triton_attention.settings
    kernel = triton_attention._block_attention_kernel
    rows = [resources(kernel, m, settings.num_warps, settings.num_stages) for m in args.block_m]
    for row in rows:
        print(json.dumps(row))
    if args.out:
        result = {"triton": triton.__version__, "target": "sm_90", "kernel": rows}
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
