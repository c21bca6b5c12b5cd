"""Next-token choice: greedy or temperature/top-p sampling, reproducible from a seed.

Sampling uses the Gumbel-max trick with counter-based noise: row ``k`` of a sampler's ``d``-th draw adds
noise that is a fixed function of ``(seed, d + k, token id)`` to its scaled logits and takes the argmax. A
draw therefore depends only on its own logits and its own sampler's history -- never on which other rows
are drawn beside it -- so `draw_tokens` can serve every generation of a batched forward in one call (one
device sync per step, not one per generation) and still give each the tokens it would get alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF
_FORBIDDEN_SETS: dict[tuple[int, ...], int] = {}  # every forbidden set seen -> its id


@dataclass(frozen=True)
class SamplingParams:
    """``temperature=0`` is greedy. ``seed`` fixes the draws."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    forbidden_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


class Sampler:
    """One generation's token chooser: its parameters, forbidden tokens and the count of rows drawn so far."""

    def __init__(self, params: SamplingParams, extra_forbidden: Sequence[int] = ()):
        self.params = params
        self.forbidden = tuple(sorted(set(params.forbidden_token_ids) | set(extra_forbidden)))
        # forbidden sets can hold most of a vocabulary: hashed once here, then known by a small id
        self.forbidden_id = _FORBIDDEN_SETS.setdefault(self.forbidden, len(_FORBIDDEN_SETS))
        self.draws = 0
        seed = params.seed
        self.seed_key = _mix32((seed & _MASK32) ^ _mix32(((seed >> 32) & _MASK32) ^ 0x9E3779B9))

    def __call__(self, logits: torch.Tensor) -> list[int]:
        """``logits [rows, V]`` -> one token id per row."""
        return draw_tokens([Draw(logits, self)])[0]


@dataclass
class Draw:
    """A request for one token per row of ``logits`` chosen by ``sampler``.

    A generation coroutine yields it (instead of a forward's writes) and is sent the token ids; the batcher
    answers the draws of all generations in a step with one `draw_tokens` call."""

    logits: torch.Tensor
    sampler: Sampler
    takes_window: bool = False  # the requester also understands a `generation.Window` for an answer


def _mix32(x):
    """A 32-bit integer mixer (xorshift-multiply rounds); works on Python ints and int64 tensors alike.
    Multipliers are below 2**31, so products of 32-bit values never overflow int64."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x31848BAB) & _MASK32
    return x ^ (x >> 16)


def gumbel_noise(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """``[rows, vocab]`` float32 standard Gumbel noise, a function of each row's 32-bit key and the token id."""
    tokens = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    bits = _mix32(_mix32(keys[:, None] ^ tokens) ^ keys[:, None])
    uniform = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # in (0, 1), never 0 or 1
    return -torch.log(-torch.log(uniform))


_MASKS: dict[tuple[int, int, str], torch.Tensor] = {}


def _forbidden_mask(sampler: Sampler, vocab: int, device: torch.device) -> torch.Tensor:
    """A cached ``[vocab]`` row: 0, or -inf at the sampler's forbidden tokens."""
    key = (sampler.forbidden_id, vocab, str(device))
    if key not in _MASKS:
        mask = torch.zeros(vocab, device=device)
        mask[[i for i in sampler.forbidden if i < vocab]] = float("-inf")
        _MASKS[key] = mask
    return _MASKS[key]


