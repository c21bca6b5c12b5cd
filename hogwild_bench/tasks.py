"""Math problem sets: a registry-free loader driven by `DatasetConfig` (hub, local file, shipped sample).

Every row becomes a `Problem` with a string id, problem text and gold answer; a row that lacks a field
fails with the row index, the missing field and the fields the row does have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hogwild_bench.config import DatasetConfig

SAMPLE_FILE = Path(__file__).parent / "data" / "sample_math.jsonl"
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DatasetError(ValueError):
    """A dataset could not be loaded or one of its rows is malformed."""


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str


def _rows(cfg: DatasetConfig) -> list[dict]:
    if cfg.source == "sample":
        return [json.loads(line) for line in SAMPLE_FILE.read_text().splitlines() if line.strip()]
    import datasets

    if cfg.source == "local":
        path = Path(cfg.path)
        if not path.exists():
            raise DatasetError(f"dataset {cfg.name!r}: file {path} does not exist")
        if path.suffix not in LOCAL_FORMATS:
            raise DatasetError(
                f"dataset {cfg.name!r}: cannot read {path.name}; supported file types: {', '.join(LOCAL_FORMATS)}"
            )
        loaded = datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
    else:
        try:
            loaded = datasets.load_dataset(cfg.hf_id, cfg.subset, split=cfg.split)
        except Exception as error:  # the hub raises many types; all mean "not available here"
            raise DatasetError(
                f"dataset {cfg.name!r}: could not load {cfg.hf_id!r} (subset={cfg.subset}, split={cfg.split}) from "
                f"the Hugging Face hub: {error}. Offline machines need HF_DATASETS_OFFLINE=1 and a cached copy, or "
                "use dataset=local with dataset.path"
            ) from error
    return [dict(row) for row in loaded]


def _gold(raw: object, answer_format: str) -> str:
    text = str(raw).strip()
    if answer_format == "gsm8k":
        if "####" not in text:
            raise DatasetError("gsm8k answer has no '####' marker")
        text = text.split("####")[-1].strip().replace(",", "")
    return text


def load_problems(cfg: DatasetConfig) -> list[Problem]:
    """All problems of the dataset (first ``cfg.limit`` if set), with unique string ids."""
    problems: list[Problem] = []
    for index, row in enumerate(_rows(cfg)):
        for needed in (cfg.problem_field, cfg.answer_field, cfg.id_field):
            if needed is not None and row.get(needed) is None:  # file loaders fill absent fields with None
                present = sorted(k for k, v in row.items() if v is not None)
                raise DatasetError(
                    f"dataset {cfg.name!r}, row {index}: no field {needed!r}; the row has {present}. "
                    f"Map fields with dataset.problem_field / dataset.answer_field / dataset.id_field"
                )
        text = str(row[cfg.problem_field]).strip()
        if not text:
            raise DatasetError(f"dataset {cfg.name!r}, row {index}: empty {cfg.problem_field!r}")
        try:
            gold = _gold(row[cfg.answer_field], cfg.answer_format)
        except DatasetError as error:
            raise DatasetError(f"dataset {cfg.name!r}, row {index}: {error}") from None
        problem_id = str(row[cfg.id_field]) if cfg.id_field else f"{cfg.name}-{index}"
        problems.append(Problem(id=problem_id, problem=text, answer=gold))
        if cfg.limit is not None and len(problems) >= cfg.limit:
            break
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise DatasetError(f"dataset {cfg.name!r}: duplicate problem id {p.id!r} (check dataset.id_field)")
        seen.add(p.id)
    if not problems:
        raise DatasetError(f"dataset {cfg.name!r} has no problems")
    return problems


def shard(problems: list[Problem], index: int, count: int) -> list[Problem]:
    """Round-robin shard ``index`` of ``count``: shards are disjoint and together cover every problem."""
    return problems[index::count]
