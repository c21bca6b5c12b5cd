"""Exact oracles: where every cached token sits in the context it was computed in, the plain model on the
flattened view must give the same logits (float32, atol 1e-4). The reference here is the stock model with
SDPA and no Hogwild code."""

import pytest
import torch
from conftest import FAMILIES, LAYOUTS
from helpers import RecordingLM, plain_logits

from hogwild_bench.answers import BOXED_FINISHER
from hogwild_bench.engine.generation import GenerationOptions, HogwildGenerator
from hogwild_bench.engine.layouts import HISTORY, PROMPT, TEMPLATE, Combined, get_layout, step_block
from hogwild_bench.engine.model import HogwildLM, Write

ATOL = 1e-4


def exact_layout(name: str):
    """Combined with empty headers: the only way its steps can sit in the context they were computed in
    after a commit (with text headers, history tokens were computed *after* the headers)."""
    if name == "combined":
        return Combined(others_header="", separator="", own_header="")
    return get_layout(name)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_oracle_single_worker_generation_matches_plain_model(models, tokenizer, family, layout):
    model = models(family)
    recorder = RecordingLM(HogwildLM(model))
    options = GenerationOptions(
        n_workers=1, layout=exact_layout(layout), budgets=(40,), collab_interval=10, early_stop=False
    )
    gen = HogwildGenerator(recorder, tokenizer, options, finisher=BOXED_FINISHER, boundary=lambda s: len(s) >= 14)
    result = gen.generate("What is 17 + 25?")
    snapshot = result.snapshots[40]
    assert snapshot.steps_per_worker[0] >= 3, "the scenario must include step commits"
    view = [TEMPLATE, *options.layout.view(0, 1)]  # the prompt's shared opening, then the problem's block
    loop = [r for r in recorder.records if r.views[0] == view]
    assert snapshot.blocks[TEMPLATE] + snapshot.blocks[PROMPT] == tokenizer.encode(result.prompt)
    final = max((r.flat_views[0] for r in loop), key=len)
    text = tokenizer.decode(final)
    assert "Quick check: am I doing redundant work? (yes/no): " in text
    if options.layout.has_history:
        assert snapshot.blocks[HISTORY], "steps were committed to the history"
    reference = plain_logits(model, final)
    for record in loop:
        flat = record.flat_views[0]
        assert final[: len(flat)] == flat
        torch.testing.assert_close(record.logits[0], reference[len(flat) - 1], atol=ATOL, rtol=0)

    # greedy tokens are those of model.generate on the same text (first step, before any insertion)
    prompt_and_prefix = loop[0].flat_views[0]
    engine_tokens = snapshot.worker_tokens[0][len(loop[0].tokens[0]) :][:6]
    model.set_attn_implementation("sdpa")
    try:
        generated = model.generate(
            torch.tensor([prompt_and_prefix]),
            max_new_tokens=6,
            do_sample=False,
            suppress_tokens=tokenizer.all_special_ids,
            pad_token_id=tokenizer.pad_token_id,
        )[0, len(prompt_and_prefix) :].tolist()
    finally:
        model.set_attn_implementation("hogwild")
    assert generated == engine_tokens

    # the finisher's forced answer is read in exactly its context too
    finisher = [r for r in recorder.records if r.views[0][-1] == "finisher"][-1]
    torch.testing.assert_close(finisher.logits[0], plain_logits(model, finisher.flat_views[0])[-1], atol=ATOL, rtol=0)


def _greedy(logits: torch.Tensor) -> int:
    return int(logits.argmax())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n_workers", [2, 3])
