"""W&B logging: offline without an API key; an unreachable or broken W&B never stops a run."""

import pytest
from conftest import compose_config, tiny_run_overrides

from hogwild_bench.analysis import load_runs
from hogwild_bench.runner import run


def test_wandb_offline_run_logs_curves(tmp_path, monkeypatch, recwarn):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = run(compose_config(tiny_run_overrides(tmp_path, "logger=wandb", "dataset.limit=1")))
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline, "an offline W&B run directory is written when no API key is set"
    assert len(load_runs(run_dir)) == 2
    assert not [w for w in recwarn if "W&B" in str(w.message)], "every W&B call (curves, chart, table) succeeded"


def test_wandb_failure_does_not_stop_the_run(tmp_path, monkeypatch):
    import wandb

    def unreachable(**kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", unreachable)
    with pytest.warns(UserWarning, match="W&B init failed"):
        run_dir = run(compose_config(tiny_run_overrides(tmp_path, "logger=wandb", "logger.mode=online")))
    assert len(load_runs(run_dir)) == 3 * 2
