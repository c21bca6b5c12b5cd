"""``protocol=hogwild``: N workers over one shared cache (the paper's method), and ``protocol=single``."""

from __future__ import annotations

from hogwild_bench.engine import GenerationOptions, HogwildGenerator, PromptFormat, SamplingParams
from hogwild_bench.protocols.base import BudgetOutcome, GridPoint, Protocol, register_protocol


def generation_options(cfg, workers: int, layout: str, **overrides) -> GenerationOptions:
    g = cfg.generation
    options = dict(
        n_workers=workers,
        layout=layout,
        budgets=list(g.budgets),
        sampling=SamplingParams(temperature=g.temperature, top_p=g.top_p, seed=g.seed),
        collab_interval=g.collab_interval or None,
        header_prefill=str(getattr(g.header_prefill, "value", g.header_prefill)),
        early_stop=g.early_stop,
        finisher_max_tokens=g.finisher_max_tokens,
    )
    options.update(overrides)
    return GenerationOptions(**options)


def prompt_format(ctx, workers: int, layout: str, **overrides) -> PromptFormat:
    m = ctx.cfg.model
    return PromptFormat(
        ctx.tokenizer, workers, layout=layout, system_as_user=m.system_as_user, think_prefix=m.think_prefix, **overrides
    )


def outcomes(result) -> list[BudgetOutcome]:
    return [
        BudgetOutcome(
            budget=budget,
            tokens_per_worker=snap.tokens_per_worker,
            total_tokens=snap.total_tokens,
            wall_seconds=snap.wall_seconds,
            response=snap.response,
            finished_early=snap.finished_early,
            extra={"finisher_answer": snap.answer, "steps_per_worker": snap.steps_per_worker},
        )
        for budget, snap in sorted(result.snapshots.items())
    ]


@register_protocol("hogwild")
class HogwildProtocol(Protocol):
    def run(self, problem: str, point: GridPoint) -> list[BudgetOutcome]:
        options = generation_options(self.ctx.cfg, point.workers, point.layout)
        fmt = prompt_format(self.ctx, point.workers, point.layout)
        return outcomes(HogwildGenerator(self.ctx.lm, self.ctx.tokenizer, options, prompt_format=fmt).generate(problem))


@register_protocol("single")
class SingleProtocol(Protocol):
    """One worker, plain chain of thought: no step labels, no collaboration prompt; same budgets and
    finisher. The cache layout does not matter for one worker without steps (contiguous is used)."""

    def run(self, problem: str, point: GridPoint) -> list[BudgetOutcome]:
        options = generation_options(self.ctx.cfg, 1, "contiguous", collab_interval=None, first_steps=[""])
        fmt = prompt_format(self.ctx, 1, "contiguous", step_labels=False)
        return outcomes(HogwildGenerator(self.ctx.lm, self.ctx.tokenizer, options, prompt_format=fmt).generate(problem))
