"""SLURM helpers, tested without SLURM: the printed sbatch commands, and one array task run locally."""

import os
import subprocess
import sys

from conftest import ROOT, tiny_run_overrides

from hogwild_bench.analysis import load_runs


def submit(*args):
    return subprocess.run([sys.executable, "slurm/submit.py", *args], cwd=ROOT, capture_output=True, text=True)


def test_dry_run_prints_one_array_per_swept_model():
    result = submit("+exp=limo_sweep", "--shards", "8", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 7
    assert all(line.startswith("sbatch --array=0-7 ") and "slurm/hogwild.sbatch +exp=limo_sweep model=" in line
               for line in lines)  # fmt: skip
    assert "HOGWILD_SHARDS=8" in lines[0]


def test_pinned_model_gives_one_command_and_bad_overrides_fail_before_submitting():
    one = submit("+exp=limo_sweep", "model=qwen3_8b", "--shards", "2", "--partition", "gpu", "--dry-run")
    assert (
        len(one.stdout.strip().splitlines()) == 1 and "--partition=gpu" in one.stdout and "model=qwen3_8b" in one.stdout
    )
    bad = submit("+exp=limo_sweep", "model=nope", "--dry-run")
    assert bad.returncode != 0 and "sbatch" not in bad.stdout


def test_sbatch_script_runs_its_shard_locally(tmp_path):
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="1", HOGWILD_SHARDS="2", HOGWILD_RUNS=str(tmp_path),
               HOGWILD_PYTHON=sys.executable, SLURM_SUBMIT_DIR=str(ROOT))  # fmt: skip
    overrides = [o for o in tiny_run_overrides(tmp_path, "dataset.limit=4") if not o.startswith("store.root")]
    result = subprocess.run(["bash", "slurm/hogwild.sbatch", *overrides], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    df = load_runs(str(tmp_path / "*"))
    assert set(df["shard"]) == {"1/2"} and df["problem_id"].nunique() == 2
