"""`experiments/sweep_floor.py`: the memory floor of a finished sweep, from its records."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def record(problem_id: str, workers: int, budget: int, steps: int, total: int, status: str = "ok") -> dict:
    return {
        "problem_id": problem_id, "protocol": "hogwild", "workers": workers, "layout": "combined", "seed": 0,
        "temperature": 0.0, "status": status, "problem": "x" * 40, "budget": budget, "tokens_per_worker": steps,
        "total_tokens": total,
    }  # fmt: skip


def test_each_generation_counts_once_at_its_largest_budget_and_reads_its_growing_kv_every_step(tmp_path):
    """Two generations (the first has records at two budgets, only the last is its end state) and a failed
    record (ignored): 10 problem characters per token give 4-token prompts; the K/V read is, per generation,
    steps x prompt + tokens written x (steps + 1) / 2 tokens; the weights are read once per forward of R rows."""
    run = tmp_path / "run"
    run.mkdir()
    rows = [record("a", 2, 256, 100, 210), record("a", 2, 512, 300, 610), record("b", 1, 512, 50, 50),
            record("c", 4, 512, 9, 9, status="failed")]  # fmt: skip
    (run / "records.shard0of1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "floor.json"
    script = ROOT / "experiments" / "sweep_floor.py"
    options = ["--chars-per-token", "10", "--bandwidth", "1e9", "--rows", "50", "--out", str(out)]
    subprocess.run([sys.executable, str(script), str(run), *options], check=True, capture_output=True)
    floor = json.loads(out.read_text())
    per_token = floor["kv_bytes_per_token"]
    assert per_token == 2 * 28 * 2 * 128 * 2  # Qwen2.5-1.5B: K and V, 28 layers, 2 KV heads of 128, bf16
    assert floor["generations"] == 2 and floor["row_steps"] == 2 * 300 + 50
    assert floor["prompt_tokens"]["total"] == 8
    kv_tokens = (300 * 4 + 610 * 301 / 2) + (50 * 4 + 50 * 51 / 2)
    assert floor["kv_read_bytes"] == per_token * kv_tokens
    (only,) = floor["by_rows_per_forward"]
    assert only["forwards"] == 13  # 650 row-steps / 50 rows
    expected = (650 / 50 * floor["weight_bytes_per_forward"] + per_token * kv_tokens) / 1e9
    assert abs(only["floor_seconds"] - round(expected, 1)) < 1e-9
