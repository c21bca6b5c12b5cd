"""Collaboration metrics per cell (`hogwild_bench.collaboration` defines them), beside accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

COLUMNS = ("redundancy", "answer_boxed_by", "answer_value_earlier_elsewhere", "collab_checks", "correct")


def _checks(series: pd.Series, answer: str | None, field: str) -> float:
    """Mean of ``field`` over every collaboration check of the cell answered ``answer`` (None: all)."""
    values = [
        c[field]
        for checks in series
        if isinstance(checks, list)
        for c in checks
        if (answer is None or c.get("answer") == answer) and c.get(field) is not None
    ]
    return sum(values) / len(values) if values else float("nan")


def collaboration(df: pd.DataFrame, by: Sequence[str] = ("protocol", "workers", "layout", "budget")) -> pd.DataFrame:
    """One row per ``by`` cell: n, accuracy, mean redundancy, who boxed the final answer (share by a worker,
    by the finisher only), share where another worker had the value first, collaboration checks (count,
    share answered yes, redundancy of the step after a yes / a no), mean written tokens per worker."""
    keys = list(by)
    missing = [k for k in [*keys, *COLUMNS] if k not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the records (runs from before collaboration metrics?); "
                       f"available: {sorted(df.columns)}")  # fmt: skip
    rows = []
    for key, cell in df.groupby(keys, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        boxed = cell["answer_boxed_by"]
        checks = cell["collab_checks"]
        answered = [c.get("answer") for cs in checks if isinstance(cs, list) for c in cs]
        written = cell.get("worker_written_tokens", pd.Series(dtype=object))
        rows.append({
            **dict(zip(keys, key)),
            "n": len(cell),
            "accuracy": cell["correct"].astype(bool).mean(),
            "redundancy": pd.to_numeric(cell["redundancy"], errors="coerce").mean(),
            "answer_by_a_worker": (boxed.notna() & (boxed != -1)).mean(),
            "answer_by_finisher_only": (boxed == -1).mean(),
            "answer_value_earlier_elsewhere": cell["answer_value_earlier_elsewhere"].eq(True).mean(),
            "collab_checks": len(answered),
            "collab_yes_rate": answered.count("yes") / max(1, answered.count("yes") + answered.count("no"))
            if answered else float("nan"),
            "redundancy_after_yes": _checks(checks, "yes", "redundancy_after"),
            "redundancy_after_no": _checks(checks, "no", "redundancy_after"),
            "redundancy_before_yes": _checks(checks, "yes", "redundancy_before"),
            "mean_written_tokens_per_worker": pd.Series(
                [sum(w) / len(w) for w in written if isinstance(w, list) and w], dtype=float
            ).mean(),
        })  # fmt: skip
    return pd.DataFrame(rows)
