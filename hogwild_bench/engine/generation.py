"""The Hogwild! decoding loop for N workers.

One batched forward per step: every worker feeds what it has not yet written (its last sampled token,
plus a step prefix when it starts a new step) into its own block, attending over its layout view. When a
worker's step ends (a paragraph break after a sentence end), the step moves to the shared history
without recomputation. Budget snapshots capture the state at each tokens-per-worker budget of one run.

The loop is task-agnostic: what counts as a final answer (``stop``) and how an answer is forced at a
budget (``finisher``) are hooks the caller passes in (`hogwild_bench.answers` has the math ones).

A worker that samples an end-of-turn token (EOS, ``<|im_end|>``, ...) is *done*: it writes nothing more,
its text stays visible (its unfinished step is committed to the history), and the generation ends when
every worker is done or one worker's text satisfies ``stop``. ``worker_eos="forbid"`` instead masks those
tokens, as the paper's setup does (models then tend to spell the token out as text).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

import torch

from hogwild_bench.engine.blocks import storage_tokens
from hogwild_bench.engine.layouts import HISTORY, PROMPT, TEMPLATE, Isolated, Layout, get_layout, step_block
from hogwild_bench.engine.model import HogwildLM, Write
from hogwild_bench.engine.pieces import rule_decoder, token_pieces, vocabulary
from hogwild_bench.engine.prompts import PromptFormat
from hogwild_bench.engine.sampling import Draw, Sampler, SamplingParams, draw_tokens

T = TypeVar("T")
FINISHER = "finisher"
PROBLEM_MARK = "<<hogwild problem>>"  # rendered in place of a problem, to find the prompt's text before it
HEADER_PREFILL_MODES = ("standalone", "in_context")
WORKER_EOS_MODES = ("done", "forbid")
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>", "</s>")
_SENTENCE_THEN_PARAGRAPH = re.compile(r"[.!?][)\]*\"'$`]*[ \t]*\n\n$")

# a worker's tokens so far -> it has written its final answer. A rule may carry ``triggered_by(new_tokens)``: false
# when none of the tokens written since its last (false) answer could make it true; the loop then skips the call
# (it runs on every sampled token of every row)
StopRule = Callable[[Sequence[int]], bool]
# A generation written as a coroutine: it yields the rows of each forward it needs and is sent their
# last-token logits ``[rows, V]``, and yields a `Draw` for each token choice and is sent the token ids; it
# returns its result. `drive` runs one alone; `engine.batch` runs many, their draws in one call per step.
Steps = Generator["list[Write] | Draw", "torch.Tensor | list[int]", T]


@dataclass
class Window:
    """Decode steps a batch ran ahead for a generation before reading any of their tokens (multi-step windows),
    sent in answer to its `Draw`. ``tokens[0]`` answers the draw. Each later step ``j`` ran the forward the batch
    guessed the generation would ask for next -- every row of the draw writing its token of step ``j - 1`` into
    its own block, the views unchanged -- and drew ``tokens[j]`` from its logits with the generation's sampler
    (at the counter that draw would have had). The generation takes step ``j`` only when it asks for exactly that
    forward and draws from all of its rows, so its tokens are what it would get step by step; ``accept`` (called
    with the tokens the step wrote, one per row) makes the step's K/V part of the cache (the batch holds them back
    until then). The first request that differs ends the window; the steps left are void."""

    tokens: list[list[int]]
    accept: Callable[[list[int]], None]
    used: int = 1  # steps taken so far
    rows: list[int] = field(default_factory=list)  # the workers of the draw, in row order (set by the generation)

    def ran(self, rows: list[int], pending: list[list[int]], active: list[int]) -> bool:
        """Whether the forward of ``rows`` writing ``pending`` is the next step this window ran, and its draw
        (of the ``active`` workers) the one the window made."""
        if self.used >= len(self.tokens) or rows != self.rows or active != rows:
            return False
        return all(len(p) == 1 and p[0] == t for p, t in zip(pending, self.tokens[self.used - 1]))

    def take(self) -> list[int]:
        """The tokens of the step just accepted."""
        self.used += 1
        return self.tokens[self.used - 1]


class Finisher(Protocol):
    """Forces an answer at a budget: ``suffix`` is appended after the finisher view, then tokens are decoded
    greedily until ``done(text)``; ``answer(text)`` reads the answer and ``completed_response`` the full
    response it completes."""

    suffix: str

    def done(self, text: str) -> bool: ...

    def answer(self, text: str) -> str: ...

    def completed_response(self, body: str, answer: str) -> str: ...


class ParagraphBoundary:
    """A step ends at a paragraph break (``\\n\\n``) right after the end of a sentence, as in the paper."""

    def __init__(self, tokenizer, lookback: int = 8):
        self.tokenizer, self.lookback = tokenizer, lookback
        self.pieces, self.decode = token_pieces(tokenizer), rule_decoder(tokenizer)

    def __call__(self, step_tokens: Sequence[int]) -> bool:
        last = self.pieces[step_tokens[-1]] if step_tokens else ""
        if last and not last.endswith("\n"):  # the text can only end in a paragraph break if this token does
            return False
        tail = self.decode(step_tokens[-self.lookback :])
        return bool(_SENTENCE_THEN_PARAGRAPH.search(tail))


def end_of_turn_ids(tokenizer) -> set[int]:
    """The tokenizer's EOS and the end-of-turn tokens of common chat templates that it knows."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = vocabulary(tokenizer)
    ids |= {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab}
    return ids


