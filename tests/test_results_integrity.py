"""A record depends only on its inputs: changed settings, problems or prompts never reuse old records;
budgets, limit and grid extend a run instead."""

import json

import pytest
from conftest import compose_config, tiny_run_overrides

from hogwild_bench import versions
from hogwild_bench.config import ConfigError
from hogwild_bench.runner import run, run_dir_of
from hogwild_bench.store import ResultStore


def _local(tmp_path, rows):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"problem": p, "answer": a}) + "\n" for p, a in rows))
    return ["dataset=local", f"dataset.path={path}", "dataset.limit=null"]


def test_adding_a_budget_extends_the_run_and_runs_only_what_is_missing(tmp_path):
    base = tiny_run_overrides(tmp_path, "store.run_name=grow", "dataset.limit=2")
    run(compose_config(base))
    run_dir = run_dir_of(compose_config(base))
    before = ResultStore(run_dir).records()
    run(compose_config([*base, "generation.budgets=[6,12,18]"]))
    after = ResultStore(run_dir).records()
    assert after[: len(before)] == before, "earlier records are kept as they were"
    assert sorted(r["budget"] for r in after[len(before) :]) == [18, 18]


def test_an_edited_problem_is_run_again_and_an_inserted_row_is_run(tmp_path):
    rows = [("What is 1+1?", "2"), ("What is 2+2?", "4")]
    overrides = tiny_run_overrides(tmp_path, "store.run_name=edits", *_local(tmp_path, rows))
    run(compose_config(overrides))
    run_dir = run_dir_of(compose_config(overrides))
    first = {(r["problem"], r["budget"]) for r in ResultStore(run_dir).records()}
    _local(tmp_path, [("What is 3+3?", "6"), *rows])  # a row inserted at the top shifts every row index
    run(compose_config(overrides))
    records = ResultStore(run_dir).records()
    by_problem = {}
    for r in records[len(first) :]:
        by_problem.setdefault(r["problem"], []).append(r["budget"])
    # every shifted row has a new (id, text) pair: all three problems are run, none is counted twice
    assert sorted(by_problem) == ["What is 1+1?", "What is 2+2?", "What is 3+3?"]
    latest = {(r["problem_id"], r["problem_hash"], r["budget"]) for r in records[len(first) :]}
    assert len(latest) == 6


@pytest.mark.parametrize(
    "name,text",
    [("COLLAB_PROMPT", "Am I repeating someone? "), ("STEPS_NOTES", {True: "Labelled steps.", False: "No labels."})],
)
def test_a_changed_prompt_text_changes_every_key(tmp_path, monkeypatch, name, text):
    overrides = tiny_run_overrides(tmp_path, "store.run_name=prompts")
    cfg = compose_config(overrides)
    before = versions.settings_hash(cfg)
    monkeypatch.setattr(f"hogwild_bench.engine.prompts.{name}", text)
    versions.prompt_version.cache_clear()
    try:
        assert versions.settings_hash(cfg) != before
    finally:
        versions.prompt_version.cache_clear()


def test_force_writes_beside_old_records_without_mixing_them(tmp_path):
    base = tiny_run_overrides(tmp_path, "store.run_name=forced", "dataset.limit=1")
    run(compose_config(base))
    with pytest.raises(ConfigError):
        run(compose_config([*base, "generation.collab_interval=3"]))
    run(compose_config([*base, "generation.collab_interval=3", "store.force=true"]))
    records = ResultStore(run_dir_of(compose_config(base))).records()
    assert len({r["settings_hash"] for r in records}) == 2 and len(records) == 4


def test_records_carry_versions_and_the_problem_text(tmp_path):
    overrides = tiny_run_overrides(tmp_path, "store.run_name=versions", "dataset.limit=1")
    run(compose_config(overrides))
    (record,) = ResultStore(run_dir_of(compose_config(overrides))).records()[:1]
    assert record["prompt_version"] == versions.prompt_version() and record["prompt"] == "paper"
    assert record["code_version"].startswith("0.1.0") and record["code_version"].endswith(versions.source_hash())
    assert record["problem"] == "What is 17 + 25?" and len(record["problem_hash"]) == 16
    assert record["dataset_version"].startswith("sample:")


def test_the_source_hash_names_the_package_files_contents(tmp_path, monkeypatch):
    """The code version holds a hash of the package's source, which changes with any file's content."""
    package = tmp_path / "hogwild_bench"
    (package / "engine").mkdir(parents=True)
    (package / "versions.py").write_text("# a stand-in")
    (package / "engine" / "model.py").write_text("x = 1\n")
    monkeypatch.setattr(versions, "__file__", str(package / "versions.py"))
    versions.source_hash.cache_clear()
    try:
        before = versions.source_hash()
        (package / "engine" / "model.py").write_text("x = 2\n")
        versions.source_hash.cache_clear()
        assert versions.source_hash() != before and len(before) == 12
    finally:
        versions.source_hash.cache_clear()


def test_the_prompt_style_and_a_system_file_s_text_enter_the_key_but_not_the_file_s_path(tmp_path):
    base = tiny_run_overrides(tmp_path, "store.run_name=styles")
    ours, paper = (versions.settings_hash(compose_config([*base, f"prompt={name}"])) for name in ("ours", "paper"))
    assert ours != paper
    texts = {"a.txt": "Work together.", "b.txt": "Work together.", "c.txt": "Work alone."}
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    hashes = {name: versions.settings_hash(compose_config([*base, f"prompt.system_file={tmp_path / name}"]))
              for name in texts}  # fmt: skip
    assert hashes["a.txt"] == hashes["b.txt"] != hashes["c.txt"] and ours not in hashes.values()
