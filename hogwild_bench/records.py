"""Finished generations -> stored records (outcomes per budget, scores, collaboration metrics, cost).

Making a record is pure Python over token lists: decoding the workers' texts and transcript, math-verify, the
collaboration metrics. On the real 1.5B GSM8K sweep it was a third of the decode loop's thread (py-spy,
experiments/README, session 16), time in which no forward was prepared. `RecordMaker` can therefore make them
in worker processes while the loop goes on; a record is a function of its generation alone, so where it is
made changes nothing in it.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import tempfile
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from hogwild_bench.collaboration import collaboration_metrics
from hogwild_bench.config import RunConfig
from hogwild_bench.engine.batch import Finished, JobCost
from hogwild_bench.metrics import repetition
from hogwild_bench.protocols import BudgetOutcome, GridPoint, ProtocolContext, build_protocol
from hogwild_bench.scoring import score_answer, score_parts
from hogwild_bench.tasks import Problem, dataset_version
from hogwild_bench.versions import code_version, prompt_version


def _value(x):
    """An enum config value's string (the runner's too)."""
    return getattr(x, "value", x)


def _model_id(cfg: RunConfig) -> str:
    if cfg.model.registry is not None:
        return f"registry:{cfg.model.registry.packages[0]}"
    return cfg.model.hf_id or f"tiny-random-{cfg.model.tiny_family}"


def base_record(cfg: RunConfig, problem: Problem, point: GridPoint, budget: int, digest: str) -> dict:
    return {
        "run_id": cfg.store.run_name,
        "exp_name": cfg.exp_name,
        "model": cfg.model.name,
        "model_id": _model_id(cfg),
        "dataset": cfg.dataset.name,
        "dataset_version": dataset_version(cfg.dataset),
        "problem_id": problem.id,
        "problem_hash": problem.content_hash,
        "problem": problem.problem,
        "settings_hash": digest,
        "prompt_version": prompt_version(),
        "prompt": cfg.prompt.name if cfg.prompt.system_file is None else f"{cfg.prompt.name}+file",
        "code_version": code_version(),
        "protocol": _value(cfg.protocol.name),
        "layout": point.layout,
        "workers": point.workers,
        "seed": cfg.generation.seed,
        "temperature": cfg.generation.temperature,
        "budget": budget,
        "gold_answer": problem.answer,
        "shard": f"{cfg.shard.index}/{cfg.shard.count}",
        "timestamp": time.time(),
    }


def scored_record(
    cfg: RunConfig, problem: Problem, point: GridPoint, outcome: BudgetOutcome, digest: str, memo: dict | None = None
) -> dict:
    """``outcome`` as a stored record. ``memo`` (one dict per generation): outcomes that share a transcript
    object come from one snapshot (a finished generation's remaining budgets) and are scored once."""
    key = (id(outcome.transcript), outcome.response) if outcome.transcript is not None else None
    if memo is not None and key in memo:
        score, collaboration, repeated = memo[key]
    else:
        score, collaboration, repeated = _score_outcome(cfg, problem, outcome)
        if memo is not None and key is not None:
            memo[key] = (score, collaboration, repeated)
    return {
        **base_record(cfg, problem, point, outcome.budget, digest),
        "status": "ok",
        "tokens_per_worker": outcome.tokens_per_worker,
        "total_tokens": outcome.total_tokens,
        "sampled_tokens": sampled_tokens(outcome),
        "wall_seconds": round(outcome.wall_seconds, 4),
        "finished_early": outcome.finished_early,
        "response": outcome.response,
        "extracted_answer": score.extracted,
        "correct": score.correct,
        "placeholder_answer": score.placeholder,
        "parts_correct": score.parts_correct or None,
        "partial": score.partial,
        "scoring_error": score.error,
        "scoring_timeout": score.timed_out,
        **repeated,
        **outcome.extra,
        **collaboration,
    }


def _score_outcome(cfg: RunConfig, problem: Problem, outcome: BudgetOutcome) -> tuple:
    """The score, collaboration metrics and repetition fields of one outcome."""
    if problem.sub_answers:
        score = score_parts(outcome.response, problem.sub_answers, cfg.scoring.timeout_seconds)
    else:
        score = score_answer(outcome.response, problem.answer, cfg.scoring.timeout_seconds)
    texts = outcome.extra.get("worker_texts") or [outcome.response]
    collaboration = {}
    if outcome.transcript is not None:
        collaboration = collaboration_metrics(
            outcome.transcript,
            answer=score.extracted,
            finisher_answered=outcome.extra.get("finisher_answer") is not None,
            end_step=outcome.tokens_per_worker,
            worker_ends=outcome.extra.get("worker_ends") or (),
        )
    return score, collaboration, repetition(texts)


def failed_record(
    cfg: RunConfig, problem: Problem, point: GridPoint, budget: int, error: BaseException, digest: str
) -> dict:
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__, limit=8))
    return {
        **base_record(cfg, problem, point, budget, digest),
        "status": "failed",
        "correct": False,
        "error": f"{type(error).__name__}: {error}",
        "traceback": trace,
    }


