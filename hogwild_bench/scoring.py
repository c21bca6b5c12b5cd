"""Answer checking with math-verify: the last ``\\boxed{}`` of a response against a gold answer.

Gold and prediction go through the same path (``parse`` of a ``\\boxed{...}`` string), so ``\\dfrac``,
decimals vs fractions, sets, tuples, degrees and ``\\text{}`` answers compare as math-verify decides.
``timeout_seconds`` bounds parsing and comparison so a pathological expression cannot hang a run.
"""

from __future__ import annotations

from dataclasses import dataclass

from math_verify import parse, verify

from hogwild_bench.engine.generation import closed_boxed_answer


@dataclass(frozen=True)
class Score:
    extracted: str | None
    correct: bool
    error: str | None = None


def _parse_boxed(content: str, timeout: int):
    return parse("\\boxed{" + content + "}", parsing_timeout=timeout)


def score_answer(response: str, gold: str, timeout_seconds: int = 5) -> Score:
    """Score ``response``: the last complete ``\\boxed{}`` counts; without one, math-verify's own
    extraction from the text is used."""
    boxed = closed_boxed_answer(response)
    try:
        if boxed is not None:
            predicted = _parse_boxed(boxed, timeout_seconds)
            extracted = boxed
        else:
            predicted = parse(response, parsing_timeout=timeout_seconds)
            extracted = predicted[1] if len(predicted) > 1 else None
        gold_box = closed_boxed_answer(gold)
        expected = _parse_boxed(gold_box if gold_box is not None else gold, timeout_seconds)
        if not predicted or not expected:
            return Score(extracted, False)
        return Score(extracted, bool(verify(expected, predicted, timeout_seconds=timeout_seconds)))
    except Exception as error:  # math-verify raises on timeouts and odd input; a wrong answer, not a crash
        return Score(boxed, False, error=f"{type(error).__name__}: {error}")
