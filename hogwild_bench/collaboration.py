"""How workers collaborated in one generation: redundancy, answer origin, collaboration checks, work split.

Everything is computed from a *transcript*: per worker, the pieces of text in the order they entered the
cache, each with the decode step it entered at and whether the engine inserted it (step labels and
collaboration prompts) or the worker wrote it (`Piece`). Only written text counts as a worker's work.

Definitions (README, "Collaboration metrics", says the same with their failure modes):

* words: lower-cased runs of letters and digits of a worker's written text; a word's *time* is the step at
  which its last character was written. A word 5-gram's time is the time of its last word.
* ``redundancy_matrix[i][j]``: the fraction of worker i's 5-grams that worker j had written strictly earlier
  (same-step writing is simultaneous: neither could have read the other). ``redundancy``: the mean over
  ordered pairs i != j (None for one worker or no 5-grams).
* answer origin: ``answer_boxed_by``/``answer_boxed_step``: the worker that first wrote ``\\boxed{answer}``
  with the final answer, and when (-1: only the finisher produced it); ``answer_value_first_by``/``_step``:
  the first worker whose written text contains the answer value at all; ``answer_value_earlier_elsewhere``:
  another worker had written the value before it was boxed.
* ``collab_checks``: one entry per inserted collaboration prompt: the worker, the step, its answer (``yes``/
  ``no`` from the first written word after the prompt, else None), and the redundancy (against the other
  workers' earlier text) of the step before the prompt and of the step after it.
* work split: ``worker_idle_steps`` (steps of the generation after the worker ended its turn or gave its
  answer); the protocols add ``worker_written_tokens`` (sampled tokens per worker) and ``steps_per_worker``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from hogwild_bench.answers import boxed_spans
from hogwild_bench.engine.pieces import batch_decoder
from hogwild_bench.engine.prompts import COLLAB_PROMPT

NGRAM = 5
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Piece:
    """Text that entered one worker's cache at ``step``; ``inserted``: the engine's, not the worker's."""

    text: str
    step: int
    inserted: bool = False


Transcript = list[list[Piece]]  # per worker


def transcript_of(
    worker_tokens: Sequence[Sequence[int]],
    token_steps: Sequence[Sequence[int]],
    inserted: Sequence[Sequence[bool]],
    tokenizer,
) -> Transcript:
    """Pieces from a snapshot's per-token records: consecutive tokens of one step and kind form a piece."""
    runs = []  # (worker, token ids, step, inserted) of every piece, decoded together below
    for worker, (tokens, steps, flags) in enumerate(zip(worker_tokens, token_steps, inserted)):
        start = 0
        for k in range(1, len(tokens) + 1):
            if k == len(tokens) or (steps[k], flags[k]) != (steps[start], flags[start]):
                runs.append((worker, tokens[start:k], steps[start], flags[start]))
                start = k
    texts = batch_decoder(tokenizer)([ids for _, ids, _, _ in runs]) if runs else []
    out: Transcript = [[] for _ in worker_tokens]
    for (worker, _, step, flag), text in zip(runs, texts):
        out[worker].append(Piece(text, step, flag))
    return out


@dataclass
class _Worker:
    """One worker's written text with the step of each character, cut into steps at inserted pieces."""

    text: str
    char_steps: list[int]
    char_segments: list[int]
    words: list[tuple[str, int, int]]  # (word, time, segment)
    grams: list[tuple[tuple[str, ...], int, int]]  # (5-gram, time, segment)
    first_time: dict[tuple[str, ...], int]


def _worker(pieces: Sequence[Piece]) -> _Worker:
    text, char_steps, char_segments, segment = [], [], [], 0
    for piece in pieces:
        if piece.inserted:
            if char_steps:  # an inserted piece separates steps: words never span it
                segment += 1
            text.append("\n")
            char_steps.append(piece.step)
            char_segments.append(segment)
            continue
        text.append(piece.text)
        char_steps += [piece.step] * len(piece.text)
        char_segments += [segment] * len(piece.text)
    joined = "".join(text)
    words = [(m.group(), char_steps[m.end() - 1], char_segments[m.end() - 1]) for m in _WORD.finditer(joined.lower())]
    grams = [
        (tuple(w for w, _, _ in words[k : k + NGRAM]), words[k + NGRAM - 1][1], words[k + NGRAM - 1][2])
        for k in range(len(words) - NGRAM + 1)
    ]
    first_time: dict[tuple[str, ...], int] = {}
    for gram, time, _ in grams:
        first_time.setdefault(gram, time)
    return _Worker(joined, char_steps, char_segments, words, grams, first_time)


