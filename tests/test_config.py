"""Config composition and validation: every mistake fails before a model loads, naming the problem."""

import subprocess
import sys

import pytest
from conftest import ROOT, compose_config
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ConfigKeyError, ValidationError

from hogwild_bench.config import ConfigError, validate


def test_default_and_experiment_configs_compose_and_validate():
    for overrides in (
        [],
        ["+exp=demo"],
        ["+exp=demo_random"],
        ["+exp=limo_sweep"],
        ["protocol=single"],
        ["model=qwen3_8b", "dataset=gsm8k"],
    ):
        validate(compose_config(overrides))


def test_limo_sweep_is_the_full_grid():
    cfg = compose_config(["+exp=limo_sweep"], hydra_config=True)
    assert list(cfg.grid.workers) == [1, 2, 4]
    assert [str(x) for x in cfg.grid.layouts] == ["combined", "contiguous", "interleaved"]
    assert list(cfg.generation.budgets) == [1024, 2048, 4096, 8192, 16384]
    assert cfg.dataset.hf_id == "GAIR/LIMO"
    models = cfg.hydra.sweeper.params.model.split(",")
    assert {"qwq_32b", "qwen3_8b", "qwen3_14b", "qwen3_32b", "r1_distill_qwen_7b", "llama31_8b_instruct"} <= set(models)


def test_cfg_job_prints_the_sweep():
    out = subprocess.run(
        [sys.executable, "-m", "hogwild_bench", "+exp=limo_sweep", "--cfg", "job"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for needle in ("exp_name: limo_sweep", "- 16384", "- interleaved", "hf_id: Qwen/QwQ-32B"):
        assert needle in out


def test_unknown_group_choice_lists_the_valid_options():
    with pytest.raises(MissingConfigException) as error:
        compose_config(["layout=diagonal"])
    assert "combined" in str(error.value) and "interleaved" in str(error.value)


def test_unknown_key_is_named():
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(["generation.tempreature=0.5"])
    assert "tempreature" in str(error.value.__cause__ or error.value)


def test_bad_enum_value_lists_the_valid_ones():
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(["layout.name=diagonal"])
    cause = error.value.__cause__
    assert isinstance(cause, (ValidationError, ConfigKeyError))
    assert "combined, contiguous, interleaved" in str(cause)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["generation.budgets=[0,128]"], "generation.budgets must be positive"),
        (["protocol=single", "protocol.workers=2"], "protocol=single runs one worker"),
        (["shard.index=4", "shard.count=4"], "shard.index must be in [0, shard.count=4)"),
        (
            ["model.tiny_family=gpt"],
            "model.tiny_family='gpt' is not valid; choose one of: llama, qwen2, qwen3, mistral",
        ),
        (["dataset=local"], "needs dataset.path"),
        (["generation.top_p=0"], "generation.top_p must be in (0, 1]"),
        (["protocol.workers=0"], "workers must be between 1 and 12"),
        (["generation.finisher_max_tokens=-3"], "generation.finisher_max_tokens must be >= 1, got -3"),
        (["scoring.timeout_seconds=-1"], "scoring.timeout_seconds must be >= 1, got -1"),
        (["dataset=gsm8k", "dataset.levels=[1]"], "dataset.levels needs dataset.level_field"),
        (["model.hf_id=x"], "set exactly one weight source of model.hf_id, model.tiny_family or model.registry"),
        (["prompt.name=mine"], "prompt.name='mine' is not valid; choose one of: ours, paper"),
        (["prompt.system_file=/no/such/prompt.txt"], "prompt.system_file='/no/such/prompt.txt' is not a file"),
    ],
)
def test_validation_names_the_key_and_the_valid_range(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(overrides))
    assert message in str(error.value)


def test_validation_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as error:
        validate(compose_config(["generation.budgets=[-1]", "generation.temperature=-1"]))
    assert "budgets" in str(error.value) and "temperature" in str(error.value)


