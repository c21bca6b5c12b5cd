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


def _masked(logits: torch.Tensor, draws: Sequence[Draw], counts: Sequence[int]) -> torch.Tensor:
    """Forbidden tokens at -inf: one add of a cached 0 / -inf row, or of one row per draw when they differ."""
    by_id = {d.sampler.forbidden_id: d.sampler for d in draws if d.sampler.forbidden}
    if not by_id:
        return logits
    vocab, device = logits.shape[-1], logits.device
    if len(by_id) == 1 and all(d.sampler.forbidden for d in draws):
        return logits + _forbidden_mask(next(iter(by_id.values())), vocab, device)
    ids = sorted({d.sampler.forbidden_id for d in draws})
    samplers = {d.sampler.forbidden_id: d.sampler for d in draws}
    table = torch.stack([_forbidden_mask(samplers[i], vocab, device) for i in ids])
    which = [ids.index(d.sampler.forbidden_id) for d, n in zip(draws, counts) for _ in range(n)]
    return logits + table[_to_device(which, torch.int64, device)]


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
    logits = draws[0].logits if len(draws) == 1 else torch.cat([d.logits for d in draws])
    logits = _masked(logits.float(), draws, counts)
    rows = [(d.sampler, d.sampler.draws + k) for d in draws for k in range(d.logits.shape[0])]
    if all(s.params.temperature == 0 for s, _ in rows):
        chosen = logits.argmax(-1)
    else:
        # per row: temperature (1 for greedy rows), top-p, seed key, draw counter, greedy flag -- one upload
        table = _to_device(
            [[s.params.temperature or 1.0, s.params.top_p, s.seed_key, c, s.params.temperature == 0] for s, c in rows],
            torch.float64,
            logits.device,
        )
        top_p = any(s.params.top_p < 1 for s, _ in rows)
        chosen = _choose_in_kernel(logits, table) if logits.is_cuda and not top_p else _choose(logits, table, top_p)
    for draw, n in zip(draws, counts):
        draw.sampler.draws += n
    return counts, chosen


def enqueue_draws(draws: Sequence[Draw]) -> PendingTokens:
    """`draw_tokens` without waiting for the device: the tokens come back through `PendingTokens.result`."""
    return PendingTokens(*_chosen(draws))


def draw_tokens(draws: Sequence[Draw]) -> list[list[int]]:
    """One list of token ids per draw (waits for the device)."""
    counts, chosen = _chosen(draws)
    return _split(chosen.tolist(), counts)
