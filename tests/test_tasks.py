"""Dataset loading: shipped sample, local files with field mapping, malformed rows, sharding."""

import json

import pytest

from hogwild_bench.config import DatasetConfig
from hogwild_bench.tasks import DatasetError, load_problems, shard


def test_shipped_sample_loads_with_ids():
    problems = load_problems(DatasetConfig(name="sample", source="sample", id_field="id"))
    assert len(problems) == 24 and problems[0].id == "sample-000" and problems[0].answer == "42"


def test_local_jsonl_with_field_mapping_and_limit(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps({"q": f"What is {i}+{i}?", "a": str(2 * i)}) for i in range(5)))
    cfg = DatasetConfig(name="mine", source="local", path=str(path), problem_field="q", answer_field="a", limit=3)
    problems = load_problems(cfg)
    assert [p.id for p in problems] == ["mine-0", "mine-1", "mine-2"] and problems[2].answer == "4"


def test_local_parquet(tmp_path):
    import pandas as pd

    path = tmp_path / "p.parquet"
    pd.DataFrame({"problem": ["1+1?"], "answer": [2]}).to_parquet(path)
    assert load_problems(DatasetConfig(name="p", source="local", path=str(path)))[0].answer == "2"


def test_gsm8k_answers_are_taken_after_the_marker(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "so 1,000 + 24\n#### 1,024"}))
    cfg = DatasetConfig(name="g", source="local", path=str(path), problem_field="question", answer_format="gsm8k")
    assert load_problems(cfg)[0].answer == "1024"


def test_missing_field_names_row_field_and_available_fields(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "ok", "answer": "1"}) + "\n" + json.dumps({"problem": "no answer"}))
    with pytest.raises(DatasetError, match=r"row 1: no field 'answer'; the row has \['problem'\]"):
        load_problems(DatasetConfig(name="bad", source="local", path=str(path)))


def test_a_malformed_jsonl_line_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"problem": "ok", "answer": "1"}) + "\n\n" + '{"problem": "cut off", "ans')
    with pytest.raises(DatasetError, match=rf"{path}:3 is not valid JSON"):
        load_problems(DatasetConfig(name="broken", source="local", path=str(path)))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_an_empty_file_says_so(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_text("")
    with pytest.raises(DatasetError, match="holds no rows|could not read"):
        load_problems(DatasetConfig(name="empty", source="local", path=str(path)))


def test_unsupported_file_type_lists_supported_ones(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("problem,answer\n")
    with pytest.raises(DatasetError, match=r"supported file types: \.jsonl, \.json, \.parquet"):
        load_problems(DatasetConfig(name="csv", source="local", path=str(path)))


def test_hub_failure_is_a_clear_error(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # read at import time: set them where the libraries look, so the test never waits on a network timeout
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError, match="could not load 'GAIR/LIMO'"):
        load_problems(DatasetConfig(name="limo", source="hf", hf_id="GAIR/LIMO", split="train"))


def test_shards_are_disjoint_and_cover_everything():
    problems = load_problems(DatasetConfig(name="sample", source="sample", id_field="id"))
    parts = [shard(problems, i, 5) for i in range(5)]
    ids = [p.id for part in parts for p in part]
    assert sorted(ids) == sorted(p.id for p in problems) and len(ids) == len(set(ids))
