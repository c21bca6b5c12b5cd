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
    assert score.correct is False and score.timed_out


def test_a_scoring_timeout_is_recorded_as_a_timeout_not_as_a_wrong_answer(monkeypatch):
    from math_verify.errors import TimeoutException

    import hogwild_bench.scoring as scoring

    def slow(*args, **kwargs):
        raise TimeoutException("Timeout during comparison")

    monkeypatch.setattr(scoring, "verify", slow)
    score = score_answer("\\boxed{2}", "2", timeout_seconds=1)
    assert score.correct is False and score.timed_out and "TimeoutException" in score.error
    assert not score_answer("\\boxed{", "2").timed_out


def test_box_extraction_is_linear_on_pathological_responses():
    import time

    from hogwild_bench.answers import last_boxed

    nasty = "\\boxed{" * 50_000 + "1"
    started = time.perf_counter()
    assert last_boxed(nasty) is None
    assert score_answer(nasty, "1").extracted is None
    assert time.perf_counter() - started < 5


def test_nested_and_last_boxes():
    from hogwild_bench.answers import last_boxed, top_level_boxed

    assert last_boxed("x \\boxed{1} then \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{3} and \\boxed{\\frac{1}{") == "3"
    assert last_boxed("\\boxed{\\boxed{7}}") == "7"
    assert top_level_boxed("\\boxed{\\boxed{7}} and \\boxed{8}") == ["\\boxed{7}", "8"]
    assert last_boxed("no box") is None


def test_a_placeholder_copied_from_the_prompt_is_recorded_as_such():
    score = score_answer("**Final Answer:** \\boxed{answer}", "answer")
    assert score.placeholder and not score.correct and score.extracted == "answer"
    assert not score_answer("\\boxed{42}", "42").placeholder


def test_multi_problem_tasks_score_each_part_in_order():
    from hogwild_bench.scoring import score_parts

    score = score_parts("first \\boxed{18} then \\boxed{3} and \\boxed{7}", ["18", "3", "70000"])
    assert score.parts_correct == [True, True, False] and not score.correct and score.partial == 2 / 3
    assert score_parts("\\boxed{1}\\boxed{2}", ["1", "2"]).correct
    assert score_parts("\\boxed{1}", ["1", "2"]).parts_correct == [True, False]
