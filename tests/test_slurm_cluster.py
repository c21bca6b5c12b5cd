"""The SLURM paths against a real one-node cluster (`slurm/local_cluster.sh`): array shards, requeue, a
killed task resubmitted, the submitit launcher, and what a job's log says. Skipped, with the reason, where
the cluster cannot start (no root to install SLURM, no apt, daemons refused)."""

import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from conftest import ROOT, compose_config

from hogwild_bench.runner import run
from hogwild_bench.store import ResultStore, record_key

CPU_JOB = ["--sbatch=--gpus-per-task=0", "--sbatch=--mem=2G", "--sbatch=--cpus-per-task=1"]
SMALL = ["model=tiny_random_llama", "dataset=sample", "generation.finisher_max_tokens=4", "plot=false"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, HOGWILD_SLURM_DIR=str(state))
    started = subprocess.run(["bash", "slurm/local_cluster.sh", "start"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    if started.returncode != 0:
        pytest.skip(f"no local SLURM cluster: {started.stderr.strip()[-500:]}")
    env["SLURM_CONF"] = re.search(r"SLURM_CONF=(\S+)", started.stdout).group(1)
    env["HOGWILD_PYTHON"] = sys.executable
    yield env
    subprocess.run(["bash", "slurm/local_cluster.sh", "stop"], cwd=ROOT, env=env, timeout=120)
    assert not (state / "slurmctld.pid").exists(), "stop left the cluster's directory behind"


def sh(env, *command, check=True, timeout=120) -> subprocess.CompletedProcess:
    result = subprocess.run(list(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed: {result.stdout[-1500:]}\n{result.stderr[-1500:]}")
    return result


def submit(env, logs: Path, runs: Path, *overrides: str, shards: int = 1) -> str:
    out = sh(env, sys.executable, "slurm/submit.py", *overrides, "--shards", str(shards), "--runs", str(runs),
             *CPU_JOB, f"--sbatch=--output={logs}/%x-%A_%a.out")  # fmt: skip
    return re.search(r"Submitted batch job (\d+)", out.stdout).group(1)


def wait(env, job: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not sh(env, "squeue", "-h", "-j", job).stdout.strip():
            return
        time.sleep(1)
    raise AssertionError(f"job {job} still queued after {timeout} s: {sh(env, 'squeue').stdout}")


def wait_running_with_records(env, job: str, run_dir_glob: Path, timeout: float = 240) -> None:
    """Until the job runs and has stored at least one record (so a requeue or kill lands mid-run)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        files = list(run_dir_glob.parent.glob(f"{run_dir_glob.name}/records*.jsonl"))
        if files and any(f.stat().st_size > 0 for f in files):
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job} stored nothing in {timeout} s")


def stored(run_dir: Path) -> list[tuple]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a killed task may leave one truncated line: skipped, as designed
        return [record_key(r) for r in ResultStore(run_dir).records()]


def reference_keys(root: Path, *overrides: str) -> list[tuple]:
    return stored(run(compose_config([*overrides, f"store.root={root}", "progress=false", "plot=false"])))


def test_a_two_shard_demo_array_fills_one_run_directory_without_gaps_or_duplicates(cluster, tmp_path):
    small = ["+exp=demo_random", "dataset.limit=2", "generation.budgets=[8,16]"]
    job = submit(cluster, tmp_path, tmp_path / "runs", *small, shards=2)
    wait(cluster, job)
    (run_dir,) = (tmp_path / "runs").glob("demo_random-*")
    keys = stored(run_dir)
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(reference_keys(tmp_path / "ref", *small))
    assert {r["shard"] for r in ResultStore(run_dir).records()} == {"0/2", "1/2"}
    for task in (0, 1):  # each task's log names its shard, the run directory and the summary
        log = next(tmp_path.glob(f"*-{job}_{task}.out")).read_text()
        assert f"shard {task}/2" in log and f"results in {run_dir}" in log and "hogwild-w2-combined" in log


def test_a_task_requeued_then_killed_and_resubmitted_loses_or_repeats_nothing(cluster, tmp_path):
    """Both ways a task is interrupted, one after the other on one run (one cluster job's start-up, not two):
    SLURM requeues it (preemption), then it is killed outright and the user submits the same job again."""
    # one generation at a time: batched, all generations finish (and store) together, so a kill after the
    # first record would land after the last one
    overrides = [*SMALL, "dataset.limit=6", "generation.budgets=[16,128]", "grid.workers=[1,2]", "batch.enabled=false"]
    total = 6 * 2 * 2  # problems x worker counts x budgets
    job = submit(cluster, tmp_path, tmp_path / "runs", *overrides)
    wait_running_with_records(cluster, job, tmp_path / "runs" / "default-*")
    run_dir = next((tmp_path / "runs").glob("default-*"))
    sh(cluster, "scontrol", "requeue", f"{job}_0")
    time.sleep(1)  # a requeued job waits ~2 minutes for its begin time: let it start now
    sh(cluster, "scontrol", "update", f"JobId={job}_0", "StartTime=now", check=False)
    deadline, before = time.time() + 240, len(stored(run_dir))

    def ran_again() -> bool:  # the task's log is appended to: its second start, and it stored more
        log = next(tmp_path.glob(f"*-{job}_0.out"), None)
        starts = log.read_text().count("hogwild_bench shard 0/1") if log is not None else 0
        return starts == 2 and len(stored(run_dir)) > before

    while not ran_again():
        assert time.time() < deadline, f"the requeued task did not run again: {sh(cluster, 'squeue').stdout}"
        time.sleep(0.2)
    sh(cluster, "scancel", "--signal=KILL", "--full", job)  # the requeued task dies mid-run
    wait(cluster, job)
    assert 0 < len(stored(run_dir)) < total
    wait(cluster, submit(cluster, tmp_path, tmp_path / "runs", *overrides))
    keys = stored(run_dir)
    assert len(keys) == len(set(keys)) == total
    assert sorted(keys) == sorted(reference_keys(tmp_path / "ref", *overrides))


def test_the_submitit_launcher_runs_a_multirun_on_the_cluster(cluster, tmp_path):
    sh(cluster, sys.executable, "-m", "hogwild_bench", "-m", "hydra/launcher=slurm_cpu", "protocol.workers=1,2",
       *SMALL, "dataset.limit=2", "generation.budgets=[6,12]", f"store.root={tmp_path}", "progress=false",
       f"hydra.sweep.dir={tmp_path}/sweep", timeout=300)  # fmt: skip
    runs = sorted(p.name for p in tmp_path.glob("default-*"))
    assert [r.split("-hogwild-")[1] for r in runs] == ["w1-combined-s0", "w2-combined-s0"]
    assert all(len(stored(tmp_path / r)) == 4 for r in runs)


def test_a_job_with_a_bad_config_fails_with_the_config_error_in_its_log(cluster, tmp_path):
    out = sh(cluster, "sbatch", "--gpus-per-task=0", "--mem=1G", "--cpus-per-task=1", f"--output={tmp_path}/bad.out",
             "slurm/hogwild.sbatch", *SMALL, "generation.temperature=-1")  # fmt: skip
    job = re.search(r"Submitted batch job (\d+)", out.stdout).group(1)
    wait(cluster, job)
    state = sh(cluster, "scontrol", "show", "job", job).stdout
    assert "JobState=FAILED" in state and "ExitCode=0:0" not in state
    assert "generation.temperature must be >= 0" in (tmp_path / "bad.out").read_text()