@dataclass
class Snapshot:
    """The full state at one tokens-per-worker budget, plus the finisher's answer (None: no finisher ran)."""

    budget: int
    tokens_per_worker: int
    finished_early: bool
    blocks: dict[str, list[int]]
    worker_tokens: list[list[int]]
    steps_per_worker: list[int]
    response: str
    answer: str | None
    wall_seconds: float
    worker_responses: list[str] = field(default_factory=list)  # per_worker mode: each worker's own response
    answered_by: int | None = None  # the first worker whose text satisfied ``stop``
    worker_ends: list[tuple[str, int] | None] = field(default_factory=list)  # ("eos"|"answer", at token) or None
    # per worker, aligned with worker_tokens: the decode step each token entered the cache at (0: before the
    # first step), and whether the engine inserted it (step labels, collaboration prompts) rather than sampled it
    worker_token_steps: list[list[int]] = field(default_factory=list)
    worker_inserted: list[list[bool]] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        """Every token in the workers' caches: sampled, and inserted by the engine (step labels, prompts)."""
        return sum(len(tokens) for tokens in self.worker_tokens)

    @property
    def sampled_tokens(self) -> int:
        """The tokens the workers generated (drawn from the model): `total_tokens` less the inserted ones."""
        return self.total_tokens - sum(sum(flags) for flags in self.worker_inserted)


@dataclass
class GenerationResult:
    snapshots: dict[int, Snapshot]
    prompt: str
    finished_early: bool
    tokens_per_worker: int
    wall_seconds: float


@dataclass
class GenerationOptions:
    """Everything that shapes one Hogwild! generation apart from the model, the problem and the hooks."""

    n_workers: int = 2
    layout: str | Layout = "combined"
    budgets: Sequence[int] = (1024,)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    collab_interval: int | None = 1024
    header_prefill: str = "standalone"
    early_stop: bool = True
    finisher_max_tokens: int = 16
    forbid_special_tokens: bool = True
    worker_eos: str = "done"
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
        if self.worker_eos not in WORKER_EOS_MODES:
            raise ValueError(f"unknown worker_eos {self.worker_eos!r}; valid: {', '.join(WORKER_EOS_MODES)}")
        if self.finisher_max_tokens < 1:
            raise ValueError(f"finisher_max_tokens must be >= 1, got {self.finisher_max_tokens}")
        self.budgets = tuple(sorted({int(b) for b in self.budgets}))
        self.layout = get_layout(self.layout)


class ReservingCache(Protocol):
    """What the loop needs from a cache beyond forwards: storage for the whole budget up front."""

    def reserve(self, names: Sequence[str], tokens: int, like: str) -> None: ...


@dataclass
class LoopState:
    """Per-generation state of the decoding loop."""

    started: float
    worker_tokens: list[list[int]]
    step_tokens: list[list[int]]
    pending: list[list[int]]
    steps: list[int]
    since_collab: list[int]
    ends: list[tuple[str, int] | None]  # why and when each worker stopped writing
    token_steps: list[list[int]] = field(default_factory=list)  # aligned with worker_tokens (see Snapshot)
    inserted: list[list[bool]] = field(default_factory=list)
    lead: list[str] = field(default_factory=list)  # the blocks every view opens with: [TEMPLATE], or none
    answered_by: int | None = None
    sampled: int = 0
    finished: bool = False
    stop_checked: list[int] = field(default_factory=list)  # per worker: tokens the stop rule has answered false for

    def done(self, worker: int) -> bool:
        return self.ends[worker] is not None


