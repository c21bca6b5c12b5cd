"""The Hogwild! decoding loop for N workers.

One batched forward per step: every worker feeds what it has not yet written (its last sampled token,
plus a step prefix when it starts a new step) into its own block, attending over its layout view. When a
worker's step ends (a paragraph break after a sentence end), the step moves to the shared history
without recomputation. Budget snapshots capture the state at each tokens-per-worker budget of one run,
and an s1-style finisher asks for a short ``\\boxed{`` answer at each.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from hogwild_bench.engine.layouts import HISTORY, PROMPT, Isolated, Layout, get_layout, step_block
from hogwild_bench.engine.model import HogwildLM, Write
from hogwild_bench.engine.prompts import PromptFormat
from hogwild_bench.engine.sampling import Sampler, SamplingParams

FINISHER = "finisher"
HEADER_PREFILL_MODES = ("standalone", "in_context")
_SENTENCE_THEN_PARAGRAPH = re.compile(r"[.!?][)\]*\"'$`]*[ \t]*\n\n$")


class ParagraphBoundary:
    """A step ends at a paragraph break (``\\n\\n``) right after the end of a sentence, as in the paper."""

    def __init__(self, tokenizer, lookback: int = 8):
        self.tokenizer, self.lookback = tokenizer, lookback

    def __call__(self, step_tokens: Sequence[int]) -> bool:
        tail = self.tokenizer.decode(list(step_tokens[-self.lookback :]))
        return bool(_SENTENCE_THEN_PARAGRAPH.search(tail))


def closed_boxed_answer(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` in ``text`` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    while start != -1:
        depth, i = 1, start + len("\\boxed{")
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start + len("\\boxed{") : i - 1]
        start = text.rfind("\\boxed{", 0, start)
    return None


@dataclass
class Snapshot:
    """The full state at one tokens-per-worker budget, plus the finisher's answer."""

    budget: int
    tokens_per_worker: int
    finished_early: bool
    blocks: dict[str, list[int]]
    worker_tokens: list[list[int]]
    steps_per_worker: list[int]
    response: str
    answer: str
    wall_seconds: float
    worker_answers: list[str] = field(default_factory=list)  # per_worker mode: each worker's own answer

    @property
    def total_tokens(self) -> int:
        return sum(len(tokens) for tokens in self.worker_tokens)


@dataclass
class GenerationResult:
    snapshots: dict[int, Snapshot]
    prompt: str
    finished_early: bool
    tokens_per_worker: int
    wall_seconds: float


@dataclass
class GenerationOptions:
    """Everything that shapes one Hogwild! generation apart from the model and the problem."""

    n_workers: int = 2
    layout: str | Layout = "combined"
    budgets: Sequence[int] = (1024,)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    collab_interval: int | None = 1024
    header_prefill: str = "standalone"
    early_stop: bool = True
    finisher_max_tokens: int = 16
    forbid_special_tokens: bool = True
    first_steps: Sequence[str] | None = None
    per_worker: bool = False  # workers stop on their own final answer, each is finished from its own view

    def __post_init__(self):
        if self.n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {self.n_workers}")
        if not self.budgets or any(int(b) < 1 for b in self.budgets):
            raise ValueError(f"budgets must be positive token counts, got {list(self.budgets)}")
        if self.header_prefill not in HEADER_PREFILL_MODES:
            raise ValueError(
                f"unknown header_prefill {self.header_prefill!r}; valid: {', '.join(HEADER_PREFILL_MODES)}"
            )
        self.budgets = tuple(sorted({int(b) for b in self.budgets}))
        self.layout = get_layout(self.layout)


