"""Concurrent generation (every worker writes every step) against the replay reference in `replay.py`.

Here cached tokens were computed before other workers' newer tokens were placed in front of them, so the
plain model on the flat text is *not* an oracle; the replay of the semantics is."""

import pytest
from conftest import FAMILIES, LAYOUTS
from helpers import TeeLM
from replay import ReplayLM

from hogwild_bench.answers import BOXED_FINISHER
from hogwild_bench.engine.generation import GenerationOptions, HogwildGenerator
from hogwild_bench.engine.model import HogwildLM
from hogwild_bench.engine.sampling import SamplingParams

STEPS = 200


def staggered_boundary(step_tokens):
    """Steps of 12..18 tokens depending on content, so workers commit at different times."""
    return len(step_tokens) >= 12 + sum(step_tokens) % 7


CASES = [(f, layout, 2) for f in FAMILIES for layout in LAYOUTS]
CASES += [(f, layout, 3) for f in ("llama", "qwen3") for layout in LAYOUTS]


@pytest.mark.parametrize("family,layout,n_workers", CASES)
def test_replay_concurrent_generation(models, tokenizer, family, layout, n_workers):
    model = models(family)
    tee = TeeLM(HogwildLM(model), ReplayLM(model))
    options = GenerationOptions(
        n_workers=n_workers,
        layout=layout,
        budgets=(STEPS // 2, STEPS),
        collab_interval=37,
        early_stop=False,
        worker_eos="forbid",  # a fixed-length scenario (workers that end their turn: test_engine_eos.py)
        sampling=SamplingParams(temperature=1.0, seed=7),
    )
    decisions = []

    def boundary(step_tokens):
        decisions.append(staggered_boundary(step_tokens))
        return decisions[-1]

    gen = HogwildGenerator(tee, tokenizer, options, finisher=BOXED_FINISHER, boundary=boundary)
    result = gen.generate("What is 2^{10}?")
    final = result.snapshots[STEPS]
    assert final.tokens_per_worker == STEPS
    assert tee.forwards >= STEPS
    per_step = [decisions[i : i + n_workers] for i in range(0, len(decisions), n_workers)]
    assert any(any(step) and not all(step) for step in per_step), "workers should commit at different times"
    assert min(final.steps_per_worker) >= 10
    text = tokenizer.decode(final.worker_tokens[0])
    assert "Quick check: am I doing redundant work? (yes/no): " in text
    assert tee.max_gap < 1e-4, f"engine and replay disagree by {tee.max_gap}"


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_replay_in_context_headers_and_per_worker_finisher(models, tokenizer, family):
    """Headers re-prefilled in context at every step, and each worker's own finisher run from its own view
    mid-generation (per-worker answers), agree with the replay of the semantics."""
    model = models(family)
    tee = TeeLM(HogwildLM(model), ReplayLM(model))
    options = GenerationOptions(n_workers=2, layout="combined", budgets=(20, 40), collab_interval=11,
                                early_stop=False, worker_eos="forbid", header_prefill="in_context",
                                per_worker=True, finisher_max_tokens=5,
                                sampling=SamplingParams(temperature=1.0, seed=11))  # fmt: skip
    gen = HogwildGenerator(tee, tokenizer, options, finisher=BOXED_FINISHER, boundary=staggered_boundary)
    result = gen.generate("What is 2^{10}?")
    assert result.snapshots[40].tokens_per_worker == 40 and len(result.snapshots[20].worker_responses) == 2
    assert tee.forwards > 40 + 2 * 2 * 5 // 2  # decode steps, header prefills and the finishers' forwards
    assert tee.max_gap < 1e-4, f"engine and replay disagree by {tee.max_gap}"


def test_replay_thinker_writer(models, tokenizer):
    """The Thinker/Writer pair (gates, paused streams, questions in the asking stream's cache)."""
    from test_protocols import EveryTextGate

    from hogwild_bench.engine.thinker_writer import ThinkerWriterGenerator, ThinkerWriterOptions

    model = models("qwen3")
    tee = TeeLM(HogwildLM(model), ReplayLM(model))
    options = ThinkerWriterOptions(budgets=[40], gate_min_tokens=3, early_stop=False,
                                   sampling=SamplingParams(temperature=1.0, seed=3))  # fmt: skip
    snap = ThinkerWriterGenerator(tee, tokenizer, options, gate=EveryTextGate(tokenizer, 3)).generate("17 + 25?")[40]
    assert {g.stream for g in snap.gates} == {"thinker", "writer"} and snap.writer_tokens > 0
    assert tee.max_gap < 1e-4, f"engine and replay disagree by {tee.max_gap}"