class HogwildGenerator:
    """Runs Hogwild! generation for one problem at a time.

    ``boundary`` decides when a worker's step ends (default: `ParagraphBoundary`); ``stop`` says when a
    worker has written its final answer (None: run to the last budget); ``finisher`` forces an answer at
    each budget that ends without one (None: the response is the text as written); ``on_forward`` is called
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
        stop: StopRule | None = None,
        finisher: Finisher | None = None,
    ):
        self.lm, self.tokenizer = lm, tokenizer
        self.options = options or GenerationOptions()
        self.layout: Layout = self.options.layout
        self.fmt = prompt_format or PromptFormat(tokenizer, self.options.n_workers, layout=self.layout.name)
        self.boundary = boundary or ParagraphBoundary(tokenizer)
        self.on_forward = on_forward
        self.stop, self.finisher = stop, finisher
        special = set(tokenizer.all_special_ids) if self.options.forbid_special_tokens else set()
        self.eos_ids = end_of_turn_ids(tokenizer) if self.options.worker_eos == "done" else set()
        self._forbidden = sorted(special - self.eos_ids)  # while writing: a worker may end its turn
        self._finisher_forbidden = sorted(special | self.eos_ids)  # a forced answer must be written out
        self._template: list[int] | None = None

    # -- the prompt's shared opening ----------------------------------------------------------------
    def template_ids(self) -> list[int]:
        """The tokens of the prompt's text before the problem (the chat header and the collaboration rules):
        the same for every problem this generator runs."""
        if self._template is None:
            text = self.fmt.prompt_text(PROBLEM_MARK, has_history=self.layout.has_history)
            head, found, _ = text.partition(PROBLEM_MARK)
            self._template = self.fmt.encode(head) if found else []
        return self._template

    def shared_opening(self, prompt_ids: Sequence[int]) -> list[int]:
        """The leading tokens of ``prompt_ids`` that are the template's: written once into the `TEMPLATE` block,
        which a batch shares between all generations that open with them (their K/V depend only on these tokens
        and their positions). The template's last token is left out, as the tokenizer may merge it with the
        problem's first, and so is the prompt's last: the ``prompt`` block keeps at least one token."""
        shared = 0
        for a, b in zip(self.template_ids()[:-1], prompt_ids[:-1]):
            if a != b:
                break
            shared += 1
        return list(prompt_ids[:shared])

    # -- setup -------------------------------------------------------------------------------------
    def _prefill_constants(self, cache, lead: list[str]) -> Steps[None]:
        view0 = [*lead, *self.layout.view(0, self.options.n_workers)]
        for name, text in self.layout.constants.items():
            ids = self.fmt.encode(text)
            cache.clear(name)
            if not ids:
                continue
            if self.options.header_prefill == "in_context":
                context = view0[: view0.index(name)] if name in view0 else [*lead, PROMPT]
                yield from self._forward([Write([*context, name], ids)])
            else:
                yield from self._forward([Write([name], ids)])

    def reserved_tokens(self, prompt_tokens: int) -> dict[str, int]:
        """The tokens `_reserve` preallocates per block (the prompt block holds ``prompt_tokens``): what a
        generation is expected to hold at its last budget (admission control sizes batches by it)."""
        n, layout = self.options.n_workers, self.layout
        per_worker = self._per_worker_tokens()
        sizes = {PROMPT: prompt_tokens, FINISHER: 64 + self.options.finisher_max_tokens}
        for i in range(n):
            sizes[step_block(i)] = min(per_worker, 1024) if layout.has_history else per_worker
        if layout.has_history:
            sizes[HISTORY] = n * per_worker
        sizes.update({name: len(self.fmt.encode(text)) for name, text in layout.constants.items()})
        return sizes

    def _per_worker_tokens(self) -> int:
        """What one worker writes up to the last budget: its tokens plus step prefixes and prompts (~25%)."""
        return int(1.25 * self.options.budgets[-1]) + 256

    def worst_case_tokens(self, problem: str) -> int:
        """Token slots of storage this generation allocates up to its last budget (capacity rounding included).

        Under layouts with a history a step block is preallocated for at most 1024 tokens, but a step that
        never reaches a paragraph break (code, a long list) grows by doubling up to the worker's whole budget:
        admission counts it at that size, or a batch of such generations runs out of memory mid-step."""
        prompt_ids = self.fmt.encode(self.fmt.prompt_text(problem, has_history=self.layout.has_history))
        opening = len(self.shared_opening(prompt_ids))
        sizes = self.reserved_tokens(len(prompt_ids) - opening) | {TEMPLATE: opening}  # a batch may share TEMPLATE
        sizes.update({step_block(i): self._per_worker_tokens() for i in range(self.options.n_workers)})
        return sum(storage_tokens(size) for size in sizes.values() if size)

    def _reserve(self, cache: ReservingCache, n: int) -> None:
        """Storage for the whole budget up front (step prefixes and prompts add ~25%); beyond it, blocks
        still grow by doubling. The constant blocks too: a block's first write, with no storage yet, cannot
        replay from a batch's bucket graphs (it runs in an eager forward of its own)."""
        sizes = self.reserved_tokens(0)
        for name in [*(step_block(i) for i in range(n)), HISTORY, FINISHER, *self.layout.constants]:
            if name in sizes:
                cache.reserve([name], sizes[name], like=PROMPT)

    def _forward(self, writes: list[Write]) -> Steps[torch.Tensor]:
        logits = yield writes
        if self.on_forward is not None:
            self.on_forward(writes, logits)
        return logits

    def _start(self, cache, problem: str) -> Steps[tuple[str, LoopState]]:
        """Prefill the prompt and constant blocks; the state holds each worker's opening text, not yet written."""
        n = self.options.n_workers
        prompt = self.fmt.prompt_text(problem, has_history=self.layout.has_history)
        prompt_ids = self.fmt.encode(prompt)
        first_steps = self.options.first_steps
        if first_steps is None:
            first_steps = [self.fmt.first_step(i) for i in range(n)]
        if len(first_steps) != n:
            raise ValueError(f"first_steps has {len(first_steps)} texts for {n} workers")
        pending = [self.fmt.encode(text) for text in first_steps]
        worker_tokens = [list(p) for p in pending]
        if not all(pending):
            if any(pending) or (n > 1 and not isinstance(self.layout, Isolated)):
                raise ValueError("first steps must be all non-empty, or all empty for one worker / isolated workers")
            # workers with no opening text start from the prompt's last token, each in its own block
            prompt_ids, pending = prompt_ids[:-1], [prompt_ids[-1:] for _ in range(n)]
        opening = self.shared_opening(prompt_ids)
        lead = [TEMPLATE] if opening else []
        if opening and cache.share(TEMPLATE, opening):
            yield from self._forward([Write([TEMPLATE], opening)])
        problem_ids = prompt_ids[len(opening) :]
        if lead:  # storage first: a short problem's write may then replay with a batch's decode rows
            cache.reserve([PROMPT], len(problem_ids), like=TEMPLATE)
        yield from self._forward([Write([*lead, PROMPT], problem_ids)])
        self._reserve(cache, n)
        yield from self._prefill_constants(cache, lead)
        state = LoopState(
            started=time.perf_counter(), worker_tokens=worker_tokens, step_tokens=[list(p) for p in pending],
            pending=pending, steps=[1] * n, since_collab=[0] * n, ends=[None] * n,
            token_steps=[[0] * len(t) for t in worker_tokens], inserted=[[True] * len(t) for t in worker_tokens],
            stop_checked=[0] * n, lead=lead,
        )  # fmt: skip
        return prompt, state

    # -- the loop ----------------------------------------------------------------------------------
    def generate(self, problem: str) -> GenerationResult:
        """Generate for ``problem`` alone, on a new cache."""
        cache = self.lm.new_cache()
        return drive(self.steps(cache, problem), self.lm, cache)

    def steps(self, cache, problem: str) -> Steps[GenerationResult]:
        """The generation as a coroutine over ``cache`` (a fresh `HogwildCache`, or a namespace of a shared
        one): yields each forward's rows, is sent their logits, returns the result."""
        opts, n = self.options, self.options.n_workers
        sampler = Sampler(opts.sampling, self._forbidden)
        prompt, state = yield from self._start(cache, problem)
        views = [[*state.lead, *view] for view in self.layout.views(n)]
        snapshots: dict[int, Snapshot] = {}
        window: Window | None = None  # steps a batch ran ahead (see `Window`)
        while True:
            rows = [i for i in range(n) if state.pending[i]]
            row_logits, ahead = None, False
            if window is not None:
                active = [i for i in range(n) if not state.done(i)]
                ahead = window.ran(rows, [state.pending[i] for i in rows], active)
                window = window if ahead else None
            if ahead:
                window.accept(window.tokens[window.used - 1])
            elif rows:  # none when the last active workers just ended their turn
                row_logits = yield from self._forward([Write(views[i], state.pending[i]) for i in rows])
            state.pending = [[] for _ in range(n)]
            # a finished generation's remaining budgets all see this state: one snapshot (one finisher run) serves
            # them all; before it finishes, at most the budget just reached is due
            due = [b for b in opts.budgets if b == state.sampled or (state.finished and b > state.sampled)]
            if due:
                snap = yield from self._snapshot(cache, due[0], state)
                snapshots.update({budget: replace(snap, budget=budget) for budget in due})
            if state.finished or state.sampled >= opts.budgets[-1]:
                break
            active = [i for i in range(n) if not state.done(i)]
            if ahead:  # the window drew them, as this step's draw would have
                new_tokens = window.take()
                sampler.draws += len(new_tokens)
            else:
                # every active worker wrote a row (a worker that is done writes none, or its last token)
                active_logits = row_logits if active == rows else row_logits[[rows.index(i) for i in active]]
                answer = yield Draw(active_logits, sampler, takes_window=True)
                window, new_tokens = (answer, answer.tokens[0]) if isinstance(answer, Window) else (None, answer)
                if window is not None:
                    window.rows = active
            state.sampled += 1
            for i, token in zip(active, new_tokens):
                yield from self._take(cache, state, i, token)
            state.finished = all(state.done(i) for i in range(n)) or (
                state.answered_by is not None and not opts.per_worker
            )
        return GenerationResult(
            snapshots=snapshots,
            prompt=prompt,
            finished_early=state.finished,
            tokens_per_worker=state.sampled,
            wall_seconds=time.perf_counter() - state.started,
        )

    def _take(self, cache, state: LoopState, i: int, token: int) -> Steps[None]:
        """Worker ``i`` sampled ``token``: end its turn, or queue the token (and a new step's prefix)."""
        opts = self.options
        if token in self.eos_ids:  # the worker is done; what it wrote stays visible to the others
            state.ends[i] = ("eos", state.sampled)
            if self.layout.has_history and len(state.step_tokens[i]) > 0:
                cache.commit(step_block(i), HISTORY)
            return
        state.worker_tokens[i].append(token)
        state.token_steps[i].append(state.sampled)
        state.inserted[i].append(False)
        state.step_tokens[i].append(token)
        state.since_collab[i] += 1
        state.pending[i] = [token]
        if self.boundary(state.step_tokens[i]):
            # the token that ended the step leads the next one, as it is not yet in the cache
            if self.layout.has_history:
                cache.commit(step_block(i), HISTORY)
            state.steps[i] += 1
            start = self.fmt.step_prefix(i, state.steps[i])
            if opts.collab_interval and state.since_collab[i] >= opts.collab_interval:
                start += self.fmt.collab_prompt
                state.since_collab[i] = 0
            extra = self.fmt.encode(start)
            state.pending[i] = [token, *extra]
            state.worker_tokens[i].extend(extra)
            state.token_steps[i].extend([state.sampled] * len(extra))
            state.inserted[i].extend([True] * len(extra))
            state.step_tokens[i] = list(state.pending[i])
            if self.layout.has_history and opts.header_prefill == "in_context":
                yield from self._prefill_constants(cache, state.lead)
        if opts.early_stop and self.stop is not None and self._may_stop(state, i) and self.stop(state.worker_tokens[i]):
            if state.answered_by is None:
                state.answered_by = i
            if opts.per_worker:
                state.ends[i] = ("answer", state.sampled)

    def _may_stop(self, state: LoopState, i: int) -> bool:
        """Whether the stop rule must look at worker ``i``'s tokens: always, unless the rule says (its
        ``triggered_by``) that none of the tokens written since its last look could make it true. Marks the
        worker's tokens as looked at."""
        tokens, checked = state.worker_tokens[i], state.stop_checked
        new, checked[i] = tokens[checked[i] :], len(tokens)
        triggered_by = getattr(self.stop, "triggered_by", None)
        return triggered_by is None or triggered_by(new)

    # -- snapshots and the finisher ----------------------------------------------------------------
    def _respond(self, cache, view: Sequence[str], answered: bool, lead: list[str]) -> Steps[tuple[str, str | None]]:
        """The text of the layout's ``view`` after the prompt, completed by the finisher (reading ``lead`` +
        ``view``) unless it already holds an answer."""
        body = self.tokenizer.decode(cache.tokens(list(view[1:])))
        if answered or self.finisher is None:
            return body, None
        answer = yield from self._finish(cache, [*lead, *view])
        return self.finisher.completed_response(body, answer), answer

    def _snapshot(self, cache, budget: int, state: LoopState) -> Steps[Snapshot]:
        n = self.options.n_workers
        worker_responses = []
        if self.options.per_worker:  # each worker's own response, from its own view
            for i in range(n):
                ended = state.ends[i]
                answered = ended is not None and ended[0] == "answer"
                view = self.layout.view(i, n)
                worker_responses.append((yield from self._respond(cache, view, answered, state.lead))[0])
            response, answer = worker_responses[0], None
        else:
            finisher_view = self.layout.finisher_view(n)
            answered = state.answered_by is not None
            response, answer = yield from self._respond(cache, finisher_view, answered, state.lead)
        return Snapshot(
            budget=budget,
            tokens_per_worker=state.sampled,
            finished_early=state.finished,
            blocks={name: list(block.token_ids) for name, block in cache.blocks.items() if name != FINISHER},
            worker_tokens=[list(t) for t in state.worker_tokens],
            worker_token_steps=[list(t) for t in state.token_steps],
            worker_inserted=[list(t) for t in state.inserted],
            steps_per_worker=list(state.steps),
            response=response,
            answer=answer,
            wall_seconds=time.perf_counter() - state.started,
            worker_responses=worker_responses,
            answered_by=state.answered_by,
            worker_ends=list(state.ends),
        )

    def _finish(self, cache, view: Sequence[str]) -> Steps[str]:
        return finisher_steps(
            cache, view, self.finisher, self.tokenizer, self.options.finisher_max_tokens, self._finisher_forbidden,
            forward=self._forward,
        )  # fmt: skip

    def finish(self, cache, view: Sequence[str]) -> str:
        """Run ``self.finisher`` after ``view`` (see `run_finisher`); the generation goes on unchanged."""
        return drive(self._finish(cache, view), self.lm, cache)


