"""The runner: config -> problems (this shard) -> protocol -> score -> store -> log, resumable.

Work is done per (problem, grid point): one generation serves every budget. Anything already stored is
skipped, so a killed or requeued job picks up where it stopped; a problem that raises (OOM, tokenizer
error, ...) is stored as failed with its error and the run goes on (failed ones are retried on re-run).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from hogwild_bench.config import Attention, ConfigError, ProtocolName, RunConfig, validate
from hogwild_bench.engine import HogwildLM
from hogwild_bench.engine.batch import BatchTimes, ContinuousBatcher, Finished, JobCost
from hogwild_bench.loading import load_model
from hogwild_bench.protocols import GridPoint, ProtocolContext, build_protocol
from hogwild_bench.records import RecordContext, RecordMaker, _value
from hogwild_bench.store import ResultStore, shard_lock
from hogwild_bench.tasks import Problem, load_problems, shard
from hogwild_bench.tracking import make_tracker
from hogwild_bench.versions import settings_hash

log = logging.getLogger("hogwild_bench")
TIMES_LOG_SECONDS = 60.0  # a batched run logs where its time went (BatchTimes) this often, and at its end


def grid_points(cfg: RunConfig) -> list[GridPoint]:
    if cfg.protocol.name == ProtocolName.single:
        return [GridPoint(1, "none")]
    if cfg.protocol.name == ProtocolName.thinker_writer:
        return [GridPoint(2, "thinker_writer")]
    workers = list(cfg.grid.workers) or [cfg.protocol.workers]
    if cfg.protocol.name == ProtocolName.independent:  # no shared cache, so no layout
        return [GridPoint(w, "none") for w in workers]
    layouts = [_value(x) for x in cfg.grid.layouts] or [_value(cfg.layout.name)]
    return [GridPoint(w, layout) for w in workers for layout in layouts]


def run_dir_of(cfg: RunConfig) -> Path:
    return Path(cfg.store.root) / cfg.store.run_name


def _key(cfg: RunConfig, problem: Problem, point: GridPoint, budget: int, digest: str) -> tuple:
    """A record's identity; ``digest`` is the run's `settings_hash` (computed once per run)."""
    return (problem.id, problem.content_hash, _value(cfg.protocol.name), point.layout, point.workers,
            cfg.generation.seed, budget, digest)  # fmt: skip


def accuracy_curves(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """``{point label: [(budget, accuracy), ...]}`` over ok records."""
    groups: dict[tuple[str, int], list[bool]] = {}
    for r in records:
        if r.get("status") == "ok":
            label = f"{r['protocol']}-w{r['workers']}-{r['layout']}"
            groups.setdefault((label, r["budget"]), []).append(bool(r["correct"]))
    curves: dict[str, list[tuple[int, float]]] = {}
    for (label, budget), hits in sorted(groups.items()):
        curves.setdefault(label, []).append((budget, sum(hits) / len(hits)))
    return curves


def check_runnable_here(cfg: RunConfig) -> None:
    """Settings valid in general but impossible on this machine, refused before any work starts."""
    import os

    import torch

    if (
        cfg.model.attention == Attention.triton
        and not torch.cuda.is_available()
        and not os.environ.get("TRITON_INTERPRET")
    ):
        raise ConfigError(
            "model.attention=triton needs a CUDA GPU (or TRITON_INTERPRET=1 for tiny tests); this machine has none. "
            "Use model.attention=auto (query_rotation on CPU) or key_rotation"
        )


def run(cfg) -> Path:
    """Run (or resume) the job described by ``cfg``; returns the run directory."""
    cfg = validate(cfg)
    check_runnable_here(cfg)
    problems = shard(load_problems(cfg.dataset), cfg.shard.index, cfg.shard.count)
    run_dir = run_dir_of(cfg)
    with shard_lock(run_dir, cfg.shard.index, cfg.shard.count):
        return _run_shard(cfg, problems, run_dir)


def _run_shard(cfg: RunConfig, problems: list, run_dir: Path) -> Path:
    store = ResultStore(run_dir, cfg.shard.index, cfg.shard.count)
    store.save_config(cfg, force=cfg.store.force)
    points, budgets = grid_points(cfg), sorted(set(cfg.generation.budgets))
    digest = settings_hash(cfg)
    done = store.completed()
    failed = set() if cfg.store.retry_failed else store.failed()  # read once, not per problem
    todo = []
    for problem in problems:
        for point in points:
            missing = [b for b in budgets if _key(cfg, problem, point, b, digest) not in done]
            if missing and not all(_key(cfg, problem, point, b, digest) in failed for b in missing):
                todo.append((problem, point, missing))
    log.info("%s: %d problems x %d points in this shard, %d to run", run_dir, len(problems), len(points), len(todo))
    if todo:
        _run_todo(cfg, store, todo, run_dir, digest)
    _summarise(cfg, store, run_dir)
    return run_dir


def _run_todo(cfg: RunConfig, store: ResultStore, todo: list, run_dir: Path, digest: str) -> None:
    model, tokenizer = load_model(cfg.model)
    devices = {p.device for p in model.parameters()}
    # a static torch.compile specialises on the batch size, which changes every few steps in a batched run: it
    # would recompile until its limit and fall back to eager (measured: 5x slower than eager). Batched runs
    # compile only the bucket graphs' steps (batch.compile_buckets: one static compilation per bucket) or every
    # forward with batch.compile_dynamic (one compilation for every shape).
    if cfg.batch.cpu_threads > 0 and any(d.type == "cuda" for d in devices):
        torch.set_num_threads(cfg.batch.cpu_threads)
    compile = cfg.model.compile and len(devices) == 1 and next(iter(devices)).type == "cuda"
    batched = cfg.batch.enabled and protocol_batchable(cfg)
    dynamic = compile and batched and cfg.batch.compile_dynamic
    buckets = compile and batched and cfg.batch.cuda_graphs and not dynamic and compiles_buckets(cfg, model)
    lm = HogwildLM(model, attention=_value(cfg.model.attention), cuda_graphs=cfg.model.cuda_graphs,
                   compile=compile and not batched, compile_dynamic=dynamic, compile_buckets=buckets)  # fmt: skip
    protocol = build_protocol(_value(cfg.protocol.name), ProtocolContext(lm, tokenizer, cfg))
    config_dict = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    tracker = make_tracker(cfg.logger, cfg.store.run_name, config_dict, run_dir, (cfg.shard.index, cfg.shard.count))
    hits: list[bool] = []
    speed, times = Throughput(), BatchTimes()
    logged_times = time.perf_counter()
    bar = tqdm(total=len(todo), desc=cfg.store.run_name, unit="gen", disable=not cfg.progress)
    maker = RecordMaker(RecordContext(cfg, tokenizer, digest), record_workers(cfg, lm))
    stored: list[tuple] = []

    def store_made(wait: bool = False) -> None:
        for made in maker.ready(wait):
            stored.append(made.key)
            problem, point, _ = made.key
            if made.error is not None:
                log.error("problem %s (%s) failed: %s", problem.id, point.label, made.error)
                _release_memory()
            else:
                hits.append(bool(made.records[-1]["correct"]) if made.records else False)
            store.append(made.records)
            accuracy = sum(hits) / len(hits) if hits else None
            bar.update(1)
            bar.set_postfix(acc="-" if accuracy is None else f"{accuracy:.3f}", rows_s=f"{speed.rows_per_second:.0f}",
                            rows=speed.rows)  # fmt: skip
            tracker.log_problem(len(stored), len(todo), accuracy, rows_per_second=speed.rows_per_second)

    try:
        try:
            for finished in _generations(cfg, lm, protocol, todo, speed, times):
                maker.submit(finished)
                store_made()
                if time.perf_counter() - logged_times >= TIMES_LOG_SECONDS:
                    logged_times = time.perf_counter()
                    log.info("batch time so far: %s", times.summary())
        finally:  # stopped or not: the records of every finished generation are made and stored
            try:
                store_made(wait=True)
            finally:
                maker.close()
        records = store.records()
        transcripts = [
            {k: r.get(k) for k in ("problem_id", "protocol", "workers", "layout", "budget", "response",
                                   "extracted_answer", "gold_answer", "correct")}
            for r in records if r.get("status") == "ok"
        ][: cfg.logger.transcripts]  # fmt: skip
        tracker.log_summary(accuracy_curves(records), transcripts, collaboration_cells(records))
    finally:
        bar.close()
        tracker.finish()
        if times.replayed or times.eager or times.prefill:
            log.info("batch time: %s", times.summary())


def collaboration_cells(records: list[dict]) -> list[dict]:
    """Per (protocol, workers, layout, budget) means of the collaboration metrics (W&B summary table)."""
    import pandas as pd

    from hogwild_bench.analysis.collaboration import collaboration

    rows = [r for r in records if r.get("status") == "ok" and "redundancy" in r]
    if not rows:
        return []
    table = collaboration(pd.DataFrame(rows))
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in table.to_dict("records")]


class Throughput:
    """Rows per forward, and forward rows per second over the batch's recent forwards (progress bar). A decode
    row writes one token -- sampled, or a step label's or prompt's token the engine inserts (~15 % of them at
    64-token steps) -- so this is the engine's token rate, above the rate of sampled tokens; a record's
    ``sampled_tokens`` and ``generation_tokens_per_second`` count the sampled ones."""

    def __init__(self, window: float = 10.0):
        self.window, self.events, self.rows = window, deque(), 0

    def __call__(self, rows: int, seconds: float) -> None:
        now = time.perf_counter()
        self.rows = rows
        self.events.append((now, rows))
        while now - self.events[0][0] >= self.window:
            self.events.popleft()

    @property
    def rows_per_second(self) -> float:
        if len(self.events) < 2:
            return 0.0
        span = self.events[-1][0] - self.events[0][0]
        return (sum(r for _, r in self.events) - self.events[0][1]) / span if span > 0 else 0.0


def protocol_batchable(cfg: RunConfig) -> bool:
    from hogwild_bench.protocols import PROTOCOLS

    return PROTOCOLS[_value(cfg.protocol.name)].batchable


def max_rows(cfg: RunConfig, lm: HogwildLM) -> int:
    if cfg.batch.max_rows:
        return cfg.batch.max_rows
    return 64 if lm.device.type == "cuda" else 16


# a batched decode step reading at least this many weight bytes is bound by the GPU, not by the host preparing it
GPU_BOUND_WEIGHT_BYTES = 8 * 10**9


def lanes(cfg: RunConfig, lm: HogwildLM) -> int:
    """``batch.lanes``, or for 0 (auto) 2 on CUDA when a decode step reads under 8 GB of weights, else 1: a small
    model's batched step is host-bound, so the host preparing one lane while the GPU runs the other pays; a large
    one's is GPU-bound, and two lanes' forwards read the weights twice (session 13: +34-64 % on the real 1.5B
    sweep, -7-25 % on the random 7B)."""
    from hogwild_bench.bench import weight_bytes_read

    if cfg.batch.lanes:
        return cfg.batch.lanes
    if lm.device.type != "cuda":
        return 1
    return 2 if weight_bytes_read(lm.model) < GPU_BOUND_WEIGHT_BYTES else 1


def overlaps(cfg: RunConfig, lm: HogwildLM, lane_count: int) -> bool:
    """``batch.overlap``, or for null (auto) whether the model runs on CUDA in one lane: there the device
    computes a step while the host runs the generations' code for the last one (random 7B, one lane: +14-15 %).
    Two lanes already keep the device busy while the host works, and guessing adds host work to a loop that is
    host-bound: on the same generations the real 1.5B sweep with both completed 8,500 tokens/s, the GPU 50 % busy,
    where session 18's without overlap completed 11,900, 79 % busy (experiments/README, session 22). On CPU the
    forward itself is the host's work. Never with ``batch.window`` > 1, which steps generations ahead its own way."""
    if cfg.batch.overlap is not None:
        return cfg.batch.overlap
    if cfg.batch.window > 1:
        return False
    return lm.device.type == "cuda" and lane_count == 1


