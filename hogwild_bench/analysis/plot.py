"""Accuracy-vs-tokens plot (matplotlib, saved as PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from hogwild_bench.analysis.accuracy import accuracy_vs_budget  # noqa: E402
from hogwild_bench.analysis.load import load_runs  # noqa: E402


def _frame(runs: pd.DataFrame | str | Path) -> pd.DataFrame:
    return runs if isinstance(runs, pd.DataFrame) else load_runs(runs)


def _save(fig, out: str | Path) -> Path:
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_accuracy_vs_budget(
    runs: pd.DataFrame | str | Path,
    out: str | Path,
    by: Sequence[str] = ("protocol", "workers", "layout"),
    title: str = "Accuracy vs tokens per worker",
) -> Path:
    """One line per ``by`` group with a 95% band; x is the token budget per worker (log2 scale)."""
    df = _frame(runs)
    table = accuracy_vs_budget(df, by=by)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, group in table.groupby(list(by)):
        key = key if isinstance(key, tuple) else (key,)
        label = " ".join(f"{k}={v}" for k, v in zip(by, key))
        ax.plot(group["budget"], group["accuracy"], marker="o", label=label)
        ax.fill_between(group["budget"], group["ci_low"], group["ci_high"], alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("budget (tokens per worker)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, out)


def plot_redundancy_vs_accuracy(
    runs: pd.DataFrame | str | Path, out: str | Path, by: Sequence[str] = ("protocol", "workers", "layout")
) -> Path:
    """One point per ``by`` cell at its largest budget: mean redundancy (x) against accuracy (y)."""
    from hogwild_bench.analysis.collaboration import collaboration

    df = _frame(runs)
    df = df[df["budget"] == df.groupby(list(by))["budget"].transform("max")]
    table = collaboration(df, by=by).dropna(subset=["redundancy"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for _, row in table.iterrows():
        ax.scatter(row["redundancy"], row["accuracy"])
        ax.annotate(" ".join(str(row[k]) for k in by), (row["redundancy"], row["accuracy"]), fontsize=7)
    ax.set_xlabel("redundancy (share of 5-grams another worker wrote earlier)")
    ax.set_ylabel("accuracy at the largest budget")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    return _save(fig, out)