def test_batch_settings_out_of_range_are_named():
    with pytest.raises(ConfigError) as error:
        bad = ["batch.cpu_threads=-2", "batch.kv_memory_fraction=1.5", "batch.insert_wait_rounds=-1", "batch.lanes=-1",
               "batch.compile_dynamic=true", "batch.compile_buckets=true"]  # fmt: skip
        validate(compose_config(bad))
    message = str(error.value)
    assert "batch.cpu_threads must be 0" in message and "batch.kv_memory_fraction" in message
    assert "batch.insert_wait_rounds must be >= 0" in message
    assert "batch.lanes must be a number of lanes >= 1, or 0 (auto), got -1" in message
    assert "batch.compile_dynamic and batch.compile_buckets" in message and "at most one" in message
    with pytest.raises(ConfigError, match="batch.window must be a number of decode steps >= 1"):
        validate(compose_config(["batch.window=0"]))
    with pytest.raises(ConfigError, match="batch.window > 1 and batch.overlap=true .* choose one"):
        validate(compose_config(["batch.window=8", "batch.overlap=true"]))


def test_cli_reports_config_errors_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hogwild_bench", "generation.budgets=[0]", f"store.root={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "generation.budgets must be positive" in result.stderr and "Traceback" not in result.stderr
    written = [p.name for p in tmp_path.iterdir() if p.name != ".hydra"]  # hydra's own job logs only
    assert written == [], "no run directory is created for an invalid config"


@pytest.mark.parametrize(
    "command,message",
    [
        (["-m", "hogwild_bench", "model=model_schema"], "model=model_schema is the schema of the model configs"),
        (["-m", "hogwild_bench", "layout=layout_schema"], "choose one of: combined, contiguous, interleaved"),
        (["slurm/submit.py", "--dry-run", "generation.temperature=-1"], "generation.temperature must be >= 0"),
        (["slurm/submit.py", "--dry-run", "nosuchkey=3"], "Could not override 'nosuchkey'"),
        (["slurm/submit.py", "--dry-run", "model=model_schema"], "choose one of: llama31_8b_instruct"),
    ],
)
def test_bad_inputs_are_one_message_and_exit_2(tmp_path, command, message):
    result = subprocess.run([sys.executable, *command, f"store.root={tmp_path}"], cwd=ROOT, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_submitit_launcher_config_composes():
    cfg = compose_config(["+exp=limo_sweep", "hydra/launcher=slurm_gpu"], hydra_config=True)
    assert cfg.hydra.launcher.gpus_per_node == 1
    assert "submitit" in cfg.hydra.launcher._target_


def test_triton_attention_on_a_machine_without_cuda_is_refused_before_any_work(tmp_path, monkeypatch):
    import torch

    from hogwild_bench.runner import run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="model.attention=triton needs a CUDA GPU"):
        run(compose_config(["model.attention=triton", f"store.root={tmp_path}"]))
    assert not any(tmp_path.iterdir()), "nothing is written"


def test_the_run_directory_is_named_after_the_grid_that_runs_not_the_setting_it_replaces():
    from hogwild_bench.runner import grid_points, run_dir_of

    cfg = compose_config(["grid.workers=[1,4]", "grid.layouts=[combined,interleaved]", "protocol.workers=2"])
    assert run_dir_of(validate(cfg)).name == "default-tiny_random_llama-sample-hogwild-w1+4-combined+interleaved-s0"
    assert {p.workers for p in grid_points(validate(cfg))} == {1, 4}
    plain = compose_config(["protocol.workers=3", "layout=contiguous"])
    assert run_dir_of(validate(plain)).name == "default-tiny_random_llama-sample-hogwild-w3-contiguous-s0"


def test_every_prompt_config_names_a_prompt_style_of_the_engine():
    from hogwild_bench.engine.prompts import PROMPT_STYLES

    configs = sorted(p.stem for p in (ROOT / "hogwild_bench" / "conf" / "prompt").glob("*.yaml"))
    assert configs == sorted(PROMPT_STYLES)
    for name in configs:
        assert validate(compose_config([f"prompt={name}"])).prompt.name == name
