"""Result store: one run directory, the resolved config, and append-only JSON-lines records.

Each shard appends to its own ``records.shard<i>of<n>.jsonl``; every record is one line, flushed and
fsynced before the next, so a kill -9 leaves at most one truncated last line, which readers skip and the
next writer terminates before appending. Resume reads every records file in the directory.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from omegaconf import OmegaConf

from hogwild_bench.config import ConfigError

RESULT_KEYS = ("model", "dataset", "generation", "scoring")  # config parts that change results
IGNORED_DATASET_KEYS = ("limit",)


def iter_records(paths: Iterable[Path]) -> Iterator[dict]:
    """Records from JSON-lines files, skipping lines a crash left truncated."""
    for path in paths:
        bad = 0
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
        if bad:
            warnings.warn(f"{path}: skipped {bad} truncated line(s)", stacklevel=2)


def record_key(record: dict) -> tuple:
    return (record["problem_id"], record["protocol"], record["layout"], record["workers"], record["seed"],
            record["budget"])  # fmt: skip


class ResultStore:
    def __init__(self, run_dir: str | Path, shard_index: int = 0, shard_count: int = 1):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / f"records.shard{shard_index}of{shard_count}.jsonl"

    def record_files(self) -> list[Path]:
        return sorted(self.run_dir.glob("records*.jsonl"))

    def records(self) -> list[dict]:
        return list(iter_records(self.record_files()))

    def completed(self) -> set[tuple]:
        """Keys of records stored as ok (failed ones are retried)."""
        return {record_key(r) for r in self.records() if r.get("status") == "ok"}

    def failed(self) -> set[tuple]:
        return {record_key(r) for r in self.records() if r.get("status") == "failed"}

    def save_config(self, cfg) -> None:
        """Write ``config.yaml``; refuse a run directory holding results of a different config."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        target = self.run_dir / "config.yaml"
        container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
        if target.exists():
            old = OmegaConf.to_container(OmegaConf.load(target), resolve=True)
            diffs = [
                f"{key}: stored {old.get(key)} != now {container.get(key)}"
                for key in RESULT_KEYS
                if _strip(key, old.get(key)) != _strip(key, container.get(key))
            ]
            if diffs:
                raise ConfigError(
                    f"run directory {self.run_dir} holds results of a different config:\n  "
                    + "\n  ".join(diffs)
                    + "\nchoose another store.run_name (or store.root) for this config"
                )
            return
        tmp = target.with_suffix(".yaml.tmp")
        tmp.write_text(OmegaConf.to_yaml(container))
        os.replace(tmp, target)

    def append(self, records: Iterable[dict]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # a crash cut the last line: close it off, readers skip it
                    handle.write(b"\n")
            for record in records:
                handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())


def _strip(key: str, value):
    if key == "dataset" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in IGNORED_DATASET_KEYS}
    return value
