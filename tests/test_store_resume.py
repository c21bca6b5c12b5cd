"""Store and resume: crash-safe appends, no lost or duplicated records, failures recorded and retried."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, compose_config, tiny_run_overrides

from hogwild_bench.config import ConfigError
from hogwild_bench.protocols.hogwild import HogwildProtocol
from hogwild_bench.runner import run, run_dir_of
from hogwild_bench.store import ResultStore, record_key, shard_lock

REQUIRED_FIELDS = {
    "run_id", "model", "dataset", "problem_id", "protocol", "layout", "workers", "seed", "budget",
    "tokens_per_worker", "total_tokens", "wall_seconds", "response", "extracted_answer", "gold_answer",
    "correct", "finished_early",
}  # fmt: skip


def test_truncated_last_line_is_skipped_and_next_append_starts_clean(tmp_path):
    store = ResultStore(tmp_path)
    store.append([{"problem_id": "a", "protocol": "p", "layout": "l", "workers": 1, "seed": 0, "budget": 1,
                   "status": "ok"}])  # fmt: skip
    with open(store.path, "ab") as handle:
        handle.write(b'{"problem_id": "b", "protoc')  # a kill -9 in the middle of a write
    with pytest.warns(UserWarning, match="truncated"):
        assert [r["problem_id"] for r in store.records()] == ["a"]
    store.append([{"problem_id": "c", "protocol": "p", "layout": "l", "workers": 1, "seed": 0, "budget": 1,
                   "status": "ok"}])  # fmt: skip
    with pytest.warns(UserWarning):
        assert [r["problem_id"] for r in store.records()] == ["a", "c"]


def test_run_writes_records_with_the_schema_and_resumes_without_duplicates(tmp_path):
    cfg = compose_config(tiny_run_overrides(tmp_path, "grid.workers=[1,2]", "grid.layouts=[combined,interleaved]"))
    run_dir = run(cfg)
    records = ResultStore(run_dir).records()
    assert len(records) == 3 * 4 * 2  # problems x grid points x budgets
    assert REQUIRED_FIELDS <= set(records[0])
    assert (run_dir / "config.yaml").exists()
    mtime = os.path.getmtime(records_file := next(run_dir.glob("records*.jsonl")))
    run(cfg)  # everything is stored: nothing to do
    assert os.path.getmtime(records_file) == mtime
    assert len(ResultStore(run_dir).records()) == len(records)


def test_lost_records_are_recomputed_and_only_they(tmp_path):
    cfg = compose_config(tiny_run_overrides(tmp_path))
    run_dir = run(cfg)
    path = next(run_dir.glob("records*.jsonl"))
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:25])  # lose 2 records, truncate a third
    with pytest.warns(UserWarning, match="truncated"):
        run(cfg)
    with pytest.warns(UserWarning, match="truncated"):
        records = ResultStore(run_dir).records()
    keys = [record_key(r) for r in records]
    assert len(keys) == len(set(keys)) == len(lines)


def test_a_failing_problem_is_recorded_and_the_run_goes_on_then_retried(tmp_path, monkeypatch):
    cfg = compose_config(tiny_run_overrides(tmp_path))
    original = HogwildProtocol.job

    def flaky(self, problem, point):
        job = original(self, problem, point)
        if "17 + 25" not in problem:
            return job

        def start(cache):  # dies after a few forwards, while batched with the other problems
            steps = job.start(cache)
            logits = None
            for _ in range(4):
                logits = yield steps.send(logits)
            raise RuntimeError("CUDA out of memory (simulated)")

        return dataclasses.replace(job, start=start)

    monkeypatch.setattr(HogwildProtocol, "job", flaky)
    run_dir = run(cfg)
    records = ResultStore(run_dir).records()
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 2 and "out of memory" in failed[0]["error"]
    assert sum(r["status"] == "ok" for r in records) == 4
    monkeypatch.setattr(HogwildProtocol, "job", original)
    run(cfg)
    from hogwild_bench.analysis import load_runs

    df = load_runs(run_dir)
    assert len(df) == 6 and (df["status"] == "ok").all()


def test_same_run_dir_with_different_settings_is_refused_naming_only_the_changed_keys(tmp_path):
    run(compose_config(tiny_run_overrides(tmp_path, "store.run_name=fixed")))
    changed = ["store.run_name=fixed", "generation.temperature=0.7", "protocol.gate_min_tokens=5"]
    with pytest.raises(ConfigError, match="holds results of different settings") as refused:
        run(compose_config(tiny_run_overrides(tmp_path, *changed)))
    listed = [line.strip() for line in str(refused.value).splitlines() if ": stored " in line]
    assert listed == ["generation.temperature: stored 0.0, now 0.7", "protocol.gate_min_tokens: stored 16, now 5"]
    assert "store.force=true" in str(refused.value)


def test_kill_9_mid_run_then_rerun_completes_without_loss_or_duplicates(tmp_path):
    # one generation at a time, so records land one by one (batched, they would all land together)
    overrides = tiny_run_overrides(tmp_path, "dataset.limit=8", "generation.budgets=[8,24]", "batch.enabled=false")
    command = [sys.executable, "-m", "hogwild_bench", *overrides]
    run_dir = run_dir_of(compose_config(overrides))
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        files = list(run_dir.glob("records*.jsonl")) if run_dir.exists() else []
        if files and len(files[0].read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = len(ResultStore(run_dir).records())
    assert 0 < partial < 16, "the kill should land mid-run"
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    records = ResultStore(run_dir).records()
    keys = [record_key(r) for r in records]
    assert len(keys) == len(set(keys)) == 16
    assert all(r["status"] == "ok" for r in records)


def test_a_shard_already_running_is_refused_with_who_holds_it_and_runs_once_released(tmp_path):
    overrides = tiny_run_overrides(tmp_path, "dataset.limit=1")
    run_dir = run_dir_of(compose_config(overrides))
    command = [sys.executable, "-m", "hogwild_bench", *overrides]
    with shard_lock(run_dir, 0, 1):  # this test process plays the first launch of the shard
        second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert second.returncode == 2
        assert f"shard 0/1 of {run_dir} is being run by pid {os.getpid()}" in second.stderr
        assert "Traceback" not in second.stderr
        assert not list(run_dir.glob("records*.jsonl")), "the refused process wrote nothing"
        other_shard = tiny_run_overrides(tmp_path, "dataset.limit=1", "shard.index=1", "shard.count=2")
        run(compose_config(other_shard))  # another shard of the same directory is not blocked
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    assert len(ResultStore(run_dir).records()) == 2
