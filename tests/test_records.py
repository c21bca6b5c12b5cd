"""Records are made from finished generations in the loop's thread or in worker processes: the same records."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_config, tiny_run_overrides

from hogwild_bench.engine.batch import Finished, JobCost
from hogwild_bench.protocols import GridPoint
from hogwild_bench.records import RecordContext, RecordMaker
from hogwild_bench.runner import run
from hogwild_bench.store import ResultStore, record_key
from hogwild_bench.tasks import load_problems
from hogwild_bench.versions import settings_hash

TIMING = {"timestamp", "wall_seconds", "generation_seconds", "generation_tokens_per_second"}


def _contents(run_dir) -> dict:
    records = ResultStore(run_dir).records()
    assert records and all(r["status"] == "ok" for r in records)
    return {record_key(r): {k: v for k, v in r.items() if k not in TIMING} for r in records}


@pytest.mark.parametrize(
    "protocol", [["grid.workers=[1,2]", "grid.layouts=[combined,interleaved]"],
                 ["protocol=independent", "grid.workers=[2]", "generation.temperature=0.7"]],
)  # fmt: skip
def test_records_made_in_worker_processes_equal_those_made_in_the_loops_thread(tmp_path, protocol):
    stored = []
    for workers in (0, 2):
        overrides = tiny_run_overrides(tmp_path / f"w{workers}", "batch.max_rows=6", *protocol)
        stored.append(_contents(run(compose_config([*overrides, f"batch.record_workers={workers}"]))))
    in_thread, in_workers = stored
    assert in_workers == in_thread
    if "protocol=independent" not in protocol:  # the transcript-based metrics were made too
        assert any(r.get("redundancy") is not None for r in in_thread.values())


def test_a_generation_that_failed_or_cannot_be_scored_gives_failed_records_the_others_are_kept(tmp_path, tokenizer):
    cfg = compose_config(tiny_run_overrides(tmp_path))
    problem, point = load_problems(cfg.dataset)[0], GridPoint(1, "combined")
    maker = RecordMaker(RecordContext(cfg, tokenizer, settings_hash(cfg)), workers=1)
    try:
        maker.submit(Finished((problem, point, [6, 12]), error=MemoryError("out of KV")))
        maker.submit(Finished((problem, point, [6]), result="not a generation result", cost=JobCost()))
        made = list(maker.ready(wait=True))
    finally:
        maker.close()
    assert [m.error is not None for m in made] == [True, True]
    failed = [r for m in made for r in m.records]
    assert [r["budget"] for r in failed] == [6, 12, 6] and all(r["status"] == "failed" for r in failed)
    assert failed[0]["error"] == "MemoryError: out of KV"
    assert "AttributeError" in failed[2]["error"]  # raised in the worker process, reported here


def test_record_workers_below_minus_one_is_a_config_error(tmp_path):
    from hogwild_bench.config import ConfigError, validate

    with pytest.raises(ConfigError, match=r"batch.record_workers must be .* -1 \(auto\), got -2"):
        validate(compose_config([*tiny_run_overrides(tmp_path), "batch.record_workers=-2"]))


def test_handing_a_generation_to_a_worker_does_not_wait_for_the_worker_to_start(tmp_path):
    """Starting a worker process takes seconds (it imports torch); the decode loop must not wait for it, however
    large the context (a real tokenizer is megabytes): it travels by file, not through the spawn pipe."""
    import time

    cfg = compose_config(tiny_run_overrides(tmp_path))
    problem, point = load_problems(cfg.dataset)[0], GridPoint(1, "combined")
    large_tokenizer = bytes(16 * 2**20)  # never used: the generation below fails before decoding
    maker = RecordMaker(RecordContext(cfg, large_tokenizer, settings_hash(cfg)), workers=2)
    try:
        started = time.perf_counter()
        for _ in range(2):
            maker.submit(Finished((problem, point, [6]), result="not a generation result", cost=JobCost()))
        handed = time.perf_counter() - started
        made = list(maker.ready(wait=True))
    finally:
        maker.close()
    assert handed < 1.0, f"submitting waited {handed:.1f} s for the workers to start"
    assert len(made) == 2 and all(m.error is not None for m in made)
    assert not Path(maker.context_file).exists()  # the context file goes with the pool


def test_a_record_counts_the_sampled_tokens_apart_from_those_the_engine_inserted(tmp_path):
    """Step labels and prompts are in ``total_tokens`` but not in ``sampled_tokens``, which the generation's
    tokens/s is made of: a record's speed is the model's, not the engine's bookkeeping."""
    overrides = tiny_run_overrides(tmp_path, "grid.workers=[1,2]", "generation.early_stop=false", "dataset.limit=1")
    records = ResultStore(run(compose_config(overrides))).records()
    assert records and all(r["status"] == "ok" for r in records)
    for r in records:
        assert r["sampled_tokens"] == r["workers"] * r["budget"] < r["total_tokens"]
    last = max(records, key=lambda r: r["budget"])
    assert last["generation_tokens_per_second"] == pytest.approx(
        last["sampled_tokens"] / last["generation_seconds"], rel=1e-3
    )
