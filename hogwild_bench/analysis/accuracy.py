"""Accuracy at each token budget, with Wilson score intervals (good for small n and p near 0 or 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # clamp to the estimate itself so rounding never puts p outside its own interval (p = 0 or 1)
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def accuracy_vs_budget(df: pd.DataFrame, by: Sequence[str] = ("protocol", "workers", "layout")) -> pd.DataFrame:
    """One row per (``by`` ..., budget): n, correct, accuracy, ci_low, ci_high, mean tokens.

    Budgets are tokens per worker, so ``mean_total_tokens`` tells the compute spent across workers."""
    keys = [*by, "budget"]
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the records; available: {sorted(df.columns)}")
    grouped = df.groupby(keys, dropna=False)
    out = grouped.agg(
        n=("correct", "size"),
        correct=("correct", "sum"),
        mean_tokens_per_worker=("tokens_per_worker", "mean"),
        mean_total_tokens=("total_tokens", "mean"),
    ).reset_index()
    out["correct"] = out["correct"].astype(int)
    out["accuracy"] = out["correct"] / out["n"]
    bounds = [wilson_interval(c, n) for c, n in zip(out["correct"], out["n"])]
    out["ci_low"] = [b[0] for b in bounds]
    out["ci_high"] = [b[1] for b in bounds]
    return out.sort_values(keys).reset_index(drop=True)