def _mask_parts(
    samplers: Sequence[Sampler], counts: Sequence[int], vocab: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """What `_masked` adds for rows drawn by ``samplers`` (``counts`` rows each): None when nothing is forbidden,
    a cached 0 / -inf row for every row when they all forbid the same, else a small table and each row's index
    into it (on the device)."""
    by_id = {s.forbidden_id: s for s in samplers}
    if not any(s.forbidden for s in samplers):
        return None
    if len(by_id) == 1:
        return _forbidden_mask(samplers[0], vocab, device), None
    ids = sorted(by_id)
    table = torch.stack([_forbidden_mask(by_id[i], vocab, device) for i in ids])
    which = [ids.index(s.forbidden_id) for s, n in zip(samplers, counts) for _ in range(n)]
    return table, _to_device(which, torch.int64, device)


def _masked(logits: torch.Tensor, parts: tuple[torch.Tensor, torch.Tensor | None] | None) -> torch.Tensor:
    """Forbidden tokens at -inf (`_mask_parts`): one add of a cached row, or of one row per draw when they differ."""
    if parts is None:
        return logits
    table, which = parts
    return logits + (table if which is None else table[which])


def _row_table(samplers: Sequence[Sampler], counts: Sequence[int], device: torch.device) -> torch.Tensor | None:
    """Per row, one upload: temperature (1 for greedy rows), top-p, seed key, draw counter, greedy flag; None
    when every row is greedy (an argmax needs none of it)."""
    if all(s.params.temperature == 0 for s in samplers):
        return None
    rows = [
        [s.params.temperature or 1.0, s.params.top_p, s.seed_key, s.draws + k, s.params.temperature == 0]
        for s, n in zip(samplers, counts)
        for k in range(n)
    ]
    return _to_device(rows, torch.float64, device)


def _keys(table: torch.Tensor) -> torch.Tensor:
    """Each row's 32-bit noise key: its sampler's seed key mixed with its draw counter."""
    return _mix32(table[:, 2].long() ^ _mix32(table[:, 3].long() & _MASK32))


def _choose(logits: torch.Tensor, table: torch.Tensor, top_p: bool) -> torch.Tensor:
    """The reference: tempered logits (top-p cut) plus Gumbel noise, argmax; greedy rows take the argmax."""
    scaled = logits / table[:, :1].float()
    if top_p:
        p = table[:, 1:2].float()
        probs, order = torch.softmax(scaled, dim=-1).sort(dim=-1, descending=True)
        outside = (probs.cumsum(-1) - probs >= p) & (p < 1)  # mass before the token already >= p
        scaled = scaled.masked_fill(torch.zeros_like(outside).scatter(-1, order, outside), float("-inf"))
    sampled = (scaled + gumbel_noise(_keys(table), logits.shape[-1])).argmax(-1)
    return torch.where(table[:, 4].bool(), logits.argmax(-1), sampled)


def _choose_in_kernel(logits: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """`_choose` without top-p, in one launch (`sampling_kernel`): the same tokens."""
    from hogwild_bench.engine.sampling_kernel import gumbel_argmax

    return gumbel_argmax(logits, _keys(table), table[:, 0].float(), table[:, 4].bool())


def _choose_rows(logits: torch.Tensor, table: torch.Tensor | None, top_p: bool) -> torch.Tensor:
    """One token per row of masked float ``logits`` with `_row_table`'s ``table`` (None: all greedy)."""
    if table is None:
        return logits.argmax(-1)
    return _choose_in_kernel(logits, table) if logits.is_cuda and not top_p else _choose(logits, table, top_p)


class PendingTokens:
    """Token choices enqueued on the device: `result` waits for these alone (an event of their own, not the
    whole stream), so the host can prepare other work while the device computes them."""

    def __init__(self, counts: Sequence[int], chosen: torch.Tensor):
        self.counts = counts  # rows of each draw
        self.on_device = chosen  # [rows] int64: a forward may read them before the host does
        self.event = None
        if chosen.is_cuda:
            self.chosen = torch.empty(chosen.shape, dtype=chosen.dtype, pin_memory=True)
            self.chosen.copy_(chosen, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.chosen = chosen

    def result(self) -> list[list[int]]:
        """One list of token ids per draw (waits for the device)."""
        if self.event is not None:
            self.event.synchronize()
        return _split(self.chosen.tolist(), self.counts)


def _split(flat: list[int], counts: Sequence[int]) -> list[list[int]]:
    """``flat`` cut into consecutive lists of ``counts`` items."""
    out, start = [], 0
    for n in counts:
        out.append(flat[start : start + n])
        start += n
    return out


def _to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host table on ``device`` without a device sync (a pageable upload may wait for the stream)."""
    table = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return table.to(device)
    return table.pin_memory().to(device, non_blocking=True)


def _chosen(draws: Sequence[Draw]) -> tuple[list[int], torch.Tensor]:
    """The rows of each draw and one token per row of every draw, on the logits' device (row-local math: a
    row's token never depends on the other rows). Each sampler counts its rows as drawn."""
    counts = [d.logits.shape[0] for d in draws]
    samplers = [d.sampler for d in draws]
    logits = draws[0].logits if len(draws) == 1 else torch.cat([d.logits for d in draws])
    logits = _masked(logits.float(), _mask_parts(samplers, counts, logits.shape[-1], logits.device))
    top_p = any(s.params.top_p < 1 for s in samplers)
    chosen = _choose_rows(logits, _row_table(samplers, counts, logits.device), top_p)
    for sampler, n in zip(samplers, counts):
        sampler.draws += n
    return counts, chosen


class WindowDraws:
    """The token choices of a window's guessed steps (`engine.batch`): every step draws the same rows with the
    same samplers, each counter one step further on, so the rows' table and forbidden-token mask are built and
    uploaded once and a step only moves the counters, on the device. Each step's tokens stay on the device
    (the next step reads them there) and `result` brings them all back with one copy. The tokens are those
    `enqueue_draws` would choose step after step; the samplers' counters are left as they are (the batch holds
    a window's steps back until their generation takes them)."""

    def __init__(self, samplers: Sequence[Sampler], counts: Sequence[int]):
        self.samplers, self.counts = list(samplers), list(counts)
        self.chosen: list[torch.Tensor] = []  # per step, ``[rows]`` on the device
        self._prepared: tuple | None = None

    def step(self, logits: torch.Tensor) -> torch.Tensor:
        """One token per row of ``logits`` (``[rows, vocab]``: each sampler's rows in turn), for the next step."""
        if self._prepared is None:
            device = logits.device
            table = _row_table(self.samplers, self.counts, device)
            moves = None
            if table is not None:  # a step moves each row's counter by its sampler's rows (uploaded, no sync)
                moves = _to_device([[0, 0, 0, n, 0] for n in self.counts for _ in range(n)], torch.float64, device)
            mask = _mask_parts(self.samplers, self.counts, logits.shape[-1], device)
            self._prepared = mask, table, moves, any(s.params.top_p < 1 for s in self.samplers)
        mask, table, moves, top_p = self._prepared
        if table is not None and self.chosen:
            table = table + len(self.chosen) * moves
        self.chosen.append(_choose_rows(_masked(logits.float(), mask), table, top_p))
        return self.chosen[-1]

    def result(self) -> list[list[list[int]]]:
        """Each step's tokens, one list per sampler (waits for the device, once)."""
        if not self.chosen:
            return []
        steps = PendingTokens([len(self.chosen)], torch.stack(self.chosen)).result()[0]
        return [_split(row, self.counts) for row in steps]


def enqueue_draws(draws: Sequence[Draw]) -> PendingTokens:
    """`draw_tokens` without waiting for the device: the tokens come back through `PendingTokens.result`."""
    return PendingTokens(*_chosen(draws))


def draw_tokens(draws: Sequence[Draw]) -> list[list[int]]:
    """One list of token ids per draw (waits for the device)."""
    counts, chosen = _chosen(draws)
    return _split(chosen.tolist(), counts)