def sampled_tokens(outcome: BudgetOutcome) -> int:
    """The outcome's tokens drawn from the model: its total less the step labels and prompts the engine wrote."""
    return outcome.total_tokens if outcome.sampled_tokens is None else outcome.sampled_tokens


def generation_cost(cost: JobCost, outcomes: list[BudgetOutcome]) -> dict:
    """What the generation behind a record cost (shared by its budgets' records)."""
    tokens = max((sampled_tokens(o) for o in outcomes), default=0)
    return {
        "generation_forwards": cost.forwards,
        "generation_seconds": round(cost.seconds, 4),
        "generation_tokens_per_second": round(tokens / cost.seconds, 2) if cost.seconds > 0 else None,
        "peak_kv_bytes": cost.peak_kv_bytes,
    }


@dataclass
class RecordContext:
    """What making a record needs besides the generation: no model, so a worker process can hold it."""

    cfg: RunConfig
    tokenizer: object
    digest: str  # the run's settings hash

    @cached_property
    def protocol(self):
        return build_protocol(_value(self.cfg.protocol.name), ProtocolContext(None, self.tokenizer, self.cfg))

    def __getstate__(self) -> dict:  # to a worker process: its fields, not the protocol built from them
        return {"cfg": self.cfg, "tokenizer": self.tokenizer, "digest": self.digest}

    def records(self, item: tuple, result, cost: JobCost) -> list[dict]:
        """The records of the budgets ``item`` (problem, point, missing budgets) still needs."""
        problem, point, missing = item
        outcomes = self.protocol.outcomes(result)
        spent, memo = generation_cost(cost, outcomes), {}
        return [
            {**scored_record(self.cfg, problem, point, o, self.digest, memo), **spent}
            for o in outcomes
            if o.budget in missing
        ]


@dataclass
class Made:
    """A generation's records, or the error that made them failed records (raised by the generation or while
    scoring it: either way the problem's, not the run's)."""

    key: tuple
    records: list[dict]
    error: BaseException | None = None


_WORKER_CONTEXT: RecordContext | None = None


def _start_worker(context_file: str) -> None:
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = pickle.loads(Path(context_file).read_bytes())
    # Ctrl-C or `timeout -s INT` reaches the whole process group: the runner stops and waits for the records in
    # hand, so its workers must live on to make them
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _make_in_worker(item: tuple, result, cost: JobCost) -> list[dict]:
    return _WORKER_CONTEXT.records(item, result, cost)


class RecordMaker:
    """Makes each finished generation's records, in this thread (``workers=0``) or in ``workers`` processes.
    ``submit`` a `Finished`; ``ready`` yields what is made (in submission order with no workers, in completion
    order with them); ``ready(wait=True)`` waits for everything submitted. A worker that dies (the pool breaks)
    raises `BrokenProcessPool` from ``ready``: the run stops with everything stored so far kept."""

    def __init__(self, context: RecordContext, workers: int = 0):
        self.context, self.pending = context, {}
        self.done: list[Made] = []
        self.pool, self.context_file = None, None
        if workers > 0:
            # The context goes by file: a spawned process is handed its arguments through a pipe that the parent
            # writes before the child reads it, which the child does only after importing torch and the rest, so
            # a tokenizer's megabytes there held the decode loop ~5 s per worker (py-spy, session 16).
            with tempfile.NamedTemporaryFile(prefix="hogwild_records_", suffix=".pkl", delete=False) as handle:
                handle.write(pickle.dumps(context))
            self.context_file = handle.name
            spawn = multiprocessing.get_context("spawn")  # the runner's process holds CUDA: never fork it
            self.pool = ProcessPoolExecutor(
                workers, mp_context=spawn, initializer=_start_worker, initargs=(self.context_file,)
            )

    def submit(self, finished: Finished) -> None:
        item = finished.key
        if not finished.ok:
            self.done.append(self._failed(item, finished.error))
        elif self.pool is None:
            try:
                self.done.append(Made(item, self.context.records(item, finished.result, finished.cost)))
            except Exception as error:
                self.done.append(self._failed(item, error))
        else:
            future = self.pool.submit(_make_in_worker, item, finished.result, finished.cost)
            self.pending[future] = item

    def ready(self, wait: bool = False) -> Iterator[Made]:
        while self.done:
            yield self.done.pop(0)
        for future in [f for f in self.pending if wait or f.done()]:
            yield self._collect(future)

    def _collect(self, future: Future) -> Made:
        item = self.pending.pop(future)
        try:
            return Made(item, future.result())
        except BrokenProcessPool:
            raise
        except Exception as error:
            return self._failed(item, error)

    def _failed(self, item: tuple, error: BaseException) -> Made:
        problem, point, missing = item
        cfg, digest = self.context.cfg, self.context.digest
        return Made(item, [failed_record(cfg, problem, point, b, error, digest) for b in missing], error)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            Path(self.context_file).unlink(missing_ok=True)