def test_oracle_workers_writing_in_turn_match_plain_model(models, tokenizer, family, layout, n_workers):
    """Workers write one after another (the others idle), so each writer's view is exactly the text its
    tokens were computed in: exercises block offsets, RoPE shifts and commits across workers."""
    model = models(family)
    lm = HogwildLM(model)
    cache = lm.new_cache()
    spec = exact_layout(layout)
    views = spec.views(n_workers)
    lm.prefill(cache, PROMPT, tokenizer.encode("<|im_start|>user\nCount with me.<|im_end|>\n"))
    for name in {name for view in views for name in view} - {PROMPT}:
        cache.clear(name)  # declared empty: a view may only name blocks that exist
    # contiguous keeps every worker's whole output in place, so only one round is order-consistent
    rounds = 1 if layout == "contiguous" else 2
    checked = 0
    for _ in range(rounds):
        for worker in range(n_workers):
            chunk = tokenizer.encode(f"**Worker {worker}:** we count")  # a multi-token append first
            for _ in range(5):
                logits = lm.forward(cache, [Write(views[worker], chunk)], all_logits=True)[0]
                flat = cache.tokens(views[worker])
                reference = plain_logits(model, flat)[len(flat) - len(chunk) :]
                torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)
                chunk = [_greedy(logits[-1])]
                checked += 1
            if spec.has_history:
                cache.commit(step_block(worker), HISTORY)
                assert cache.block(step_block(worker)).length == 0
    assert checked == 5 * n_workers * rounds
    if spec.has_history:
        assert cache.block(HISTORY).length > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_oracle_block_prefilled_in_context_is_exact_at_that_offset(models, tokenizer, family):
    model = models(family)
    lm = HogwildLM(model)
    cache = lm.new_cache()
    lm.prefill(cache, "prompt", tokenizer.encode("Solve: 3x + 5 = 20."))
    lm.prefill(cache, "notes", tokenizer.encode(" First subtract five."), context=["prompt"])
    lm.prefill(cache, "header", tokenizer.encode("\n\n### Work in progress\n\n"), context=["prompt", "notes"])
    view = ["prompt", "notes", "header", "step0"]
    logits = lm.forward(cache, [Write(view, tokenizer.encode("**Alice [1]:** x ="))], all_logits=True)[0]
    flat = cache.tokens(view)
    torch.testing.assert_close(logits, plain_logits(model, flat)[-logits.shape[0] :], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_standalone_prefill_is_reusable_but_not_the_flat_text(models, tokenizer, family):
    """A standalone block is exact only at offset 0; placed after other text its keys were not computed
    in that context, so logits differ from the plain model -- that is Hogwild! semantics, not a bug. There the
    replay of the semantics (keys computed standalone, then only re-positioned) is the reference."""
    from replay import ReplayLM

    model = models(family)
    header_ids = tokenizer.encode("\n\n### Work in progress\n\n")
    results = []
    for lm in (HogwildLM(model), ReplayLM(model)):
        cache = lm.new_cache()
        lm.prefill(cache, "header", header_ids)  # standalone
        lm.prefill(cache, "prompt", tokenizer.encode("Solve: 3x + 5 = 20."))
        alone = lm.forward(cache, [Write(["header", "a"], tokenizer.encode(" x ="))])[0]
        placed = lm.forward(cache, [Write(["prompt", "header", "b"], tokenizer.encode(" x ="))])[0]
        results.append((alone, placed, cache.tokens(["prompt", "header", "b"])))
    (alone, placed, flat), (replay_alone, replay_placed, _) = results
    torch.testing.assert_close(alone, plain_logits(model, header_ids + tokenizer.encode(" x ="))[-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(alone, replay_alone, atol=ATOL, rtol=0)
    torch.testing.assert_close(placed, replay_placed, atol=ATOL, rtol=0)
    assert (placed - plain_logits(model, flat)[-1]).abs().max() > 1e-3  # and it is not the flat text


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64, "rope_theta": 500000.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 10000.0},
    ],
    ids=lambda r: r["rope_type"],
)  # fmt: skip
def test_oracle_supported_rope_types(tokenizer, rope):
    from hogwild_bench.tiny import tiny_model

    model = tiny_model("llama", rope_parameters=rope)
    lm = HogwildLM(model)
    cache = lm.new_cache()
    lm.prefill(cache, PROMPT, tokenizer.encode("Compute 12 times 13, step by step."))
    cache.clear(HISTORY)  # declared empty: a view may only name blocks that exist
    views = get_layout("interleaved").views(2)
    for worker in (0, 1, 0):
        logits = lm.forward(cache, [Write(views[worker], tokenizer.encode(f"**W{worker}:** twelve"))])[0]
        flat = cache.tokens(views[worker])
        torch.testing.assert_close(logits, plain_logits(model, flat)[-1], atol=ATOL, rtol=0)
        cache.commit(step_block(worker), HISTORY)
