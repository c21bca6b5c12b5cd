"""Result store: one run directory, the resolved config, and append-only JSON-lines records.

Each shard appends to its own ``records.shard<i>of<n>.jsonl``; every record is one line, flushed and
fsynced before the next, so a kill -9 leaves at most one truncated last line, which readers skip and the
next writer terminates before appending. Resume reads every records file in the directory. A record's key
holds its problem's content hash and the run's settings hash (`hogwild_bench.versions`); ``settings.json``
beside the records holds the settings, and a run directory refuses a config whose settings differ
(naming the keys), unless ``store.force``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from hogwild_bench.config import ConfigError
from hogwild_bench.versions import differing_keys, result_settings, settings_hash


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
    return (record["problem_id"], record.get("problem_hash"), record["protocol"], record["layout"], record["workers"],
            record["seed"], record["budget"], record.get("settings_hash"))  # fmt: skip


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

    def save_config(self, cfg, force: bool = False) -> None:
        """Write ``config.yaml`` and ``settings.json``; refuse a run directory holding results of different
        settings (budgets, limit and grid may change: the run is extended)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        settings = result_settings(cfg)
        target = self.run_dir / "settings.json"
        if target.exists():
            old = json.loads(target.read_text())
            diffs = differing_keys(old, settings)
            if diffs and not force:
                raise ConfigError(
                    f"run directory {self.run_dir} holds results of different settings:\n  "
                    + "\n  ".join(diffs)
                    + "\nstart a new run (another store.run_name or store.root), or pass store.force=true to add "
                    "these results beside the old ones (records are keyed by settings, so they never mix)"
                )
            if diffs:
                target = self.run_dir / f"settings.{settings_hash(cfg)}.json"
        container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
        _write_atomic(self.run_dir / "config.yaml", OmegaConf.to_yaml(container))  # the latest invocation's
        if not target.exists():
            _write_atomic(target, json.dumps(settings, indent=1, sort_keys=True))

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


class ShardBusyError(RuntimeError):
    """Another live process is running the same shard into the same run directory."""


@contextmanager
def shard_lock(run_dir: Path, shard_index: int, shard_count: int) -> Iterator[None]:
    """Hold ``.lock.shard<i>of<n>`` for the whole run: a second process on the same shard (the same sbatch
    submitted twice, a forgotten terminal) would otherwise generate and store every record twice. The lock is
    the kernel's (``flock``): a killed process drops it at once, so resuming after kill -9 never waits."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f".lock.shard{shard_index}of{shard_count}"
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ShardBusyError(
                f"shard {shard_index}/{shard_count} of {run_dir} is being run by {holder} (lock {path}); "
                "wait for it to finish or stop it, then run the same command to resume"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: shards starting together don't race
    tmp.write_text(text)
    os.replace(tmp, path)
