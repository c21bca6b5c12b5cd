"""Analysis over stored runs: loading many runs, accuracy with intervals, the PNG, the notebook."""

import os

import pytest
from conftest import ROOT, compose_config, tiny_run_overrides

from hogwild_bench.analysis import accuracy_vs_budget, load_runs, plot_accuracy_vs_budget, wilson_interval
from hogwild_bench.runner import run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a = run(compose_config(tiny_run_overrides(root, "grid.workers=[1,2]", "grid.layouts=[combined]")))
    b = run(compose_config(tiny_run_overrides(root, "protocol=single")))
    return root, a, b


def test_load_runs_takes_globs_and_lists(two_runs):
    root, a, b = two_runs
    assert len(load_runs(str(root / "*"))) == len(load_runs([a, b])) == 3 * 2 * 2 + 3 * 2
    assert set(load_runs(a)["workers"]) == {1, 2}


def test_accuracy_vs_budget_has_counts_and_intervals(two_runs):
    _, a, b = two_runs
    table = accuracy_vs_budget(load_runs([a, b]), by=["protocol", "workers"])
    assert list(table.columns[:3]) == ["protocol", "workers", "budget"]
    assert (table["n"] == 3).all()
    assert ((table["ci_low"] <= table["accuracy"]) & (table["accuracy"] <= table["ci_high"])).all()
    with pytest.raises(KeyError, match="not in the records"):
        accuracy_vs_budget(load_runs(a), by=["colour"])


def test_wilson_interval_known_values():
    low, high = wilson_interval(5, 10)
    assert abs(low - 0.2366) < 1e-3 and abs(high - 0.7634) < 1e-3
    assert wilson_interval(0, 20)[0] == 0.0


def test_plot_is_a_png(two_runs, tmp_path):
    _, a, b = two_runs
    out = plot_accuracy_vs_budget([a, b], tmp_path / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_notebook_runs_end_to_end_on_run_output(two_runs, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    root, _, _ = two_runs
    notebook = nbformat.read(ROOT / "analysis" / "accuracy_vs_tokens.ipynb", as_version=4)
    os.environ["HOGWILD_RUNS"] = str(root / "*")
    try:
        NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        del os.environ["HOGWILD_RUNS"]
    assert (tmp_path / "accuracy_vs_tokens.png").exists()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]


@pytest.mark.parametrize(
    "record, sampled",
    [({"total_tokens": 50, "sampled_tokens": 40, "worker_written_tokens": [20, 20]}, 40),
     ({"total_tokens": 50, "sampled_tokens": float("nan"), "worker_written_tokens": [20, 19]}, 39),
     ({"total_tokens": 50, "worker_written_tokens": [21, 20]}, 41),
     ({"total_tokens": 50}, 50)],
)  # fmt: skip
def test_sampled_tokens_of_a_record_of_any_format(record, sampled):
    """Records before session 28 have no ``sampled_tokens``: a Hogwild! record's per-worker sampled counts stand
    in, and a record with neither has no inserted tokens."""
    from hogwild_bench.analysis import sampled_tokens

    assert sampled_tokens(record) == sampled
