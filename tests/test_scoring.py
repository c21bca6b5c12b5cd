"""score_answer: the last complete \\boxed{} against a gold answer normalised the same way."""

import pytest

from hogwild_bench.scoring import score_answer


@pytest.mark.parametrize(
    "response,gold,correct",
    [
        ("so the answer is \\boxed{0.5}", "\\frac{1}{2}", True),  # decimal vs fraction
        ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", True),  # \dfrac
        ("\\boxed{\\{3, 2\\}}", "\\{2, 3\\}", True),  # sets are unordered
        ("\\boxed{(6,4)}", "(6, 4)", True),  # tuples
        ("\\boxed{(4, 6)}", "(6, 4)", False),  # ... are ordered
        ("\\boxed{120^\\circ}", "120", True),  # degrees
        ("\\boxed{\\text{Monday}}", "Monday", True),  # text answers
        ("The final answer is 42.", "42", True),  # no \boxed: math-verify's own extraction
        ("first \\boxed{41}, then corrected: \\boxed{42}", "42", True),  # several \boxed: the last counts
        ("first \\boxed{42}, then changed to \\boxed{41}", "42", False),
        ("\\boxed{12}", "\\boxed{12}", True),  # gold given boxed
        ("\\boxed{7}", "5", False),
        ("no answer at all", "5", False),
    ],
)
def test_tricky_pairs(response, gold, correct):
    assert score_answer(response, gold).correct is correct


def test_extracted_answer_is_the_last_box():
    score = score_answer("try \\boxed{1} then \\boxed{\\frac{1}{2}}", "0.5")
    assert score.extracted == "\\frac{1}{2}" and score.correct


def test_pathological_expression_is_bounded_and_wrong_not_a_crash():
    score = score_answer("\\boxed{" + "9^" * 40 + "9}", "1", timeout_seconds=1)
    assert score.correct is False