def _plain_forward(writes: list[Write]) -> Steps[torch.Tensor]:
    return (yield writes)


def finisher_steps(
    cache, view, finisher: Finisher, tokenizer, max_tokens: int, forbidden, forward=_plain_forward
) -> Steps[str]:
    """Append ``finisher.suffix`` after ``view`` and greedily decode until the finisher is satisfied.

    Runs in a scratch block that is emptied afterwards, so the cache is left as it was."""
    cache.clear(FINISHER)
    context = [*view, FINISHER]
    suffix = tokenizer.encode(finisher.suffix, add_special_tokens=False)
    logits = (yield from forward([Write(context, suffix)]))[0]
    greedy = Sampler(SamplingParams(), forbidden)
    out: list[int] = []
    window: Window | None = None  # steps a batch ran ahead: each writes the last token and draws the next
    for _ in range(max_tokens):
        if window is not None:
            token = window.take()[0]
            greedy.draws += 1
        else:
            answer = yield Draw(logits[None], greedy, takes_window=True)
            window, token = (answer, answer.tokens[0][0]) if isinstance(answer, Window) else (None, answer[0])
        out.append(token)
        if finisher.done(tokenizer.decode(out)):
            break
        if window is not None and window.used < len(window.tokens):
            window.accept([token])  # the forward writing it ran in the window
        else:
            window = None
            logits = (yield from forward([Write(context, out[-1:])]))[0]
    cache.clear(FINISHER)
    return finisher.answer(tokenizer.decode(out))


def run_finisher(lm, cache, view, finisher: Finisher, tokenizer, max_tokens: int, forbidden) -> str:
    """`finisher_steps` run alone on ``cache``."""
    return drive(finisher_steps(cache, view, finisher, tokenizer, max_tokens, forbidden), lm, cache)


def drive(steps: Steps[T], lm: HogwildLM, cache) -> T:
    """Run a generation coroutine by itself: each forward it asks for runs on ``cache`` as asked, each draw
    is answered by its sampler."""
    try:
        request = next(steps)
        while True:
            if isinstance(request, Draw):
                request = steps.send(draw_tokens([request])[0])
            else:
                request = steps.send(lm.forward(cache, request))
    except StopIteration as done:
        return done.value