def _seen_earlier(gram: tuple[str, ...], time: int, others: Sequence[_Worker]) -> bool:
    return any(other.first_time.get(gram, time) < time for other in others)


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def redundancy_matrix(workers: Sequence[_Worker]) -> list[list[float | None]]:
    return [
        [None if i == j else _share([_seen_earlier(g, t, [b]) for g, t, _ in a.grams]) for j, b in enumerate(workers)]
        for i, a in enumerate(workers)
    ]


def _normalise(answer: str) -> str:
    return re.sub(r"\s+", "", answer)


def answer_origin(workers: Sequence[_Worker], answer: str | None, finisher_answered: bool, end_step: int) -> dict:
    out = {"answer_boxed_by": None, "answer_boxed_step": None, "answer_value_first_by": None,
           "answer_value_first_step": None, "answer_value_earlier_elsewhere": None}  # fmt: skip
    if not answer or not answer.strip():
        return out
    target = _normalise(answer)
    boxed = [(w.char_steps[b.end], i) for i, w in enumerate(workers) for b in boxed_spans(w.text)
             if _normalise(b.content) == target]  # fmt: skip
    if boxed:
        out["answer_boxed_step"], out["answer_boxed_by"] = min(boxed)
    elif finisher_answered:
        out["answer_boxed_by"], out["answer_boxed_step"] = -1, end_step
    value = re.compile(r"(?<![\w.])" + re.escape(answer.strip()) + r"(?![\w])")
    written = [(w.char_steps[m.end() - 1], i) for i, w in enumerate(workers) for m in value.finditer(w.text)]
    if written:
        out["answer_value_first_step"], out["answer_value_first_by"] = min(written)
    if out["answer_boxed_by"] is not None:
        boxed_by, boxed_at = out["answer_boxed_by"], out["answer_boxed_step"]
        out["answer_value_earlier_elsewhere"] = any(i != boxed_by and t < boxed_at for t, i in written)
    return out


def _segment_redundancy(worker: _Worker, others: Sequence[_Worker], segment: int | None) -> float | None:
    if segment is None:
        return None
    return _share([_seen_earlier(g, t, others) for g, t, s in worker.grams if s == segment])


def collab_checks(pieces: Transcript, workers: Sequence[_Worker], prompt: str = COLLAB_PROMPT) -> list[dict]:
    checks, needle = [], prompt.strip()
    for i, worker_pieces in enumerate(pieces):
        others = [w for j, w in enumerate(workers) if j != i]
        segment, started = 0, False  # segments as `_worker` cuts them: every inserted piece but a leading one
        for piece in worker_pieces:
            if piece.inserted and started:
                segment += 1
            started = True
            if not (piece.inserted and needle in piece.text):
                continue
            words_after = [w for w, _, s in workers[i].words if s == segment]
            answer = words_after[0] if words_after and words_after[0] in ("yes", "no") else None
            before = segment - 1 if segment > 0 else None
            checks.append({
                "worker": i, "step": piece.step, "answer": answer,
                "redundancy_before": _segment_redundancy(workers[i], others, before),
                "redundancy_after": _segment_redundancy(workers[i], others, segment),
            })  # fmt: skip
    return checks


def collaboration_metrics(
    pieces: Transcript,
    answer: str | None = None,
    finisher_answered: bool = False,
    end_step: int = 0,
    worker_ends: Sequence[tuple[str, int] | None] = (),
    collab_prompt: str = COLLAB_PROMPT,
) -> dict:
    """Every metric of the module docstring for one generation (one record's worth)."""
    workers = [_worker(p) for p in pieces]
    matrix = redundancy_matrix(workers)
    pairs = [v for row in matrix for v in row if v is not None]
    checks = collab_checks(pieces, workers, collab_prompt)
    answered = [c["answer"] for c in checks if c["answer"] is not None]
    ends = list(worker_ends) + [None] * (len(pieces) - len(worker_ends))
    return {
        "redundancy": sum(pairs) / len(pairs) if pairs else None,
        "redundancy_matrix": matrix,
        **answer_origin(workers, answer, finisher_answered, end_step),
        "collab_checks": checks,
        "collab_yes_rate": answered.count("yes") / len(answered) if answered else None,
        "worker_idle_steps": [max(0, end_step - e[1]) if e else 0 for e in ends],
    }
