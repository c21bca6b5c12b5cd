"""A normal (non-editable) install runs from any directory: the configs, prompts and sample data ship inside
the package, nothing is read from the source checkout."""

import subprocess
import sys
import zipfile

from conftest import ROOT


def test_the_built_wheel_runs_a_small_experiment_from_an_unrelated_directory(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = wheels.glob("hogwild_bench-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:  # what `pip install` would put in site-packages
        archive.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "analysis").mkdir()  # a user's own folder of this name must not shadow the package's API
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WANDB_MODE": "disabled"}
    where = subprocess.run([sys.executable, "-c", "import hogwild_bench; print(hogwild_bench.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.startswith(str(site)), f"imported from {where.stdout}, not from the installed wheel"
    result = subprocess.run(
        [sys.executable, "-m", "hogwild_bench", "+exp=demo_random", "dataset.limit=1", "generation.budgets=[4]",
         "grid.workers=[2]", "grid.layouts=[combined]", "store.root=runs", "progress=false", "plot=false"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = (elsewhere / "runs").glob("demo_random-*")
    read = f"from hogwild_bench.analysis import load_runs; print(len(load_runs({str(run_dir)!r})))"
    summary = subprocess.run([sys.executable, "-c", read], cwd=elsewhere, env=env, capture_output=True, text=True,
                             check=True)  # fmt: skip
    assert summary.stdout.strip() == "1"
