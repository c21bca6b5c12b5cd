"""`experiments/step_lengths.py`: decode steps between step boundaries, from a run's records."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def record(problem_id: str, workers: int, budget: int, decode: int, steps: list[int], status: str = "ok") -> dict:
    return {
        "problem_id": problem_id, "workers": workers, "layout": "combined", "seed": 0, "status": status,
        "budget": budget, "tokens_per_worker": decode, "steps_per_worker": steps,
    }  # fmt: skip


def test_each_generation_counts_once_at_its_largest_budget_and_every_workers_boundaries_cut_its_steps(tmp_path):
    """Generation "a" (two workers) has records at two budgets: only the last counts -- 300 decode steps, 2 + 4 steps,
    i.e. 4 boundaries (each worker's first step is not one): 75 decode steps per boundary, 100 tokens per step. A
    failed record is left out; a generation with no boundary counts its decode steps whole."""
    run = tmp_path / "run"
    run.mkdir()
    rows = [record("a", 2, 256, 100, [1, 2]), record("a", 2, 512, 300, [2, 4]), record("b", 2, 512, 40, [1, 1]),
            record("c", 2, 512, 9, [5, 5], status="failed")]  # fmt: skip
    (run / "records.shard0of1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "steps.json"
    script = ROOT / "experiments" / "step_lengths.py"
    subprocess.run([sys.executable, str(script), str(run), "--out", str(out)], check=True, capture_output=True)
    cell = json.loads(out.read_text())["cells"]["N=2 combined"]
    assert cell["generations"] == 2
    assert cell["decode_steps_per_boundary_mean"] == (75 + 40) / 2
    assert cell["tokens_per_step_mean"] == (100 + 40) / 2
    assert cell["decode_steps_median"] == (300 + 40) / 2
