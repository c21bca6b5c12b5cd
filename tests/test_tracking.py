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


@pytest.mark.parametrize(
    "env,setting,expected",
    [
        ({"WANDB_MODE": "disabled", "WANDB_API_KEY": "k"}, None, "disabled"),  # the user's own switch wins
        ({"WANDB_API_KEY": "k"}, None, "online"),
        ({}, None, "offline"),
        ({"WANDB_MODE": "disabled"}, "offline", "offline"),  # an explicit logger.mode wins over the environment
    ],
)
def test_wandb_mode_respects_the_users_environment(monkeypatch, tmp_path, env, setting, expected):
    import wandb

    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        raise ConnectionError("stop here")

    monkeypatch.setattr(wandb, "init", fake_init)
    overrides = ["logger=wandb", "logger.init_timeout_seconds=7", *([f"logger.mode={setting}"] if setting else [])]
    with pytest.warns(UserWarning, match="W&B init failed"):
        run(compose_config(tiny_run_overrides(tmp_path, *overrides, "dataset.limit=1")))
    assert seen["mode"] == expected
    assert seen["settings"].init_timeout == 7  # an unreachable server costs a job 7 s, not W&B's default 90


def test_bad_wandb_settings_are_config_errors():
    from hogwild_bench.config import ConfigError, validate

    with pytest.raises(ConfigError, match="logger.mode='onlien' is not valid; choose one of: online, offline"):
        validate(compose_config(["logger.mode=onlien"]))
    with pytest.raises(ConfigError, match="logger.init_timeout_seconds must be > 0"):
        validate(compose_config(["logger.init_timeout_seconds=0"]))
