"""The paper's comparison points and the Thinker/Writer variant, each a ``protocol=<name>`` choice.

``independent``: N workers that share only the prompt (no visibility of each other), sampled with
temperature; the answer is the majority vote over math-verify-equivalent answers at each budget
(self-consistency); every worker's own answer is recorded too.
``thinker_writer``: two streams over one cache with [CONTROL] yes/no gates (`engine.thinker_writer`).
"""

from __future__ import annotations

from dataclasses import asdict

from hogwild_bench.answers import last_boxed
from hogwild_bench.engine import Isolated
from hogwild_bench.engine.batch import BatchJob
from hogwild_bench.engine.thinker_writer import ThinkerWriterGenerator, ThinkerWriterOptions
from hogwild_bench.protocols.base import BudgetOutcome, GridPoint, Protocol, register_protocol
from hogwild_bench.protocols.hogwild import (
    answer_hooks,
    generation_job,
    generation_options,
    generator,
    prompt_format,
    transcript,
    work_split,
)
from hogwild_bench.voting import majority_vote


@register_protocol("independent")
class IndependentProtocol(Protocol):
    def job(self, problem: str, point: GridPoint) -> BatchJob:
        n = point.workers
        options = generation_options(
            self.ctx.cfg, n, Isolated(), collab_interval=None, first_steps=[""] * n, per_worker=True
        )
        fmt = prompt_format(self.ctx, 1, "contiguous", step_labels=False)
        return generation_job(generator(self.ctx, options, fmt), problem)

    def outcomes(self, result) -> list[BudgetOutcome]:
        outcomes = []
        for budget, snap in sorted(result.snapshots.items()):
            answers = [last_boxed(r) for r in snap.worker_responses]
            vote = majority_vote(answers, self.ctx.cfg.scoring.timeout_seconds)
            winner = vote.winner if vote.winner is not None else ""
            texts = [self.ctx.tokenizer.decode(t) for t in snap.worker_tokens]
            outcomes.append(
                BudgetOutcome(
                    budget=budget,
                    tokens_per_worker=snap.tokens_per_worker,
                    total_tokens=snap.total_tokens,
                    sampled_tokens=snap.sampled_tokens,
                    wall_seconds=snap.wall_seconds,
                    response=f"Majority vote of {len(snap.worker_tokens)} independent workers: \\boxed{{{winner}}}",
                    finished_early=snap.finished_early,
                    extra={
                        "worker_answers": answers,
                        "vote_counts": vote.counts,
                        "worker_texts": texts,
                        "worker_ends": snap.worker_ends,
                        **work_split(snap),
                    },  # fmt: skip
                    transcript=transcript(snap, self.ctx.tokenizer),
                )
            )
        return outcomes


@register_protocol("thinker_writer")
class ThinkerWriterProtocol(Protocol):
    """Runs one generation at a time: its gates pause one stream for the other, which the batcher's
    one-coroutine-per-generation model does not express yet."""

    batchable = False

    def job(self, problem: str, point: GridPoint) -> BatchJob:
        raise NotImplementedError("thinker_writer runs unbatched (Protocol.generate)")

    def generate(self, problem: str, point: GridPoint) -> dict:
        g = self.ctx.cfg.generation
        options = ThinkerWriterOptions(
            budgets=list(g.budgets),
            sampling=generation_options(self.ctx.cfg, 1, "contiguous").sampling,
            gate_min_tokens=self.ctx.cfg.protocol.gate_min_tokens,
            early_stop=g.early_stop,
            finisher_max_tokens=g.finisher_max_tokens,
        )
        generator = ThinkerWriterGenerator(self.ctx.lm, self.ctx.tokenizer, options, **answer_hooks(self.ctx))
        return generator.generate(problem)

    def outcomes(self, snapshots: dict) -> list[BudgetOutcome]:
        return [
            BudgetOutcome(
                budget=budget,
                tokens_per_worker=snap.steps,
                total_tokens=snap.writer_tokens + snap.thinker_tokens,
                wall_seconds=snap.wall_seconds,
                response=snap.response,
                finished_early=snap.finished_early,
                extra={
                    "thinker_text": snap.thinker_text,
                    "writer_tokens": snap.writer_tokens,
                    "thinker_tokens": snap.thinker_tokens,
                    "gates": [asdict(x) for x in snap.gates],
                },
            )  # fmt: skip
            for budget, snap in sorted(snapshots.items())
        ]
