"""The command line as users run it: the demo experiment, and a Hydra multirun over layouts on CPU."""

import subprocess
import sys

from conftest import ROOT, compose_config, tiny_run_overrides

from hogwild_bench.analysis import load_runs
from hogwild_bench.runner import run


def test_demo_experiment_writes_scored_records_and_a_png(tmp_path):
    run_dir = run(compose_config(["+exp=demo_random", "dataset.limit=1", "grid.workers=[1,2]", f"store.root={tmp_path}",
                                  "progress=false"]))  # fmt: skip
    df = load_runs(run_dir)
    assert len(df) == 1 * 2 * 3 * 3 and df["correct"].notna().all()
    assert (run_dir / "accuracy_vs_tokens.png").exists()


def test_multirun_over_layouts_on_cpu(tmp_path):
    overrides = tiny_run_overrides(tmp_path, "dataset.limit=2")
    result = subprocess.run(
        [sys.executable, "-m", "hogwild_bench", "-m", "layout=combined,contiguous,interleaved", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    df = load_runs(str(tmp_path / "default-*"))
    assert sorted(df["layout"].unique()) == ["combined", "contiguous", "interleaved"]
    assert len(df) == 3 * 2 * 2 and df["run_dir"].nunique() == 3
