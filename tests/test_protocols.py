"""Protocols beyond symmetric workers: single, independent + vote, thinker/writer gates; end to end."""

import pytest
from conftest import compose_config, tiny_run_overrides

from hogwild_bench.analysis import load_runs
from hogwild_bench.config import ConfigError, validate
from hogwild_bench.engine import HogwildLM, SamplingParams
from hogwild_bench.engine.thinker_writer import ParagraphGate, ThinkerWriterGenerator, ThinkerWriterOptions
from hogwild_bench.runner import run
from hogwild_bench.voting import majority_vote


@pytest.mark.parametrize(
    "overrides,point",
    [
        (["protocol=single"], (1, "none")),
        (["protocol=independent", "protocol.workers=3", "generation.temperature=0.8"], (3, "none")),
        (["protocol=thinker_writer", "protocol.gate_min_tokens=3"], (2, "thinker_writer")),
    ],
    ids=["single", "independent", "thinker_writer"],
)
def test_protocol_end_to_end_through_the_runner(tmp_path, overrides, point):
    run_dir = run(compose_config(tiny_run_overrides(tmp_path, *overrides)))
    df = load_runs(run_dir)
    assert len(df) == 3 * 2  # problems x budgets
    assert (df["workers"] == point[0]).all() and (df["layout"] == point[1]).all()
    assert df["correct"].isin([True, False]).all() and df["extracted_answer"].notna().all()
    if "independent" in overrides[0]:
        assert all(len(a) == 3 for a in df["worker_answers"]) and df["vote_counts"].notna().all()
        assert all(r.startswith("Majority vote of 3 independent workers: \\boxed{") for r in df["response"])
    if "thinker_writer" in overrides[0]:
        assert df["thinker_text"].str.len().gt(0).all()
        for gates, budget in zip(df["gates"], df["budget"]):  # every gate names its stream, step and decision
            assert all(g["stream"] in ("thinker", "writer") and g["decision"] in ("yes", "no") for g in gates)
            assert all(1 <= g["step"] <= budget for g in gates)


def test_independent_needs_sampling_and_thinker_writer_two_streams():
    with pytest.raises(ConfigError, match="temperature > 0"):
        validate(compose_config(["protocol=independent"]))
    with pytest.raises(ConfigError, match="two streams"):
        validate(compose_config(["protocol=thinker_writer", "protocol.workers=3"]))


def test_vote_groups_equivalent_answers_and_breaks_ties_deterministically():
    vote = majority_vote(["3", "0.5", "\\frac{1}{2}", "\\dfrac{1}{2}", "3", None, ""])
    assert vote.winner == "0.5" and vote.counts == [("3", 2), ("0.5", 3)]
    tie = majority_vote(["7", "\\frac{1}{2}", "0.5", "7.0"])
    assert tie.winner == "7"  # 2 vs 2: the group whose first member is the lowest worker index
    assert majority_vote(["0.5", "7", "7", "\\frac{1}{2}"]).winner == "0.5"
    assert majority_vote([None, "  "]).winner is None


def test_paragraph_gate_needs_new_content_and_a_completed_paragraph(tokenizer):
    gate = ParagraphGate(tokenizer, min_tokens=3)
    encode = tokenizer.encode
    assert gate.should_fire(encode("We add five to both sides.\n\n"))
    assert not gate.should_fire(encode("We add five to both sides."))  # paragraph not finished
    assert not gate.should_fire([])  # just fired: nothing new since
    assert not gate.should_fire(encode("\n\n\n\n\n\n"))  # newlines only are no new content
    assert not ParagraphGate(tokenizer, min_tokens=50).should_fire(encode("Short.\n\n"))  # too few tokens


class EveryTextGate(ParagraphGate):
    """Treats any text as a finished paragraph, so gates fire as often as the rules allow."""

    def ends_paragraph(self, text: str) -> bool:
        return True


