"""Analysis of stored runs with pandas: load records, accuracy per budget with confidence intervals, plots.

from hogwild_bench.analysis import load_runs, accuracy_vs_budget, plot_accuracy_vs_budget
df = load_runs("runs/limo_sweep-*")
table = accuracy_vs_budget(df, by=["model", "workers", "layout"])
how = collaboration(df)   # redundancy, answer origin, collaboration checks per cell
sampled = sum(sampled_tokens(r) for r in df.to_dict("records"))  # tokens drawn, not the inserted ones
"""

from hogwild_bench.analysis.accuracy import accuracy_vs_budget, wilson_interval
from hogwild_bench.analysis.collaboration import collaboration
from hogwild_bench.analysis.load import load_runs
from hogwild_bench.analysis.plot import plot_accuracy_vs_budget, plot_redundancy_vs_accuracy
from hogwild_bench.analysis.tokens import sampled_tokens

__all__ = ["load_runs", "accuracy_vs_budget", "wilson_interval", "plot_accuracy_vs_budget", "collaboration",
           "plot_redundancy_vs_accuracy", "sampled_tokens"]  # fmt: skip