def compiles_buckets(cfg: RunConfig, model: torch.nn.Module) -> bool:
    """``batch.compile_buckets``, or for null (auto) whether a decode step reads at least 8 GB of weights: fusing
    a GPU-bound step's small kernels shortens what the loop waits for (session 18, random 7B: +18-21 % tokens/s at
    64 rows, +9-11 % at 128), a host-bound one's does not (session 15, real 1.5B sweep: slower with it)."""
    from hogwild_bench.bench import weight_bytes_read

    if cfg.batch.compile_buckets is not None:
        return cfg.batch.compile_buckets
    return weight_bytes_read(model) >= GPU_BOUND_WEIGHT_BYTES


def record_workers(cfg: RunConfig, lm: HogwildLM) -> int:
    """``batch.record_workers``, or for -1 (auto) on CUDA up to 4 processes (a quarter of the CPU cores), else 0:
    making records (decoding, scoring, metrics) took a third of the real 1.5B sweep's decode-loop thread, while a
    tiny CPU run would spend more on starting the processes than it saves."""
    if cfg.batch.record_workers >= 0:
        return cfg.batch.record_workers
    if lm.device.type != "cuda":
        return 0
    return min(4, (os.cpu_count() or 1) // 4)


def kv_budget_bytes(cfg: RunConfig, lm: HogwildLM) -> int | None:
    """``batch.kv_memory_fraction`` of the GPU memory free now (after the model loaded); None on CPU."""
    import torch

    if lm.device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(lm.device)
    return int(cfg.batch.kv_memory_fraction * free)


def _generations(
    cfg: RunConfig, lm: HogwildLM, protocol, todo: list, speed: Throughput, times: BatchTimes
) -> Iterator[Finished]:
    """Every (problem, point) of ``todo`` as a `Finished` generation, in completion order."""
    if not protocol.batchable:
        for item in todo:
            started = time.perf_counter()
            try:
                result = protocol.generate(item[0].problem, item[1])
                yield Finished(item, result=result, cost=JobCost(seconds=time.perf_counter() - started))
            except Exception as error:
                yield Finished(item, error=error)
        return
    batched = cfg.batch.enabled
    lane_count = lanes(cfg, lm) if batched else 1
    batcher = ContinuousBatcher(
        lm,
        max_rows=max_rows(cfg, lm) if batched else max(p.workers for _, p, _ in todo),
        kv_budget_bytes=kv_budget_bytes(cfg, lm),
        max_jobs=None if batched else 1,
        cuda_graphs=cfg.batch.cuda_graphs if batched else cfg.model.cuda_graphs,
        on_step=speed,
        times=times,
        insert_wait_rounds=cfg.batch.insert_wait_rounds,
        lanes=lane_count,
        overlap=overlaps(cfg, lm, lane_count) if batched else False,
        window=cfg.batch.window if batched else 1,
    )
    failed: list[Finished] = []

    def jobs():
        for item in todo:
            try:
                yield replace(protocol.job(item[0].problem, item[1]), key=item)
            except Exception as error:  # e.g. a prompt the tokenizer rejects
                failed.append(Finished(item, error=error))

    for finished in batcher.run(jobs()):
        yield from failed
        failed.clear()
        yield finished
    yield from failed


def _release_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _summarise(cfg: RunConfig, store: ResultStore, run_dir: Path) -> None:
    records = store.records()
    curves = accuracy_curves(records)
    failed = sum(1 for r in records if r.get("status") == "failed")
    lines = [f"results in {run_dir} ({len(records)} records, {failed} failed)"]
    for label, points in curves.items():
        lines.append(f"  {label:40s} " + "  ".join(f"{b}:{acc:.3f}" for b, acc in points))
    print("\n".join(lines))
    if cfg.plot and curves:
        from hogwild_bench.analysis import plot_accuracy_vs_budget

        path = plot_accuracy_vs_budget(run_dir, run_dir / "accuracy_vs_tokens.png")
        print(f"plot: {path}")
