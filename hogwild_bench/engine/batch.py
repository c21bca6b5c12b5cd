"""Many generations in one forward (continuous batching).

Decoding is bound by reading the weights, so a step that carries 64 rows costs little more than one that
carries 2. `ContinuousBatcher` runs generation coroutines (`HogwildGenerator.steps`) side by side: each
gets a `CacheNamespace` -- its own blocks inside one shared `HogwildCache`, under a name prefix -- so rows
of different generations never see each other, and every step merges all of their rows into one forward.
A generation that finishes frees its rows and blocks, and the next queued one is admitted and prefilled.

Admission control: a generation is admitted only when its rows fit ``max_rows`` and its worst case KV
storage (all of its blocks at the sizes it reserves for its last budget) fits what the earlier admitted
ones have not claimed of ``kv_budget_bytes``; one that cannot fit even alone finishes with an error
rather than risking an out-of-memory failure mid-step.

Independence: a generation's tokens depend only on its own inputs -- its own sampler and seed, its own
blocks. Merging rows changes only the batch shape of the matrix products (on GPUs, rounding may differ
with it; on CPU float32 greedy tokens match the unbatched engine exactly in the tests).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hogwild_bench.engine.blocks import KVBlock
from hogwild_bench.engine.cache import HogwildCache, UnknownBlockError
from hogwild_bench.engine.generation import Steps, Window
from hogwild_bench.engine.model import DeviceTokens, HogwildLM, Write
from hogwild_bench.engine.sampling import Draw, PendingTokens, Sampler, WindowDraws, draw_tokens, enqueue_draws

PREFILL_TOKENS = 32  # a request with a row this long (a prompt) is a prefill: eager unless it rides in replays
PREFILL_TOKENS_PER_FORWARD = 8192  # prefills waiting together share forwards of up to this many tokens (packed rows)
# With bucket graphs: generations writing several tokens (a step header, a collaboration prompt, a finisher
# prompt) that do not fit in the replayed decode forward get forwards of their own; by default they wait up
# to this many rounds to share them, unless they hold a quarter of the rows in flight
INSERT_WAIT_ROUNDS = 8
# ... those forwards are replayed too, in chunks of at most `replay_rows` tokens, while a wave of inserts takes
# at most this many; a larger wave runs in one eager forward. An eager 7B forward costs ~40-50 ms of host time
# (the model's module code, ~1,500 launches) where a replay costs its GPU time, ~10 ms (H100,
# experiments/README "Inserts replayed")
INSERT_REPLAY_CHUNKS = 4
REPLAY_ROWS_MIN = 64  # a replayed forward may carry this many one-token rows however small max_rows is


def _is_prefill(writes: Sequence[Write]) -> bool:
    """A forward request with a row longer than ``PREFILL_TOKENS`` (a prompt) is a prefill."""
    return max(len(w.tokens) for w in writes) > PREFILL_TOKENS


def _has_room(running: _Running) -> bool:
    """Every block ``running`` writes next already has storage for its tokens (a replayed forward cannot allocate:
    a block's first storage comes from an eager forward)."""
    for write in running.writes:
        try:
            block = running.namespace.block(write.view[-1])
        except UnknownBlockError:  # not even created yet
            return False
        if block.room() < len(write.tokens):
            return False
    return True


class SharedBlocks:
    """Blocks that many generations of a batch read and none writes after its first: the K/V of a token sequence
    written alone from position 0 (the prompt's template, `HogwildCache.share`), which depend on nothing else.

    The first generation that asks for a sequence has it written at once, in a forward of its own (``fill``), so
    its K/V never depend on batch-mates or admission order; later ones get the same block. A block is dropped when
    the last generation that holds it is."""

    def __init__(self, cache: HogwildCache, fill: Callable[[str, list[int]], None]):
        self.cache, self.fill = cache, fill
        self.held: dict[tuple[int, ...], list] = {}  # token ids -> [block name, generations holding it]
        self._ids = itertools.count()

    def attach(self, token_ids: Sequence[int]) -> str:
        """The name of the block holding ``token_ids``, written now if no generation holds one."""
        key = tuple(token_ids)
        if key not in self.held:
            name = f"shared{next(self._ids)}/"
            try:
                self.fill(name, list(key))
            except BaseException:
                self.cache.blocks.pop(name, None)
                raise
            self.held[key] = [name, 0]
        self.held[key][1] += 1
        return self.held[key][0]

    def detach(self, name: str) -> KVBlock | None:
        """One generation less holds block ``name``; the block if that was the last (it is forgotten)."""
        key = next(key for key, (held, _) in self.held.items() if held == name)
        self.held[key][1] -= 1
        if self.held[key][1]:
            return None
        del self.held[key]
        return self.cache.blocks.pop(name)


class CacheNamespace:
    """One generation's blocks inside a shared `HogwildCache`: block ``name`` is stored as ``prefix + name``,
    except blocks it `share`s, which are the batch's `SharedBlocks`.

    Offers what a generation coroutine uses of a cache (blocks, commits, clears, reservations, token ids)."""

    def __init__(self, cache: HogwildCache, prefix: str, shared: SharedBlocks):
        self.cache, self.prefix, self.shared = cache, prefix, shared
        self.aliases: dict[str, str] = {}  # local name -> the shared block's name
        self._qualified: dict[tuple[str, ...], tuple[str, ...]] = {}  # a generation has few distinct views
        self.changes = 0  # commits, reservations and clears so far (a step guessed ahead must see none)

    def qualify(self, writes: Sequence[Write]) -> list[Write]:
        return [Write(self._qualified_view(w.view), w.tokens) for w in writes]

    def _name(self, name: str) -> str:
        return self.aliases.get(name) or self.prefix + name

    def _qualified_view(self, view: Sequence[str]) -> list[str]:
        key = tuple(view)
        names = self._qualified.get(key)
        if names is None:
            names = self._qualified[key] = tuple(self._name(name) for name in key)
        return list(names)

    def share(self, name: str, token_ids: Sequence[int]) -> bool:
        """`HogwildCache.share`: block ``name`` becomes the batch's block of ``token_ids``, already written (False)."""
        self.changes += 1
        if name in self.aliases:
            raise RuntimeError(f"block {name!r} is already shared by this generation")
        self.aliases[name] = self.shared.attach(token_ids)
        self._qualified.clear()
        return False

    def block(self, name: str) -> KVBlock:
        return self.cache.block(self._name(name))

    def writable(self, name: str) -> KVBlock:
        return self.cache.writable(self.prefix + name)

    def commit(self, source: str, target: str) -> None:
        self.changes += 1
        self.cache.commit(self.prefix + source, self.prefix + target)

    def reserve(self, names: Sequence[str], tokens: int, like: str) -> None:
        self.changes += 1
        self.cache.reserve([self.prefix + n for n in names], tokens, like=self._name(like))

    def clear(self, name: str) -> None:
        self.changes += 1
        self.cache.clear(self.prefix + name)

    def tokens(self, names: Sequence[str]) -> list[int]:
        return self.cache.tokens([self._name(n) for n in names])

    @property
    def blocks(self) -> dict[str, KVBlock]:
        """Every block this generation reads, by its local name (shared ones included)."""
        return self.own_blocks | {name: self.cache.block(shared) for name, shared in self.aliases.items()}

    @property
    def own_blocks(self) -> dict[str, KVBlock]:
        n = len(self.prefix)
        return {name[n:]: block for name, block in self.cache.blocks.items() if name.startswith(self.prefix)}

    def storage_bytes(self) -> int:
        """Bytes of K/V storage allocated to this generation's own blocks (storage only grows: its peak); shared
        blocks are the batch's."""
        return sum(
            store[layer].numel() * store[layer].element_size()
            for block in self.own_blocks.values()
            for store in (block.keys, block.values)
            for layer in range(block.num_layers)
            if store[layer] is not None
        )

    def drop(self) -> list[KVBlock]:
        """Forget this generation's blocks (and any decode graph that reads them) and let go of its shared ones;
        returns the blocks forgotten (shared ones only when this generation held them last)."""
        gone = [self.cache.blocks.pop(name) for name in list(self.cache.blocks) if name.startswith(self.prefix)]
        for shared in self.aliases.values():
            last = self.shared.detach(shared)
            if last is not None:
                gone.append(last)
        self.aliases = {}
        names = {block.name for block in gone}
        self.cache.decode_graphs = {
            views: graph
            for views, graph in self.cache.decode_graphs.items()
            if not any(name in names for view in views for name in view)
        }
        return gone


@dataclass
class BatchJob:
    """One generation to run: ``start(cache)`` builds its coroutine over its namespace; ``rows`` is the most
    rows one of its forwards carries (its workers); ``kv_tokens`` its worst-case stored tokens."""

    key: Any
    start: Callable[[CacheNamespace], Steps[Any]]
    rows: int
    kv_tokens: int


@dataclass
class JobCost:
    """What one generation cost inside the batch."""

    forwards: int = 0  # forwards it took part in (decode steps, prefills and finisher steps)
    seconds: float = 0.0  # admission to completion
    peak_kv_bytes: int = 0


@dataclass
class Finished:
    """A generation that left the batch: its result, or the error that ended it."""

    key: Any
    result: Any = None
    error: BaseException | None = None
    cost: JobCost = field(default_factory=JobCost)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class BatchTimes:
    """Where a batched run's wall time went, in seconds (a sweep's host cost shows up here, not in a profile
    of one step): ``forward`` launching forwards (a replay enqueues; an eager forward runs the model's module
    code), ``draw`` choosing tokens (it waits for the GPU to finish the step), ``resume`` the generations'
    own code between forwards (stop rules, step boundaries, snapshots), ``admit`` starting generations
    (prompt texts, tokenisation), ``outside`` the caller's time between finished generations (scoring,
    storing). Forward counts: ``replayed`` from bucket graphs, ``eager`` decode/insert forwards, ``prefill``.
    With ``overlap``: ``ahead`` generation steps launched before their tokens were read, ``taken_back`` of
    those whose guess was wrong (their rows' work was thrown away and the step ran again). With ``window``:
    ``ahead`` generation steps run in windows past the first, ``kept`` of those the generations took."""

    forward: float = 0.0
    draw: float = 0.0
    resume: float = 0.0
    admit: float = 0.0
    outside: float = 0.0
    replayed: int = 0
    eager: int = 0
    prefill: int = 0
    ahead: int = 0
    taken_back: int = 0
    kept: int = 0

    def summary(self) -> str:
        seconds = ", ".join(
            f"{name} {getattr(self, name):.1f}" for name in ("forward", "draw", "resume", "admit", "outside")
        )
        guessed = f"; steps ahead {self.ahead}, taken back {self.taken_back}" if self.ahead else ""
        guessed += f", kept from windows {self.kept}" if self.kept else ""
        return f"{seconds} s; forwards: {self.replayed} replayed, {self.eager} eager, {self.prefill} prefill{guessed}"


class AdmissionError(RuntimeError):
    """A generation that cannot run even alone within the batch's row or memory limits."""


@dataclass
class _Ahead:
    """A generation's rows in a forward launched before the host read the tokens they feed (``overlap``): the
    guess that it next writes each drawn token in the row that drew it, and what taking the guess back needs."""

    views: list[Sequence[str]]  # of the guessed writes, one token each (its ids came from the device)
    blocks: list[KVBlock]  # each row's own block
    versions: list[int]  # their storage versions after the forward (moved storage: the K/V are not there)
    changes: int  # the namespace's block changes at launch
    logits: torch.Tensor
    sampler: Sampler
    counter: int  # the sampler's draw count before this step's draw (it draws nothing else in between)
    slot: int  # its draw's index among the lane's pending draws


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` and ``b`` are the same rows of the same logits (a generation draws from the logits it was sent)."""
    return a.shape == b.shape and a.data_ptr() == b.data_ptr() and (a.shape[0] == 1 or a.stride() == b.stride())


@dataclass
class _Running:
    job: BatchJob
    namespace: CacheNamespace
    steps: Steps[Any]
    writes: list[Write]  # the rows of the next forward it needs (while it draws: of the forward it draws from)
    started: float
    lane: _Lane | None = None
    cost: JobCost = field(default_factory=JobCost)
    draw: Draw | None = None  # a token choice it waits for
    sent: torch.Tensor | None = None  # the logits it was last sent
    ahead: _Ahead | None = None  # its step launched ahead of reading its draw

    def guessable(self) -> bool:
        """Its next forward can be launched before its draw is read: the draw is one token for each row of the
        forward it was sent logits from (the generation then most likely writes each token in its row)."""
        draw = self.draw
        return (
            draw is not None
            and self.sent is not None
            and draw.logits.shape[0] == len(self.writes)
            and _same_rows(draw.logits, self.sent)
        )


@dataclass
class _WindowInFlight:
    """A window's guessed steps, launched: the generations stepped, each one's own blocks (their K/V held back)
    and the steps' token choices on the device."""

    group: list[_Running]
    own: dict[int, list[KVBlock]]
    choices: WindowDraws


@dataclass
class _Lane:
    """A set of generations stepped together. With two lanes the host prepares one lane's next forward (its
    generations' code, the step tables) while the device runs the other's; generations never see each other,
    so which lane a generation runs in changes only when its forwards run, never what they compute."""

    graphs: Any = None  # its own `BucketGraphs` (own staging buffers), or None: eager forwards
    members: dict[int, _Running] = field(default_factory=dict)
    insert_wait: int = 0  # rounds its generations writing several tokens have waited
    drawing: list[_Running | None] = field(default_factory=list)  # generations whose tokens are being chosen
    tokens: PendingTokens | None = None  # those choices, on the device
    window: _WindowInFlight | None = None  # a window's guessed steps launched after those choices

    @property
    def rows(self) -> int:
        return sum(r.job.rows for r in self.members.values())

    def detach(self) -> tuple[PendingTokens | None, list[_Running | None]]:
        """The lane's pending token choices, handed over (the lane then has none)."""
        pending = self.tokens, self.drawing
        self.tokens, self.drawing = None, []
        return pending


class ContinuousBatcher:
    """Runs `BatchJob`s with at most ``max_rows`` rows per forward, ``max_jobs`` generations at once (None:
    no limit) and ``kv_budget_bytes`` of reserved KV storage (None: no memory limit), yielding each
    `Finished` as soon as it completes.

    ``lanes`` splits the generations in flight into that many sets stepped in turn, each holding up to its
    share of ``max_rows`` (a lone generation may take more): with 2 on a GPU the host's work for one set
    overlaps the device's work for the other. ``overlap`` launches each lane's next forward before the host
    has read the tokens of its last one: a generation that drew one token per row is guessed to write each in
    its row (most steps of most generations), its rows take their token ids from the device, and the host reads
    the draw and runs the generation's code while the device computes; a wrong guess (a step boundary, a stop,
    a budget) is taken back -- the rows' K/V are forgotten and its sampler rewound -- and the generation's real
    request runs in the next forward. Results are as without it, up to the batch-shape rounding of any batching.
    ``window`` (> 1) runs that many decode steps for the generations that drew one token per row before the host
    reads any of their tokens, each step's rows fed from the device by the step before, and hands each generation
    its tokens as a `Window` (one resume for the steps it takes; the first request that differs -- a step
    boundary, a stop, a budget -- voids the rest: their K/V are forgotten, their draws uncounted). A generation's
    ``on_forward`` hook does not see the forwards it took from a window.
    ``on_step(rows, seconds)`` is called after every forward (progress displays); ``times`` (a `BatchTimes`,
    default a new one) adds up where the run's time goes."""

    def __init__(
        self,
        lm: HogwildLM,
        max_rows: int,
        kv_budget_bytes: int | None = None,
        cuda_graphs: bool = False,
        on_step: Callable[[int, float], None] | None = None,
        max_jobs: int | None = None,
        times: BatchTimes | None = None,
        insert_wait_rounds: int = INSERT_WAIT_ROUNDS,
        lanes: int = 1,
        overlap: bool = False,
        window: int = 1,
    ):
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        if window < 1:
            raise ValueError(f"window must be >= 1 decode steps, got {window}")
        if window > 1 and overlap:
            raise ValueError("window > 1 and overlap both step generations ahead of their tokens: choose one")
        self.lm, self.max_rows, self.kv_budget = lm, max_rows, kv_budget_bytes
        self.cuda_graphs, self.on_step, self.max_jobs = cuda_graphs, on_step, max_jobs
        self.overlap, self.window = overlap, window
        self.cache = lm.new_cache()
        self.shared = SharedBlocks(self.cache, self._fill_shared)
        self.lanes = [_Lane() for _ in range(lanes)]
        if cuda_graphs and lm.device.type == "cuda":
            from hogwild_bench.engine.bucket_graphs import BucketGraphs

            if BucketGraphs.usable(lm, self.cache):  # decode steps replayed from graphs by row-count bucket
                for lane in self.lanes:
                    lane.graphs = BucketGraphs(lm, self.cache)
        self.running: dict[int, _Running] = {}
        self.reserved_bytes = 0
        self._ids = itertools.count()
        self.insert_wait_rounds = insert_wait_rounds
        # most one-token rows a replayed forward carries: twice the lane's share of rows, at least 64 (room for
        # the tokens of writes of several tokens riding along; larger forwards would capture ever larger buckets)
        self.replay_rows = max(REPLAY_ROWS_MIN, 2 * -(-max_rows // lanes))
        self.times = times if times is not None else BatchTimes()

    @property
    def graphs(self):
        """The first lane's `BucketGraphs` (None: eager forwards); each lane has its own."""
        return self.lanes[0].graphs

    @graphs.setter
    def graphs(self, graphs) -> None:
        self.lanes[0].graphs = graphs

    @property
    def rows_in_flight(self) -> int:
        return sum(r.job.rows for r in self.running.values())

    def job_bytes(self, job: BatchJob) -> int:
        return job.kv_tokens * self.lm.kv_bytes_per_token

    def _fits(self, job: BatchJob, lane: _Lane) -> bool:
        if self.max_jobs is not None and len(self.running) >= self.max_jobs:
            return False
        share = -(-self.max_rows // len(self.lanes))
        rows_ok = self.rows_in_flight + job.rows <= self.max_rows and (
            not lane.members or lane.rows + job.rows <= share
        )
        return rows_ok and (self.kv_budget is None or self.reserved_bytes + self.job_bytes(job) <= self.kv_budget)

    def _too_big(self, job: BatchJob) -> str | None:
        if job.rows > self.max_rows:
            return f"needs {job.rows} rows per step, batch.max_rows is {self.max_rows}"
        if self.kv_budget is not None and self.job_bytes(job) > self.kv_budget:
            need, have = self.job_bytes(job) / 2**30, self.kv_budget / 2**30
            return (
                f"needs up to {need:.2f} GiB of KV storage, the batch has {have:.2f} GiB "
                "(raise batch.kv_memory_fraction or lower the budgets)"
            )
        return None

    def run(self, jobs: Iterable[BatchJob]) -> Iterator[Finished]:
        queue: _Queue = _Queue(iter(jobs))
        while True:
            for lane in self.lanes:
                if self.overlap:  # the lane's next forward first, then the host reads the last one's tokens
                    pending = yield from self._launch(lane)
                    yield from self._collect(pending)
                    yield from self._admit_from(queue, lane)
                else:  # a window's steps run on the device while the host works on the other lane
                    pending = lane.detach()
                    windows = yield from self._window_results(lane)
                    yield from self._collect(pending, windows)
                    yield from self._admit_from(queue, lane)
                    yield from self._launch(lane)
                    if self.window > 1:
                        yield from self._start_window(lane)
            if not self.running and queue.empty():
                return

    def _admit_from(self, queue: _Queue, lane: _Lane) -> Iterator[Finished]:
        """Admit queued jobs into ``lane`` in queue order while the next one fits (a job never overtakes an
        earlier one); a job that cannot fit even alone finishes with an `AdmissionError`."""
        while True:
            job = queue.peek()
            if job is None:
                return
            reason = self._too_big(job)
            if reason is not None:
                queue.pop()
                yield from self._hand(Finished(job.key, error=AdmissionError(reason)))
                continue
            if not self._fits(job, lane):
                return
            queue.pop()
            started = time.perf_counter()
            done = self._admit(job, lane)
            self.times.admit += time.perf_counter() - started
            if done is not None:
                yield from self._hand(done)

    def _hand(self, finished: Finished) -> Iterator[Finished]:
        """Yield ``finished`` to the caller, timing how long the caller keeps it (``times.outside``)."""
        started = time.perf_counter()
        yield finished
        self.times.outside += time.perf_counter() - started

    def _admit(self, job: BatchJob, lane: _Lane) -> Finished | None:
        namespace = CacheNamespace(self.cache, f"g{next(self._ids)}/", self.shared)
        running = _Running(job, namespace, None, [], time.perf_counter(), lane)  # type: ignore[arg-type]
        try:
            running.steps = job.start(namespace)
            request = next(running.steps)
            while isinstance(request, Draw):
                request = running.steps.send(draw_tokens([request])[0])
            running.writes = request
        except StopIteration as stop:
            namespace.drop()
            return Finished(job.key, result=stop.value, cost=running.cost)
        except Exception as error:
            namespace.drop()
            return Finished(job.key, error=error, cost=running.cost)
        self.running[id(running)] = lane.members[id(running)] = running
        self.reserved_bytes += self.job_bytes(job)
        return None

    def _fill_shared(self, name: str, token_ids: list[int]) -> None:
        """Write a shared block's tokens alone (`SharedBlocks`): between forwards, in one of its own (a prefill)."""
        started = time.perf_counter()
        self.lm.forward(self.cache, [Write([name], token_ids)], cuda_graphs=False)
        seconds = time.perf_counter() - started
        self.times.prefill += 1
        self.times.forward += seconds
        self.times.admit -= seconds  # it runs while a generation is admitted, which `_admit_from` times
        if self.on_step is not None:
            self.on_step(1, seconds)

    def _groups(self, lane: _Lane, ahead: list[_Running]) -> list[tuple[list[_Running], bool]]:
        """A lane's forwards: decode rows in one merged forward; prompt prefills in forwards of their own, since
        eager attention sees rows padded to the longest and a prompt beside one-token rows would widen every row to
        its length. With packed rows (`HogwildLM.pack_rows`) the prefills waiting together share forwards of up
        to ``PREFILL_TOKENS_PER_FORWARD`` tokens: a wave of new generations costs a few forwards, not one each,
        so it holds the decode rows back for less. With bucket graphs a prompt whose block has room rides in the
        replayed forwards instead, one row per token, as inserts do (an eager forward's host time is that of
        dozens of replays; generations admitted one or two at a time otherwise cost one each). Generations waiting
        for their tokens are in none, except those stepped ``ahead`` (one token per row, in the decode forward).
        Each group comes with whether it may replay from the lane's bucket graphs."""
        prefills, decode = [], list(ahead)
        for running in lane.members.values():
            if running.draw is None:
                (prefills if _is_prefill(running.writes) else decode).append(running)
        if lane.graphs is None:
            return self._prefill_groups(prefills) + ([(decode, False)] if decode else [])
        # The graph replays one-token rows; a write of several tokens (a step header, a collaboration prompt)
        # rides along as one row per token while the forward stays within `replay_rows`. Those that do not
        # fit get an eager forward of their own rather than holding everyone back. Generations never see each
        # other: splitting by generation changes no generation's forwards, only when they run.
        guessed = {id(r) for r in ahead}

        def tokens_of(running: _Running) -> int:
            return len(running.writes) if id(running) in guessed else sum(len(w.tokens) for w in running.writes)

        room = self.replay_rows - sum(len(r.writes) for r in decode if tokens_of(r) == len(r.writes))
        single, inserts = [], []
        for running in decode:
            tokens = tokens_of(running)
            if tokens == len(running.writes):
                single.append(running)
            elif tokens <= room:
                single.append(running)
                room -= tokens
            else:
                inserts.append(running)
        groups = []
        if inserts:
            waiting_rows = sum(len(r.writes) for r in inserts)
            due = lane.insert_wait >= self.insert_wait_rounds or not single or 4 * waiting_rows >= lane.rows
            lane.insert_wait = 0 if due else lane.insert_wait + 1
            if due:
                groups += self._insert_groups(inserts, tokens_of)
        # prompts: in the decode forward's room left, then a few replayed forwards; a wave is prefilled eagerly
        replayable, left, waiting = [], [], []
        for running in prefills:
            (replayable if _has_room(running) else left).append(running)
        for running in replayable:
            tokens = tokens_of(running)
            if tokens <= room:
                single.append(running)
                room -= tokens
            else:
                waiting.append(running)
        chunks = self._insert_groups(waiting, tokens_of) if waiting else []
        if chunks and not chunks[0][1]:  # too many, or a prompt longer than a replayed forward's rows
            left, chunks = left + waiting, []
        return self._prefill_groups(left) + chunks + groups + ([(single, True)] if single else [])

    def _prefill_groups(self, prefills: list[_Running]) -> list[tuple[list[_Running], bool]]:
        """Eager forwards for ``prefills``: packed together up to ``PREFILL_TOKENS_PER_FORWARD`` tokens with packed
        rows, else one each."""
        groups: list[tuple[list[_Running], int]] = []
        for running in prefills:
            tokens = sum(len(w.tokens) for w in running.writes)
            if self.lm.pack_rows and groups and groups[-1][1] + tokens <= PREFILL_TOKENS_PER_FORWARD:
                groups[-1] = (groups[-1][0] + [running], groups[-1][1] + tokens)
            else:
                groups.append(([running], tokens))
        return [(group, False) for group, _ in groups]

    def _insert_groups(self, inserts: list[_Running], tokens_of) -> list[tuple[list[_Running], bool]]:
        """Forwards for the generations whose writes did not fit in the decode forward: replayed chunks of at
        most ``replay_rows`` tokens (generations in their order), or, for a wave of more than
        ``INSERT_REPLAY_CHUNKS`` chunks or a generation too long for any, one eager forward."""
        chunks: list[list[_Running]] = []
        room = 0
        for running in inserts:
            tokens = tokens_of(running)
            if tokens > self.replay_rows:
                return [(inserts, False)]
            if tokens > room:
                chunks.append([])
                room = self.replay_rows
            chunks[-1].append(running)
            room -= tokens
        if len(chunks) > INSERT_REPLAY_CHUNKS:
            return [(inserts, False)]
        return [(chunk, True) for chunk in chunks]

    def _ahead_rows(
        self, pending: tuple[PendingTokens | None, list[_Running | None]], always: bool = False
    ) -> dict[int, int]:
        """For each generation of ``pending`` whose next step can be launched now (`_Running.guessable`), the
        row of its first token among the pending draws (none without ``overlap``, unless ``always``)."""
        tokens, drawing = pending
        if not (self.overlap or always) or tokens is None:
            return {}
        rows, first = {}, 0
        for running, count in zip(drawing, tokens.counts):
            if running is not None and id(running) in self.running and running.guessable():
                rows[id(running)] = first
            first += count
        return rows

    def _launch(self, lane: _Lane):
        """Run the lane's forwards, hand each generation its logits and put the token choices they ask for on
        the device without waiting for them (`_collect` takes them). With ``overlap``, the generations whose
        tokens are still being chosen are stepped ahead in the decode forward. Returns the lane's token choices
        pending before (for `_collect`)."""
        pending = lane.detach()
        first_row = self._ahead_rows(pending)
        ahead = [r for r in pending[1] if r is not None and id(r) in first_row]
        finished, drawing, draws = [], [], []
        for group, replay in self._groups(lane, ahead):
            writes, fill_writes, fill_rows = [], [], []
            for r in group:
                if id(r) in first_row:  # one row per write, its token the one drawn in that row
                    fill_writes += range(len(writes), len(writes) + len(r.writes))
                    fill_rows += range(first_row[id(r)], first_row[id(r)] + len(r.writes))
                    writes += r.namespace.qualify([Write(w.view, [0]) for w in r.writes])
                else:
                    writes += r.namespace.qualify(r.writes)
            device_tokens = DeviceTokens(fill_writes, pending[0].on_device, fill_rows) if fill_writes else None
            times = self.times
            try:
                logits, _ = self._forward(lane, writes, device_tokens, replay)
            except Exception as error:  # e.g. out of memory: every generation in this forward fails
                finished += self._fail(group, error)
                continue
            offset = 0
            started = time.perf_counter()
            for running in group:
                rows = len(running.writes)
                part = logits[offset : offset + rows]
                offset += rows
                if id(running) in first_row:
                    running.ahead = self._stepped_ahead(running, part, len(draws))
                    draws.append(Draw(part, running.draw.sampler))
                    drawing.append(running)
                    times.ahead += 1
                    continue
                running.cost.forwards += 1
                running.sent = part
                done = self._resume(running, part)
                if done is not None:
                    finished.append(done)
                elif running.draw is not None:
                    draws.append(running.draw)
                    drawing.append(running)
            times.resume += time.perf_counter() - started
        if draws:  # every token choice of the lane's forwards in one call
            started = time.perf_counter()
            try:
                lane.tokens, lane.drawing = enqueue_draws(draws), drawing
            except Exception as error:  # e.g. out of memory: these generations fail, the others go on
                finished += self._fail(drawing, error)
            self.times.draw += time.perf_counter() - started
        for done in finished:
            yield from self._hand(done)
        return pending

    def _stepped_ahead(self, running: _Running, logits: torch.Tensor, slot: int) -> _Ahead:
        blocks = [running.namespace.block(w.view[-1]) for w in running.writes]
        sampler = running.draw.sampler
        return _Ahead(
            views=[w.view for w in running.writes], blocks=blocks, versions=[b.storage_version for b in blocks],
            changes=running.namespace.changes, logits=logits, sampler=sampler, counter=sampler.draws, slot=slot,
        )  # fmt: skip

    def _fail(self, group: list[_Running], error: BaseException) -> list[Finished]:
        """End ``group`` with ``error`` (a device step they shared failed) and give their memory back."""
        finished = [self._retire(running, error=error) for running in group]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return finished

    def _collect(
        self, pending: tuple[PendingTokens | None, list[_Running | None]], windows: dict[int, Window] | None = None
    ) -> Iterator[Finished]:
        """Wait for the token choices ``pending`` and send them to their generations (a generation that asks
        for another choice at once gets it here, waited for). A generation stepped ahead is first taken back to
        before that step; if it then asks for exactly the step that ran, the step (and its pending draw) stands."""
        chosen_tokens, answered = pending
        if chosen_tokens is None:
            return
        started = time.perf_counter()
        tokens = chosen_tokens.result()
        finished = []
        while answered:
            drawn = time.perf_counter()
            self.times.draw += drawn - started
            waiting = []
            for running, chosen in zip(answered, tokens):
                if running is None or id(running) not in self.running:
                    continue
                ahead, running.ahead = running.ahead, None
                if ahead is not None:
                    for block in ahead.blocks:
                        block.retract(1)
                    ahead.sampler.draws = ahead.counter
                running.sent = None
                window = windows.pop(id(running), None) if windows else None
                if window is not None:
                    window.tokens[0] = chosen
                done, kept = self._resume(running, window or chosen), False
                if done is None and ahead is not None:
                    done, kept = self._keep_ahead(running, ahead, chosen)
                if ahead is not None and not kept:  # its rows' work is thrown away, its draw void
                    running.lane.drawing[ahead.slot] = None
                    self.times.taken_back += 1
                if done is not None:
                    finished.append(done)
                elif running.draw is not None and not kept:
                    waiting.append(running)
            self.times.resume += time.perf_counter() - drawn
            started, answered = time.perf_counter(), waiting
            if waiting:
                tokens = draw_tokens([r.draw for r in waiting])
        for done in finished:
            yield from self._hand(done)

    def _start_window(self, lane: _Lane) -> Iterator[Finished]:
        """Launch the ``window - 1`` decode steps after the lane's pending draw for each generation that drew one
        token per row of its last forward (`_Running.guessable`), without waiting for them: each step writes
        every such row's token of the step before -- still on the device -- into its own block and draws the next
        with the generation's sampler (`WindowDraws`: its counter is not moved). Their K/V are held back
        (`KVBlock.retract`) until the generation takes the steps (`_window_results`, `Window`). If a step fails
        (e.g. out of memory), the generations in it fail with its error, as in any forward."""
        rows_of = self._ahead_rows((lane.tokens, lane.drawing), always=True)
        group = [r for r in lane.drawing if r is not None and id(r) in rows_of and r.draw.takes_window]
        if not group:
            return
        own = {id(r): [r.namespace.block(w.view[-1]) for w in r.writes] for r in group}
        ran, replayed = 0, False
        writes = [w for r in group for w in r.namespace.qualify([Write(w.view, [0]) for w in r.writes])]
        choices = WindowDraws([r.draw.sampler for r in group], [len(r.writes) for r in group])
        # step 1 writes the tokens of the draw pending; each later step those of the step before (group order)
        first_rows = [row for r in group for row in range(rows_of[id(r)], rows_of[id(r)] + len(r.writes))]
        source = lane.tokens.on_device, first_rows

        def draw(logits: torch.Tensor) -> torch.Tensor:
            """The group's token choices from a step's logits (group order), on the device."""
            started = time.perf_counter()
            chosen = choices.step(logits)
            self.times.draw += time.perf_counter() - started
            self.times.ahead += len(group)
            return chosen

        try:
            while ran < self.window - 1:
                device_tokens = DeviceTokens(range(len(writes)), *source)
                if replayed:  # the rest from the tables of the step just replayed, moved on (one upload)
                    moved = self._forward_again(lane, writes, self.window - 1 - ran, device_tokens, draw)
                    ran += moved
                    if moved:
                        source = choices.chosen[-1], range(len(writes))
                        continue
                logits, replayed = self._forward_guessed(lane, writes, device_tokens)
                ran += 1
                source = draw(logits), range(len(writes))
        except Exception as error:
            for done in self._fail(group, error):
                yield from self._hand(done)
            return
        for blocks in own.values():
            for block in blocks:
                block.retract(ran)
        lane.window = _WindowInFlight(group, own, choices)

    def _window_results(self, lane: _Lane) -> Generator[Finished, None, dict[int, Window]]:
        """The lane's window launched by `_start_window`, read back (waits for its steps): each generation's
        `Window`, by generation. If reading fails, its generations fail with the error."""
        flight, lane.window = lane.window, None
        if flight is None:
            return {}
        started = time.perf_counter()
        try:
            drawn = flight.choices.result()
        except Exception as error:
            for done in self._fail([r for r in flight.group if id(r) in self.running], error):
                yield from self._hand(done)
            return {}
        finally:
            self.times.draw += time.perf_counter() - started
        return {
            id(running): Window([[], *(step[g] for step in drawn)], self._accept(running, flight.own[id(running)]))
            for g, running in enumerate(flight.group)
        }

    def _forward_again(self, lane: _Lane, writes: list[Write], count: int, first: DeviceTokens, draw) -> int:
        """Up to ``count`` more guessed steps of a window replayed from the tables of the step the lane's bucket
        graphs just replayed, moved on (`BucketGraph.steps_again`); the steps run (0: none)."""
        started, drawing = time.perf_counter(), self.times.draw
        moved = lane.graphs.forward_again(len(writes), count, first, draw)
        seconds = time.perf_counter() - started - (self.times.draw - drawing)
        self.times.replayed += moved
        self.times.forward += seconds
        if self.on_step is not None:
            for _ in range(moved):
                self.on_step(len(writes), seconds / moved)
        return moved

    def _forward_guessed(
        self, lane: _Lane, writes: list[Write], device_tokens: DeviceTokens
    ) -> tuple[torch.Tensor, bool]:
        """One forward of a window's guessed step, and whether it replayed from the lane's bucket graphs (which
        then keep it for `BucketGraph.steps_again` to move on)."""
        return self._forward(lane, writes, device_tokens, lane.graphs is not None, moves_on=True)

    def _forward(
        self, lane: _Lane, writes: list[Write], device_tokens: DeviceTokens | None, replay: bool, moves_on: bool = False
    ) -> tuple[torch.Tensor, bool]:
        """One forward of ``writes``: replayed from the lane's bucket graphs where ``replay`` and they can, else
        eager; timed and counted by kind. Returns its logits and whether it replayed."""
        started = time.perf_counter()
        logits = lane.graphs.forward(writes, device_tokens, moves_on=moves_on) if replay else None
        replayed = logits is not None
        if replayed:
            self.times.replayed += 1
        else:
            logits = self.lm.forward(self.cache, writes, cuda_graphs=False, device_tokens=device_tokens)
            if _is_prefill(writes):
                self.times.prefill += 1
            else:
                self.times.eager += 1
        seconds = time.perf_counter() - started
        self.times.forward += seconds
        if self.on_step is not None:
            self.on_step(len(writes), seconds)
        return logits, replayed

    def _accept(self, running: _Running, blocks: list[KVBlock]) -> Callable[[list[int]], None]:
        """A window's ``accept``: a step the generation takes -- its rows wrote ``written`` -- back in the cache."""

        def accept(written: list[int]) -> None:
            for block, token in zip(blocks, written):
                block.reinstate([token])
            running.cost.forwards += 1
            self.times.kept += 1

        return accept

    def _keep_ahead(self, running: _Running, ahead: _Ahead, chosen: list[int]) -> tuple[Finished | None, bool]:
        """After the generation read its tokens: if it asks for the step launched ahead (the same views, each
        drawn token in its row, its blocks untouched since), give the step back to it and hand it the logits;
        if it then draws from them with the same sampler, that draw is the one already pending. Returns what
        ended the generation (or None) and whether its pending draw stands."""
        request = running.writes
        if (
            running.draw is not None
            or len(request) != len(ahead.views)
            or any(list(w.tokens) != [t] or list(w.view) != list(v) for w, v, t in zip(request, ahead.views, chosen))
            or running.namespace.changes != ahead.changes
            or any(b.storage_version != v for b, v in zip(ahead.blocks, ahead.versions))
        ):
            return None, False
        for block, token in zip(ahead.blocks, chosen):
            block.reinstate([token])
        running.cost.forwards += 1
        running.sent = ahead.logits
        done = self._resume(running, ahead.logits)
        if done is not None:
            return done, False
        draw = running.draw
        if draw is None or draw.sampler is not ahead.sampler or not _same_rows(draw.logits, ahead.logits):
            return None, False
        ahead.sampler.draws = ahead.counter + draw.logits.shape[0]  # its draw is the one already made
        return None, True

    def _resume(self, running: _Running, value: Any) -> Finished | None:
        """Send ``value`` to the generation and note what it asks for next (a forward or a draw)."""
        try:
            request = running.steps.send(value)
        except StopIteration as stop:
            return self._retire(running, result=stop.value)
        except Exception as error:
            return self._retire(running, error=error)
        running.draw = request if isinstance(request, Draw) else None
        if running.draw is None:
            running.writes = request
        return None

    def _retire(self, running: _Running, result: Any = None, error: BaseException | None = None) -> Finished:
        cost = running.cost
        cost.seconds = time.perf_counter() - running.started
        cost.peak_kv_bytes = running.namespace.storage_bytes()
        blocks = running.namespace.drop()
        for lane in self.lanes:
            if lane.graphs is not None:
                lane.graphs.release(blocks)
        del self.running[id(running)]
        running.lane.members.pop(id(running), None)
        self.reserved_bytes -= self.job_bytes(running.job)
        return Finished(running.job.key, result=result, error=error, cost=cost)


class _Queue:
    """The jobs not yet admitted: read from the caller's iterable one at a time, as admission reaches them."""

    def __init__(self, jobs: Iterator[BatchJob]):
        self.jobs, self.head = jobs, None
        self.exhausted = False

    def peek(self) -> BatchJob | None:
        if self.head is None and not self.exhausted:
            self.head = next(self.jobs, None)
            self.exhausted = self.head is None
        return self.head

    def pop(self) -> BatchJob:
        job, self.head = self.head, None
        return job

    def empty(self) -> bool:
        return self.peek() is None
