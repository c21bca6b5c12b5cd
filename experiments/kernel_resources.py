"""Compile every Triton kernel of the engine for Hopper (sm_90) on a machine without a GPU: does it build,
and with how many registers, spilled bytes and how much shared memory per program (``cuobjdump`` ships with
Triton's CUDA backend). The CPU tests run the kernels in Triton's interpreter, which executes Python and
accepts code the compiler rejects; this is the check before spending device time, not a timing: occupancy
follows from registers (65,536 per SM) and shared memory (228 KB per SM), and spills cost local loads.
Run without ``TRITON_INTERPRET`` (the interpreter replaces the kernels).

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

from hogwild_bench.engine import sampling_kernel, triton_attention  # noqa: E402

MODEL = {"G": 7, "D": 128, "HALF": 64}  # Qwen2-7B: 7 query heads per KV head, head dim 128
SETTINGS = triton_attention.settings
# kernel -> (pointer types by argument; other upper-case arguments are int32 tables, lower-case ones int32
# sizes and strides), and its variants: constexprs and warps as the engine launches it
SPECS = {
    "_block_attention_kernel": (
        {"Q": "*bf16", "K_PTRS": "*i64", "V_PTRS": "*i64", "ENT_COS": "*fp32", "ENT_SIN": "*fp32",
         "O_PART": "*fp32", "LSE_PART": "*fp32", "scale_log2": "fp32", "T": "i32"},
        [{"BLOCK_M": m, "BLOCK_N": SETTINGS.block_n, "PRECISION": "tf32", "SPLIT_SIZE": SETTINGS.batch_split,
          "num_warps": SETTINGS.num_warps, "num_stages": SETTINGS.num_stages} for m in (16, 32, 64)],
    ),
    "_merge_kernel": (
        {"O_PART": "*fp32", "LSE_PART": "*fp32", "OUT": "*bf16"},
        [{"CHUNK": chunk, "num_warps": warps} for chunk, warps in (SETTINGS.merge_for(7), SETTINGS.merge_for(40))],
    ),
    "_append_kernel": ({"NEW_K": "*bf16", "NEW_V": "*bf16", "K_PTRS": "*i64", "V_PTRS": "*i64", "Q_LEN": "i32"}, [{}]),
    "_shift_append_kernel": (
        {"LIKE": "*bf16", "SRC": "*i64", "DST": "*i64", "COS": "*fp32", "SIN": "*fp32"},
        [{"BLOCK_T": triton_attention.SHIFT_BLOCK_T}],
    ),
    "_gumbel_argmax_kernel": (
        {"LOGITS": "*fp32", "KEYS": "*i64", "TEMPERATURE": "*fp32", "PART_VALUE": "*fp32", "V": "i32", "CHUNK": "i32"},
        [{"BLOCK": sampling_kernel.BLOCK_V, "LIBDEVICE": True}],
    ),
    "_first_best_kernel": ({"PART_VALUE": "*fp32", "OUT": "*i64"}, [{"BLOCK_C": 32}]),
}  # fmt: skip


def kernel(name: str):
    return getattr(triton_attention, name, None) or getattr(sampling_kernel, name)


def resources(name: str, variant: dict) -> dict:
    fn, (types, _) = kernel(name), SPECS[name]
    launch = {key: variant[key] for key in ("num_warps", "num_stages") if key in variant}
    constants = MODEL | {k: v for k, v in variant.items() if k not in launch}
    signature, constexprs = {}, {}
    for index, arg in enumerate(fn.arg_names):
        if index in fn.constexprs:
            signature[arg] = "constexpr"
            constexprs[(index,)] = constants[arg]
        else:
            signature[arg] = types.get(arg, "*i32" if arg.isupper() else "i32")
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32), options=launch)  # fmt: skip
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as cubin:
        cubin.write(compiled.asm["cubin"])
    try:
        usage = subprocess.run([tool, "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout  # fmt: skip
    finally:
        os.unlink(cubin.name)
    fields = dict(item.split(":") for item in next(line for line in usage.splitlines() if "REG:" in line).split())
    return {"kernel": name, "variant": variant, "registers": int(fields["REG"]), "spill_bytes": int(fields["STACK"]),
            "shared_bytes": compiled.metadata.shared}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out")
    parser.add_argument("--kernels", nargs="+", default=list(SPECS), choices=list(SPECS))
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("TRITON_INTERPRET=1 replaces the kernels by the interpreter: unset it")
    rows = []
    for name in args.kernels:
        for variant in SPECS[name][1]:
            rows.append(resources(name, variant))
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        result = {"triton": triton.__version__, "target": "sm_90", "kernels": rows}
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
