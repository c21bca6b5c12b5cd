"""A worker that ends its turn (EOS / end-of-turn token) is done: it writes no more, what it wrote stays
visible (its open step is committed), the others go on, and the replay reference agrees throughout."""

import pytest
from conftest import LAYOUTS
from helpers import TeeLM
from replay import ReplayLM

from hogwild_bench.engine.generation import GenerationOptions, HogwildGenerator, end_of_turn_ids
from hogwild_bench.engine.layouts import HISTORY
from hogwild_bench.engine.model import HogwildLM
from hogwild_bench.engine.sampling import SamplingParams

EARLY, BUDGET = 60, 100


def run(models, tokenizer, layout, worker_eos):
    tee = TeeLM(HogwildLM(models("qwen3")), ReplayLM(models("qwen3")))
    options = GenerationOptions(n_workers=2, layout=layout, budgets=(EARLY, BUDGET), collab_interval=None,
                                worker_eos=worker_eos, sampling=SamplingParams(temperature=1.0, seed=6))  # fmt: skip
    gen = HogwildGenerator(tee, tokenizer, options, boundary=lambda step: len(step) >= 15)
    return gen.generate("What is 2^{10}?"), tee


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_worker_that_ends_its_turn_stops_writing_and_stays_visible(models, tokenizer, layout):
    result, tee = run(models, tokenizer, layout, "done")
    snap = result.snapshots[BUDGET]
    ends = snap.worker_ends
    assert ends[0] is not None and ends[0][0] == "eos", f"the scenario needs a worker that ends its turn: {ends}"
    eos = end_of_turn_ids(tokenizer)
    assert ends[0][1] < EARLY, "worker 0 ends before the early snapshot"
    early = result.snapshots[EARLY]
    assert early.worker_tokens[0] == snap.worker_tokens[0], "a worker that is done writes nothing more"
    for i in range(2):
        assert not set(snap.worker_tokens[i]) & eos, "an end-of-turn token is never written into the cache"
    if layout != "contiguous":  # its last, unfinished step was committed: the others see it in the history
        tail = snap.worker_tokens[0][-5:]
        history = snap.blocks[HISTORY]
        assert any(history[k : k + 5] == tail for k in range(len(history) - 4))
        assert snap.blocks["step0"] == []
    if all(end is not None for end in ends):
        assert result.finished_early and snap.tokens_per_worker == max(end[1] for end in ends)
    else:
        assert snap.tokens_per_worker == BUDGET
    assert tee.max_gap < 1e-4, f"engine and replay disagree by {tee.max_gap}"


def test_forbid_mode_never_samples_an_end_of_turn_token(models, tokenizer):
    result, _ = run(models, tokenizer, "combined", "forbid")
    snap = result.snapshots[BUDGET]
    assert snap.worker_ends == [None, None] and snap.tokens_per_worker == BUDGET
    assert not any(set(t) & end_of_turn_ids(tokenizer) for t in snap.worker_tokens)