@pytest.mark.parametrize("min_tokens", [1, 4])
def test_gate_cannot_repeat_without_new_tokens(models, tokenizer, min_tokens):
    lm = HogwildLM(models("qwen3"))
    options = ThinkerWriterOptions(budgets=[40], gate_min_tokens=min_tokens, early_stop=False,
                                   sampling=SamplingParams(temperature=1.0, seed=3))  # fmt: skip
    generator = ThinkerWriterGenerator(lm, tokenizer, options, gate=EveryTextGate(tokenizer, min_tokens))
    snap = generator.generate("What is 17 + 25?")[40]
    assert len(snap.gates) >= 3 and {g.stream for g in snap.gates} == {"thinker", "writer"}
    for stream in ("thinker", "writer"):
        steps = [g.step for g in snap.gates if g.stream == stream]
        gaps = [b - a for a, b in zip(steps, steps[1:])]
        assert all(gap >= min_tokens for gap in gaps), (stream, steps)
    assert snap.writer_tokens > 0 and snap.thinker_tokens == 40
    assert "[CONTROL]" not in snap.writer_text, "gate questions are not part of the Writer's visible text"


def test_thinker_writer_budget_snapshot_equals_shorter_run(models, tokenizer):
    lm = HogwildLM(models("llama"))

    def run_to(budgets):
        options = ThinkerWriterOptions(budgets=budgets, gate_min_tokens=2, early_stop=False,
                                       sampling=SamplingParams(temperature=0.9, seed=5))  # fmt: skip
        return ThinkerWriterGenerator(lm, tokenizer, options, gate=EveryTextGate(tokenizer, 2)).generate("2+2?")

    a, b = run_to([10, 20])[10], run_to([10])[10]
    assert (a.writer_text, a.thinker_text, a.answer, a.gates) == (b.writer_text, b.thinker_text, b.answer, b.gates)


def test_greeting_off_opens_each_worker_with_its_label_alone(tmp_path):
    from hogwild_bench.store import ResultStore

    texts = {}
    for greeting in ("true", "false"):
        overrides = tiny_run_overrides(tmp_path / greeting, "dataset.limit=1", f"generation.greeting={greeting}")
        (record, *_) = ResultStore(run(compose_config(overrides))).records()
        texts[greeting] = record["worker_texts"]
    assert texts["true"][1].startswith("**Bob [1]:** Hi, I'm Bob.")
    assert texts["false"][0].startswith("**Alice [1]:** ") and "Hi, I'm" not in texts["false"][0][:30]


def test_unlabelled_steps_name_each_worker_once(tmp_path):
    """Without step labels, two workers still start apart: the writer's name opens its first step only."""
    from hogwild_bench.store import ResultStore

    overrides = tiny_run_overrides(tmp_path, "dataset.limit=1", "generation.step_labels=false")
    (record, *_) = ResultStore(run(compose_config(overrides))).records()
    alice, bob = record["worker_texts"]
    assert alice.startswith("**Alice:** Hi, I'm Alice.") and bob.startswith("**Bob:** Hi, I'm Bob.")
    assert "[1]:**" not in alice + bob and "**Alice:**" not in alice[10:] and "**Bob:**" not in bob[8:]


def test_the_system_file_is_read_once_per_run(tmp_path):
    from types import SimpleNamespace

    from hogwild_bench.protocols.base import ProtocolContext

    path = tmp_path / "team.txt"
    path.write_text("Work together, {carefully}.")
    cfg = SimpleNamespace(prompt=SimpleNamespace(name="paper", system_file=str(path)))
    ctx = ProtocolContext(lm=None, tokenizer=None, cfg=cfg)
    assert ctx.prompt_style.system_text == "Work together, {carefully}." and ctx.prompt_style.name == "paper"
    path.write_text("Edited mid-run.")  # the key was computed from the first text: generations keep using it
    assert ctx.prompt_style.system_text == "Work together, {carefully}."
