"""Every Triton kernel of the engine compiles for Hopper (sm_90), on a machine without a GPU.

The other CPU tests run the kernels in Triton's interpreter, which executes their Python and accepts code the
compiler rejects; GPU time is scarce. Compiling ahead of time needs only the ptxas that ships with Triton
(`experiments/kernel_resources.py`, in a process of its own: the interpreter, which this suite turns on,
replaces the kernels)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

ROOT = Path(__file__).resolve().parent.parent
SHARED_PER_BLOCK = 227 * 1024  # an H100's most shared memory for one program
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@pytest.mark.skipif(not (TOOLS / "ptxas").exists() or not (TOOLS / "cuobjdump").exists(),
                    reason="this Triton has no bundled CUDA toolchain")  # fmt: skip
def test_every_kernel_compiles_for_hopper_within_one_sms_resources():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "kernel_resources.py")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    compiled = {row["kernel"] for row in rows}
    assert compiled == {"_block_attention_kernel", "_merge_kernel", "_append_kernel", "_shift_append_kernel",
                        "_gumbel_argmax_kernel", "_first_best_kernel"}  # fmt: skip
    for row in rows:
        assert row["shared_bytes"] <= SHARED_PER_BLOCK, row
    # the batched decode tile (one query row per entry and head, 16 rows): spills there are read every key tile
    decode = next(r for r in rows if r["kernel"] == "_block_attention_kernel" and r["variant"]["BLOCK_M"] == 16)
    assert decode["spill_bytes"] == 0, decode