class HogwildGenerator:
    """Runs Hogwild! generation for one problem at a time.

    ``boundary`` decides when a worker's step ends (default: `ParagraphBoundary`); ``on_forward`` is called
    after every forward with ``(writes, logits)`` (used by tests and progress displays).
    """

    def __init__(
        self,
        lm: HogwildLM,
        tokenizer,
        options: GenerationOptions | None = None,
        prompt_format: PromptFormat | None = None,
        boundary: Callable[[Sequence[int]], bool] | None = None,
        on_forward: Callable | None = None,
    ):
        self.lm, self.tokenizer = lm, tokenizer
        self.options = options or GenerationOptions()
        self.layout: Layout = self.options.layout
        self.fmt = prompt_format or PromptFormat(tokenizer, self.options.n_workers, layout=self.layout.name)
        self.boundary = boundary or ParagraphBoundary(tokenizer)
        self.on_forward = on_forward
        self._special = list(tokenizer.all_special_ids) if self.options.forbid_special_tokens else []

    # -- setup -------------------------------------------------------------------------------------
    def _prefill_constants(self, cache) -> None:
        view0 = self.layout.view(0, self.options.n_workers)
        for name, text in self.layout.constants.items():
            ids = self.fmt.encode(text)
            cache.clear(name)
            if not ids:
                continue
            context = None
            if self.options.header_prefill == "in_context":
                context = view0[: view0.index(name)] if name in view0 else [PROMPT]
            self.lm.prefill(cache, name, ids, context=context)

    def _reserve(self, cache, n: int, views) -> None:
        """Storage for the whole budget up front (step prefixes and prompts add ~25%); beyond it, blocks
        still grow by doubling."""
        if not hasattr(cache, "reserve"):
            return
        per_worker = int(1.25 * self.options.budgets[-1]) + 256
        steps = [step_block(i) for i in range(n)]
        if self.layout.has_history:  # a step block holds one step at a time; the history holds them all
            cache.reserve(steps, min(per_worker, 1024), like=PROMPT)
            cache.reserve([HISTORY], n * per_worker, like=PROMPT)
        else:
            cache.reserve(steps, per_worker, like=PROMPT)
        cache.reserve([FINISHER], 64 + self.options.finisher_max_tokens, like=PROMPT)

    def _forward(self, cache, writes: list[Write]):
        logits = self.lm.forward(cache, writes)
        if self.on_forward is not None:
            self.on_forward(writes, logits)
        return logits

    # -- the loop ----------------------------------------------------------------------------------
    def generate(self, problem: str) -> GenerationResult:
        opts, n = self.options, self.options.n_workers
        started = time.perf_counter()
        sampler = Sampler(opts.sampling, self._special)
        cache = self.lm.new_cache()
        views = self.layout.views(n)
        prompt = self.fmt.prompt_text(problem, has_history=self.layout.has_history)
        prompt_ids = self.fmt.encode(prompt)
        first_steps = opts.first_steps if opts.first_steps is not None else [self.fmt.first_step(i) for i in range(n)]
        if len(first_steps) != n:
            raise ValueError(f"first_steps has {len(first_steps)} texts for {n} workers")
        pending = [self.fmt.encode(text) for text in first_steps]
        worker_tokens = [list(p) for p in pending]
        if not all(pending):
            if any(pending) or (n > 1 and not isinstance(self.layout, Isolated)):
                raise ValueError("first steps must be all non-empty, or all empty for one worker / isolated workers")
            # workers with no opening text start from the prompt's last token, each in its own block
            prompt_ids, pending = prompt_ids[:-1], [prompt_ids[-1:] for _ in range(n)]
        step_tokens = [list(p) for p in pending]
        self.lm.prefill(cache, PROMPT, prompt_ids)
        self._reserve(cache, n, views)
        self._prefill_constants(cache)
        steps = [1] * n
        since_collab = [0] * n
        stopped = [False] * n  # per_worker mode: workers that wrote their final answer
        sampled, finished = 0, False
        snapshots: dict[int, Snapshot] = {}
        max_budget = opts.budgets[-1]

        while True:
            rows = [i for i in range(n) if pending[i]]
            row_logits = self._forward(cache, [Write(views[i], pending[i]) for i in rows])
            logits = {i: row_logits[k] for k, i in enumerate(rows)}
            pending = [[] for _ in range(n)]
            due = [b for b in opts.budgets if b == sampled or (finished and b > sampled)]
            for budget in due:
                snapshots[budget] = self._snapshot(
                    cache, budget, sampled, finished, worker_tokens, steps, started, stopped
                )
            if finished or sampled >= max_budget:
                break
            active = [i for i in range(n) if not stopped[i]]
            new_tokens = sampler(torch.stack([logits[i] for i in active]))
            sampled += 1
            for i, token in zip(active, new_tokens):
                worker_tokens[i].append(token)
                step_tokens[i].append(token)
                since_collab[i] += 1
                pending[i] = [token]
                if self.boundary(step_tokens[i]):
                    # the token that ended the step leads the next one, as it is not yet in the cache
                    if self.layout.has_history:
                        cache.commit(step_block(i), HISTORY)
                    steps[i] += 1
                    start = self.fmt.step_prefix(i, steps[i])
                    if opts.collab_interval and since_collab[i] >= opts.collab_interval:
                        start += self.fmt.collab_prompt
                        since_collab[i] = 0
                    extra = self.fmt.encode(start)
                    pending[i] = [token, *extra]
                    worker_tokens[i].extend(extra)
                    step_tokens[i] = list(pending[i])
                    if self.layout.has_history and opts.header_prefill == "in_context":
                        self._prefill_constants(cache)
                if opts.per_worker and opts.early_stop and self._wrote_final_answer(worker_tokens[i]):
                    stopped[i] = True
            if opts.early_stop:
                if opts.per_worker:
                    finished = all(stopped)
                elif any(self._wrote_final_answer(t) for t in worker_tokens):
                    finished = True
        return GenerationResult(
            snapshots=snapshots,
            prompt=prompt,
            finished_early=finished,
            tokens_per_worker=sampled,
            wall_seconds=time.perf_counter() - started,
        )

    def _wrote_final_answer(self, tokens: list[int]) -> bool:
        return closed_boxed_answer(self.tokenizer.decode(tokens[-64:])) is not None

    # -- snapshots and the finisher ----------------------------------------------------------------
    def _snapshot(self, cache, budget, sampled, finished, worker_tokens, steps, started, stopped) -> Snapshot:
        n = self.options.n_workers
        view = self.layout.finisher_view(n)
        body = self.tokenizer.decode(cache.tokens(view[1:]))
        own_answers = [closed_boxed_answer(self.tokenizer.decode(t)) for t in worker_tokens]
        if finished and not self.options.per_worker:
            answer = next(a for a in own_answers if a is not None)
            response = body
        else:
            answer = own_answers[0] if stopped[0] else self.finish(cache, view)
            response = body if stopped[0] else body + self.fmt.finisher_suffix + answer + "}"
        worker_answers = []
        if self.options.per_worker:  # each worker's own answer, from its own view
            for i in range(n):
                worker_answers.append(own_answers[i] if stopped[i] else self.finish(cache, self.layout.view(i, n)))
        return Snapshot(
            budget=budget,
            tokens_per_worker=sampled,
            finished_early=finished,
            blocks={name: list(block.token_ids) for name, block in cache.blocks.items() if name != FINISHER},
            worker_tokens=[list(t) for t in worker_tokens],
            steps_per_worker=list(steps),
            response=response,
            answer=answer,
            wall_seconds=time.perf_counter() - started,
            worker_answers=worker_answers,
        )

    def finish(self, cache, view: Sequence[str]) -> str:
        """s1-style finisher after ``view`` (see `finish_boxed`); the generation goes on unchanged."""
        return finish_boxed(
            self.lm, cache, view, self.fmt.encode(self.fmt.finisher_suffix), self.tokenizer,
            self.options.finisher_max_tokens, self._special, forward=self._forward,
        )  # fmt: skip


def finish_boxed(lm, cache, view, suffix_ids, tokenizer, max_tokens: int, forbidden, forward=None) -> str:
    """Append the forcing suffix (ending in ``\\boxed{``) after ``view`` and greedily decode the box content.

    Runs in a scratch block that is emptied afterwards, so the cache is left as it was."""
    forward = forward or lm.forward
    cache.clear(FINISHER)
    context = [*view, FINISHER]
    logits = lm.prefill(cache, FINISHER, suffix_ids, context=view)
    greedy = Sampler(SamplingParams(), forbidden)
    out: list[int] = []
    for _ in range(max_tokens):
        out.append(greedy(logits[None])[0])
        if closed_boxed_answer("\\boxed{" + tokenizer.decode(out)) is not None:
            break
        logits = forward(cache, [Write(context, out[-1:])])[0]
    cache.clear(FINISHER)
    text = tokenizer.decode(out)
    closed = closed_boxed_answer("\\boxed{" + text)
    return closed if closed is not None else text
