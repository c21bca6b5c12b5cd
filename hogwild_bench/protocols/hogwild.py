"""``protocol=hogwild``: N workers over one shared cache (the paper's method), and ``protocol=single``."""

from __future__ import annotations

from hogwild_bench.answers import BOXED_FINISHER, stop_on_boxed
from hogwild_bench.collaboration import transcript_of
from hogwild_bench.engine import Combined, GenerationOptions, HogwildGenerator, PromptFormat, SamplingParams, get_layout
from hogwild_bench.engine.batch import BatchJob
from hogwild_bench.protocols.base import BudgetOutcome, GridPoint, Protocol, register_protocol


def layout_of(cfg, name: str):
    """The named layout; ``layout.headers=false`` gives combined plain blank lines instead of its headers."""
    if name == "combined" and not cfg.layout.headers:
        return Combined(others_header="\n\n", separator="\n\n", own_header="")
    return get_layout(name)


def generation_options(cfg, workers: int, layout, **overrides) -> GenerationOptions:
    g = cfg.generation
    options = dict(
        n_workers=workers,
        layout=layout_of(cfg, layout) if isinstance(layout, str) else layout,
        budgets=list(g.budgets),
        sampling=SamplingParams(temperature=g.temperature, top_p=g.top_p, seed=g.seed),
        collab_interval=g.collab_interval or None,
        header_prefill=str(getattr(g.header_prefill, "value", g.header_prefill)),
        early_stop=g.early_stop,
        finisher_max_tokens=g.finisher_max_tokens,
        worker_eos=str(getattr(g.worker_eos, "value", g.worker_eos)),
    )
    options.update(overrides)
    return GenerationOptions(**options)


def answer_hooks(ctx) -> dict:
    """The math task's hooks for the engine: stop once the problem's answers are boxed (all parts of a
    multi-problem task), and the boxed finisher at budgets that end without one."""
    return {"stop": stop_on_boxed(ctx.tokenizer, count=ctx.cfg.dataset.group_size), "finisher": BOXED_FINISHER}


def generator(ctx, options: GenerationOptions, fmt: PromptFormat) -> HogwildGenerator:
    return HogwildGenerator(ctx.lm, ctx.tokenizer, options, prompt_format=fmt, **answer_hooks(ctx))


def prompt_format(ctx, workers: int, layout: str, **overrides) -> PromptFormat:
    m = ctx.cfg.model
    return PromptFormat(ctx.tokenizer, workers, layout=layout, system_as_user=m.system_as_user,
                        think_prefix=m.think_prefix, style=ctx.prompt_style, **overrides)  # fmt: skip


def transcript(snap, tokenizer) -> list:
    return transcript_of(snap.worker_tokens, snap.worker_token_steps, snap.worker_inserted, tokenizer)


def work_split(snap) -> dict:
    return {"worker_written_tokens": [flags.count(False) for flags in snap.worker_inserted]}


def outcomes(result, tokenizer) -> list[BudgetOutcome]:
    """One outcome per budget. The budgets a finished generation had not reached share one snapshot's token
    lists (`HogwildGenerator.steps`): their texts and transcript are decoded once."""
    decoded: dict[int, tuple[list[str], list]] = {}
    out = []
    for budget, snap in sorted(result.snapshots.items()):
        if id(snap.worker_tokens) not in decoded:
            decoded[id(snap.worker_tokens)] = ([tokenizer.decode(t) for t in snap.worker_tokens],
                                               transcript(snap, tokenizer))  # fmt: skip
        texts, pieces = decoded[id(snap.worker_tokens)]
        extra = {
            "finisher_answer": snap.answer,
            "steps_per_worker": snap.steps_per_worker,
            "answered_by": snap.answered_by,
            "worker_ends": snap.worker_ends,
            "worker_texts": texts,
            **work_split(snap),
        }
        out.append(BudgetOutcome(budget=budget, tokens_per_worker=snap.tokens_per_worker,
                                 total_tokens=snap.total_tokens, sampled_tokens=snap.sampled_tokens,
                                 wall_seconds=snap.wall_seconds,
                                 response=snap.response, finished_early=snap.finished_early, extra=extra,
                                 transcript=pieces))  # fmt: skip
    return out


def generation_job(gen: HogwildGenerator, problem: str) -> BatchJob:
    """``gen`` solving ``problem`` as a batchable job whose result is its `GenerationResult`."""

    def start(cache):
        return (yield from gen.steps(cache, problem))

    return BatchJob(key=None, start=start, rows=gen.options.n_workers, kv_tokens=gen.worst_case_tokens(problem))


class GenerationProtocol(Protocol):
    """A protocol whose job is one `HogwildGenerator` run: one outcome per budget of its `GenerationResult`."""

    def outcomes(self, result) -> list[BudgetOutcome]:
        return outcomes(result, self.ctx.tokenizer)


@register_protocol("hogwild")
class HogwildProtocol(GenerationProtocol):
    def job(self, problem: str, point: GridPoint) -> BatchJob:
        options = generation_options(self.ctx.cfg, point.workers, point.layout)
        g = self.ctx.cfg.generation
        fmt = prompt_format(self.ctx, point.workers, point.layout, step_labels=g.step_labels, greeting=g.greeting)
        return generation_job(generator(self.ctx, options, fmt), problem)


@register_protocol("single")
class SingleProtocol(GenerationProtocol):
    """One worker, plain chain of thought: no step labels, no collaboration prompt; same budgets and
    finisher. The cache layout does not matter for one worker without steps (contiguous is used)."""

    def job(self, problem: str, point: GridPoint) -> BatchJob:
        options = generation_options(self.ctx.cfg, 1, "contiguous", collab_interval=None, first_steps=[""])
        fmt = prompt_format(self.ctx, 1, "contiguous", step_labels=False)
        return generation_job(generator(self.ctx, options, fmt), problem)
