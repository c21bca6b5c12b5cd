"""Loading stored records from any number of run directories into one DataFrame."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from hogwild_bench.store import iter_records, record_key


def _run_dirs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    found: list[Path] = []
    for item in items:
        matches = sorted(glob.glob(str(item))) or [str(item)]
        for match in matches:
            path = Path(match)
            if path.is_file():
                found.append(path.parent)
            elif (path / "config.yaml").exists() or list(path.glob("records*.jsonl")):
                found.append(path)
            elif path.is_dir():
                found.extend(sorted({p.parent for p in path.rglob("records*.jsonl")}))
    if not found:
        raise FileNotFoundError(f"no run directories (with records*.jsonl) found for {items}")
    return sorted(set(found))


def load_runs(paths: str | Path | Iterable[str | Path], include_failed: bool = False) -> pd.DataFrame:
    """All records of the runs under ``paths`` (directories, files or glob patterns), one row each.

    A record stored as failed and later retried successfully appears once, as ok. ``include_failed``
    keeps the failures that were never fixed (``status == "failed"``)."""
    rows = []
    for run_dir in _run_dirs(paths):
        for record in iter_records(sorted(run_dir.glob("records*.jsonl"))):
            record["run_dir"] = str(run_dir)
            rows.append(record)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_key"] = [record_key(r) + (d,) for r, d in zip(rows, df["run_dir"])]
    df["_ok"] = df["status"] == "ok"
    # per key: the ok record if any, else the latest failure
    df = df.sort_values(["_ok", "timestamp"]).drop_duplicates("_key", keep="last")
    if not include_failed:
        df = df[df["_ok"]]
    return df.drop(columns=["_key", "_ok"]).reset_index(drop=True)
