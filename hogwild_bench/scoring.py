"""Answer checking with math-verify: the last ``\\boxed{}`` of a response against a gold answer.

Gold and prediction go through the same path (``parse`` of a ``\\boxed{...}`` string), so ``\\dfrac``,
decimals vs fractions, sets, tuples, degrees and ``\\text{}`` answers compare as math-verify decides.
``timeout_seconds`` bounds parsing and comparison so a pathological expression cannot hang a run; the
box extraction before it is one linear pass. An answer copied from the instructions (``\\boxed{answer}``)
is recorded as a placeholder. Multi-problem tasks (``gsm8k_x5``) are scored part by part: the i-th
top-level box answers part i, and the task is correct only if every part is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from math_verify import parse, verify
from math_verify.errors import TimeoutException

from hogwild_bench.answers import is_placeholder, last_boxed, top_level_boxed


@dataclass(frozen=True)
class Score:
    extracted: str | None
    correct: bool
    error: str | None = None
    placeholder: bool = False  # the extracted answer is a word copied from the prompt, not an answer
    parts_correct: list[bool] = field(default_factory=list)  # multi-problem tasks: each part's verdict

    @property
    def timed_out(self) -> bool:
        """math-verify hit ``timeout_seconds`` (the verdict is False because of it, not because it is wrong)."""
        return bool(self.error) and "TimeoutException" in self.error

    @property
    def partial(self) -> float | None:
        return sum(self.parts_correct) / len(self.parts_correct) if self.parts_correct else None


def _parse_boxed(content: str, timeout: int):
    return parse("\\boxed{" + content + "}", parsing_timeout=timeout, raise_on_error=True)


def _verify(predicted, gold: str, timeout: int) -> bool:
    """``predicted``: box content (a string) or math-verify's parse of a response."""
    if isinstance(predicted, str):
        predicted = _parse_boxed(predicted, timeout)
    gold_box = last_boxed(gold)
    expected = _parse_boxed(gold_box if gold_box is not None else gold, timeout)
    return bool(predicted and expected and verify(expected, predicted, timeout_seconds=timeout, raise_on_error=True))


def score_answer(response: str, gold: str, timeout_seconds: int = 5) -> Score:
    """Score ``response``: the last complete ``\\boxed{}`` counts; without one, math-verify's own
    extraction from the text is used."""
    boxed = last_boxed(response)
    if is_placeholder(boxed):
        return Score(boxed, False, placeholder=True)
    try:
        if boxed is not None:
            return Score(boxed, _verify(boxed, gold, timeout_seconds))
        predicted = parse(response[-4000:], parsing_timeout=timeout_seconds, raise_on_error=True)
        extracted = predicted[1] if len(predicted) > 1 else None
        return Score(extracted, _verify(predicted, gold, timeout_seconds))
    except (Exception, TimeoutException) as error:  # timeouts and odd input: a wrong answer, recorded as such
        return Score(boxed, False, error=f"{type(error).__name__}: {str(error)[:200]}")


def score_parts(response: str, golds: Sequence[str], timeout_seconds: int = 5) -> Score:
    """A multi-problem task: the first ``len(golds)`` top-level boxes, in order, against each gold."""
    answers = top_level_boxed(response)[: len(golds)]
    verdicts, errors = [], []
    for i, gold in enumerate(golds):
        if i >= len(answers) or is_placeholder(answers[i]):
            verdicts.append(False)
            continue
        try:
            verdicts.append(_verify(answers[i], gold, timeout_seconds))
        except (Exception, TimeoutException) as error:
            verdicts.append(False)
            errors.append(f"part {i + 1}: {type(error).__name__}: {str(error)[:100]}")
    return Score(
        extracted="; ".join(answers) if answers else None,
        correct=all(verdicts),
        error="; ".join(errors) or None,
        placeholder=any(is_placeholder(a) for a in answers),
        parts_correct=verdicts,
    )
