"""Engine behaviour: attention paths agree, snapshots equal shorter runs, storage grows by amortised
appends, early stop, and unsupported models are refused with a clear error."""

import pytest
import torch
from helpers import RecordingLM
from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

from hogwild_bench.answers import BOXED_FINISHER, last_boxed, stop_on_boxed
from hogwild_bench.engine.blocks import KVBlock
from hogwild_bench.engine.generation import GenerationOptions, HogwildGenerator, ParagraphBoundary
from hogwild_bench.engine.layouts import get_layout
from hogwild_bench.engine.model import HogwildLM
from hogwild_bench.engine.prompts import PromptFormat
from hogwild_bench.engine.rope import RotaryShift, UnsupportedModelError, check_model_supported
from hogwild_bench.engine.sampling import SamplingParams
from hogwild_bench.tiny import tiny_tokenizer


def every(n):
    return lambda step: len(step) >= n


@pytest.mark.parametrize("layout", ["contiguous", "interleaved", "combined"])
def test_query_rotation_path_equals_key_rotation_path(models, tokenizer, layout):
    model = models("qwen3")
    runs = {}
    for path in ("query_rotation", "key_rotation"):
        recorder = RecordingLM(HogwildLM(model, attention=path))
        options = GenerationOptions(n_workers=3, layout=layout, budgets=(60,), collab_interval=20, early_stop=False)
        result = HogwildGenerator(recorder, tokenizer, options, boundary=every(10)).generate("What is 3! + 4!?")
        runs[path] = (recorder.records, result.snapshots[60])
    (fast, fast_snap), (ref, ref_snap) = runs["query_rotation"], runs["key_rotation"]
    assert len(fast) == len(ref)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=0)
    assert fast_snap.worker_tokens == ref_snap.worker_tokens


@pytest.mark.parametrize("layout", ["contiguous", "interleaved", "combined"])
def test_budget_snapshot_equals_run_stopped_at_that_budget(models, tokenizer, layout):
    model = models("llama")

    def run(budgets):
        options = GenerationOptions(
            n_workers=2,
            layout=layout,
            budgets=budgets,
            collab_interval=15,
            early_stop=False,
            sampling=SamplingParams(temperature=0.8, top_p=0.9, seed=11),
        )
        return HogwildGenerator(HogwildLM(model), tokenizer, options, boundary=every(9)).generate("Compute 1/2 + 1/3.")

    many = run((10, 25, 40))
    single = run((25,))
    a, b = many.snapshots[25], single.snapshots[25]
    assert (a.blocks, a.worker_tokens, a.steps_per_worker) == (b.blocks, b.worker_tokens, b.steps_per_worker)
    assert (a.answer, a.response, a.tokens_per_worker) == (b.answer, b.response, b.tokens_per_worker)
    assert many.snapshots[40].total_tokens > a.total_tokens > many.snapshots[10].total_tokens


def test_sampling_is_reproducible_from_seed_and_changes_with_it(models, tokenizer):
    model = models("qwen2")

    def tokens(seed):
        options = GenerationOptions(
            n_workers=2, budgets=(20,), early_stop=False, sampling=SamplingParams(temperature=1.0, seed=seed)
        )
        return HogwildGenerator(HogwildLM(model), tokenizer, options).generate("2+2?").snapshots[20].worker_tokens

    assert tokens(1) == tokens(1)
    assert tokens(1) != tokens(2)


def test_forbidden_tokens_are_never_sampled(models, tokenizer):
    model = models("llama")
    lm = HogwildLM(model)
    probe = GenerationOptions(n_workers=1, budgets=(12,), early_stop=False)
    favourite = HogwildGenerator(lm, tokenizer, probe).generate("2+2?").snapshots[12].worker_tokens[0][-12:]
    banned = tuple(sorted(set(favourite)))
    options = GenerationOptions(
        n_workers=1, budgets=(12,), early_stop=False, sampling=SamplingParams(forbidden_token_ids=banned)
    )
    out = HogwildGenerator(lm, tokenizer, options).generate("2+2?").snapshots[12].worker_tokens[0][-12:]
    assert not set(out) & set(banned)
    assert not set(out) & set(tokenizer.all_special_ids)


def test_early_stop_when_a_worker_writes_a_final_boxed_answer(models, tokenizer):
    options = GenerationOptions(
        n_workers=2,
        budgets=(8, 16),
        first_steps=["**Alice [1]:** So the answer is \\boxed{4}.", "**Bob [1]:** Hi, I'm Bob."],
    )
    hooks = {"stop": stop_on_boxed(tokenizer), "finisher": BOXED_FINISHER}
    result = HogwildGenerator(HogwildLM(models("llama")), tokenizer, options, **hooks).generate("2+2?")
    assert result.finished_early and result.tokens_per_worker == 1
    for budget in (8, 16):
        snap = result.snapshots[budget]
        assert snap.finished_early and snap.answered_by == 0 and snap.tokens_per_worker == 1
        assert snap.answer is None and last_boxed(snap.response) == "4"  # no finisher: the worker answered


def test_without_hooks_the_engine_runs_to_the_budget_and_forces_no_answer(models, tokenizer):
    opening = ["So the answer is \\boxed{4}."]
    options = GenerationOptions(n_workers=1, layout="contiguous", budgets=(6,), first_steps=opening)
    result = HogwildGenerator(HogwildLM(models("llama")), tokenizer, options).generate("2+2?")
    snap = result.snapshots[6]
    assert not result.finished_early and snap.tokens_per_worker == 6
    assert snap.answer is None and snap.response == tokenizer.decode(snap.worker_tokens[0])


def test_finisher_answer_ends_the_response_and_does_not_change_later_budgets(models, tokenizer):
    lm = HogwildLM(models("mistral"))
    options = GenerationOptions(n_workers=2, layout="combined", budgets=(5, 10), early_stop=False)
    with_finisher = HogwildGenerator(lm, tokenizer, options, boundary=every(6), finisher=BOXED_FINISHER)
    result = with_finisher.generate("2+2?")
    snap = result.snapshots[10]
    assert "finisher" not in snap.blocks
    assert snap.response.endswith(BOXED_FINISHER.suffix + snap.answer + "}")
    # the finisher at budget 5 ran mid-generation: the state at 10 equals a run that never finished at 5
    plain = HogwildGenerator(
        lm,
        tokenizer,
        GenerationOptions(n_workers=2, layout="combined", budgets=(10,), early_stop=False),
        boundary=every(6),
    ).generate("2+2?")
    assert plain.snapshots[10].blocks == snap.blocks and plain.snapshots[10].worker_tokens == snap.worker_tokens


def test_a_finished_generation_takes_one_snapshot_for_every_budget_it_did_not_reach(models, tokenizer):
    """Once every worker has ended its turn, the budgets not yet reached all see the same state: the finisher
    runs once for them, and their snapshots differ only in their budget."""
    from hogwild_bench.engine.generation import FINISHER

    lm = HogwildLM(models("llama"))
    options = GenerationOptions(n_workers=1, layout="contiguous", budgets=(8, 16, 32), early_stop=False,
                                sampling=SamplingParams(temperature=0.0))  # fmt: skip
    alone = HogwildGenerator(lm, tokenizer, options).generate("2+2?").snapshots[8]
    first = next(t for t, inserted in zip(alone.worker_tokens[0], alone.worker_inserted[0]) if not inserted)
    recorder = RecordingLM(lm)
    gen = HogwildGenerator(recorder, tokenizer, options, finisher=BOXED_FINISHER)
    gen.eos_ids = {first}  # the worker's first sampled token ends its turn
    result = gen.generate("2+2?")
    assert result.finished_early and result.tokens_per_worker == 1
    finisher_prompts = [r for r in recorder.records if len(r.tokens[0]) > 1 and r.views[0][-1] == FINISHER]
    assert len(finisher_prompts) == 1, "one finisher run serves budgets 8, 16 and 32"
    snaps = [result.snapshots[b] for b in (8, 16, 32)]
    assert [s.budget for s in snaps] == [8, 16, 32] and snaps[0].answer is not None
    for snap in snaps[1:]:
        assert snap.response == snaps[0].response and snap.worker_tokens == snaps[0].worker_tokens


def test_paragraph_boundary_needs_sentence_end_then_blank_line():
    tok = tiny_tokenizer()
    boundary = ParagraphBoundary(tok)
    assert boundary(tok.encode("We add the numbers.\n\n"))
    assert boundary(tok.encode("Is it $x=2$?\n\n"))
    assert not boundary(tok.encode("We add the numbers\n\n"))
    assert not boundary(tok.encode("We add the numbers.\n"))


def test_kv_block_grows_by_doubling_and_moves_by_rotation_only():
    rope = RotaryShift(1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8)))
    block = KVBlock("b", num_layers=1)
    reallocations, last = 0, None
    for i in range(1000):
        block.start_write([i])
        block.write(0, torch.randn(2, 1, 8), torch.randn(2, 1, 8))
        block.finish_write()
        if block.keys[0].data_ptr() != last:
            reallocations, last = reallocations + 1, block.keys[0].data_ptr()
    assert block.length == 1000 and reallocations <= 6
    history = KVBlock("h", num_layers=1)
    history.start_write([0, 1, 2])
    history.write(0, torch.randn(2, 3, 8), torch.randn(2, 3, 8))
    history.finish_write()
    moved_keys, moved_values = block.layer_kv(0)
    moved_keys, moved_values = moved_keys.clone(), moved_values.clone()
    history.extend_from(block, rope)
    keys, values = history.layer_kv(0)
    assert torch.equal(values[:, 3:], moved_values)
    torch.testing.assert_close(keys[:, 3:], rope.rotate(moved_keys, 3))


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
)
def test_a_shift_by_an_int_is_computed_once_and_equals_a_fresh_one(device):
    """Commits shift by block lengths that repeat: their cos/sin are kept (rows of one table per device, grown
    as larger deltas come), bit for bit what a tensor delta gives, and plain tensors even when first made under
    inference mode."""
    rope = RotaryShift(1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16)))
    with torch.inference_mode():
        cos, sin = rope.cos_sin(37, torch.device(device))
    fresh_cos, fresh_sin = rope.cos_sin(torch.tensor(37), torch.device(device))
    assert torch.equal(cos, fresh_cos) and torch.equal(sin, fresh_sin)
    assert not cos.is_inference() and rope.cos_sin(37, device)[0].data_ptr() == cos.data_ptr()  # not recomputed
    assert not torch.equal(rope.cos_sin(38, device)[0], cos)
    deltas = [0, 1, 1023, 1024, 5000, 70_000, 3]  # past the first table and past its doubling: it grows
    for delta in deltas:
        cos, sin = rope.cos_sin(delta, device)
        fresh_cos, fresh_sin = rope.cos_sin(torch.tensor(delta), device)
        assert cos.shape == (16,) and torch.equal(cos, fresh_cos) and torch.equal(sin, fresh_sin), delta
    every = torch.arange(70_001)
    table_cos = torch.stack([rope.cos_sin(int(d), device)[0] for d in every[::97]])
    assert torch.equal(table_cos, rope.cos_sin(every[::97], device)[0])
    back_cos, _ = rope.cos_sin(-5, device)  # a shift backwards: computed, not kept
    assert torch.equal(back_cos, rope.cos_sin(torch.tensor(-5), device)[0])
    x = torch.randn(3, 16, requires_grad=True, device=device)  # usable where autograd records
    rope.rotate(x, 37).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize(
    "config,words",
    [
        (LlamaConfig(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}), ["llama", "dynamic"]),
        (LlamaConfig(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0],
                                      "long_factor": [1.0], "original_max_position_embeddings": 64}),
         ["llama", "longrope"]),
        (MistralConfig(sliding_window=4096), ["mistral", "sliding"]),
        (Qwen2Config(use_sliding_window=True, sliding_window=128, max_window_layers=0), ["qwen2", "sliding"]),
        (GPT2Config(), ["gpt2", "rotary"]),
    ],
)  # fmt: skip
def test_unsupported_models_are_refused_with_the_reason(config, words):
    with pytest.raises(UnsupportedModelError) as error:
        check_model_supported(config)
    message = str(error.value)
    assert all(word in message for word in words), message


def test_unsupported_model_is_refused_before_any_work():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4},
        )
    )
    with pytest.raises(UnsupportedModelError, match="supported rope types: default, linear, llama3, yarn"):
        HogwildLM(model)


def test_unknown_layout_names_the_valid_ones():
    with pytest.raises(ValueError, match="contiguous, interleaved, combined"):
        get_layout("diagonal")


def test_prompt_format_names_workers_and_uses_the_chat_template():
    for style, marker in (("qwen", "<|im_start|>assistant\n<think>\n"), ("llama", "<|start_header_id|>assistant")):
        fmt = PromptFormat(tiny_tokenizer(style), n_workers=4, layout="combined")
        text = fmt.prompt_text("What is 2+2?")
        assert marker in text and "What is 2+2?" in text
        assert all(name in text for name in ("Alice", "Bob", "Carol", "Dave"))
        assert fmt.step_prefix(1, 3) == "**Bob [3]:** "
    folded = PromptFormat(tiny_tokenizer("qwen"), n_workers=2, system_as_user=True).prompt_text("Q?")
    assert "<|im_start|>system" not in folded and "Alice and Bob" in folded
    with pytest.raises(ValueError, match="n_workers"):
        PromptFormat(tiny_tokenizer(), n_workers=0)


def test_paper_prompt_puts_the_rules_in_the_user_turn_and_lets_the_first_worker_propose_a_plan():
    from hogwild_bench.engine.prompts import PROMPT_STYLES, prompt_style

    fmt = PromptFormat(tiny_tokenizer("qwen"), n_workers=3, layout="combined", style=PROMPT_STYLES["paper"])
    text = fmt.prompt_text("What is 2+2?")
    assert "<|im_start|>system" not in text
    assert text.index("# Collaborative Reasoning") < text.index("Alice, Bob and Carol, solve") < text.index("2+2")
    assert "'### Work in progress (own)'" in text, "the combined layout's sections are described"
    contiguous = PromptFormat(tiny_tokenizer("qwen"), 2, layout="contiguous", style=PROMPT_STYLES["paper"])
    assert "Work in progress" not in contiguous.prompt_text("Q?"), "other layouts get their own note"
    assert fmt.first_step(0) == "**Alice [1]:** Hi, I'm Alice. Here's how we should collaborate:"
    assert fmt.first_step(1) == "**Bob [1]:** Hi, I'm Bob."
    solo = PromptFormat(tiny_tokenizer("qwen"), 1, layout="combined", style=PROMPT_STYLES["paper"])
    assert "Collaborative" not in solo.prompt_text("Q?") and solo.first_step(0) == "**Alice [1]:** "
    own = PromptFormat(tiny_tokenizer("qwen"), 2, style=prompt_style("paper", system_text="Be {brief}."))
    assert "Be {brief}.\n\nQ?" in own.prompt_text("Q?"), "a given team prompt is used as it is"
    with pytest.raises(ValueError, match="valid styles: ours, paper"):
        prompt_style("mine")


@pytest.mark.parametrize("style", ["paper", "ours"])
@pytest.mark.parametrize("n_workers,layout", [(1, "combined"), (2, "combined"), (3, "interleaved"), (4, "contiguous")])
def test_every_prompt_of_a_generator_opens_with_the_same_template_tokens(models, style, n_workers, layout):
    """What a batch shares between generations: the prompt's tokens before the problem, less the template's last
    token (the tokenizer may merge it with the problem's first), for any problem; the rest is the problem's."""
    from hogwild_bench.engine.prompts import prompt_style

    tokenizer = tiny_tokenizer("qwen")
    fmt = PromptFormat(tokenizer, n_workers, layout=layout, style=prompt_style(style))
    gen = HogwildGenerator(HogwildLM(models("qwen2")), tokenizer, GenerationOptions(n_workers, layout), fmt)
    template = gen.template_ids()
    assert len(template) > 30 and tokenizer.decode(template).startswith("<|im_start|>")
    for problem in ["2+2?", "Janet's ducks lay 16 eggs per day.", "\\frac{1}{2} + x = 3", "\n  indented"]:
        prompt = fmt.encode(fmt.prompt_text(problem, has_history=gen.layout.has_history))
        opening = gen.shared_opening(prompt)
        assert opening == template[:-1] and prompt[: len(opening)] == opening
        assert problem.strip() in tokenizer.decode(prompt[len(opening) :])
    assert gen.shared_opening(template[:5]) == template[:4], "the prompt block keeps a token"


def test_reading_an_unknown_block_raises_with_the_known_names(models):
    from hogwild_bench.engine.cache import UnknownBlockError
    from hogwild_bench.engine.model import Write

    lm = HogwildLM(models("llama"))
    cache = lm.new_cache()
    lm.prefill(cache, "prompt", [5, 6, 7])
    with pytest.raises(UnknownBlockError, match=r"no block 'histroy' in this cache; known blocks: alice, prompt"):
        lm.forward(cache, [Write(["prompt", "histroy", "alice"], [8])])
    assert cache.lengths() == {"prompt": 3, "alice": 0}, "the failed forward wrote nothing"
    # the written block is created, and a block written by one row can be read by another in the same forward
    lm.forward(cache, [Write(["prompt", "alice"], [8]), Write(["prompt", "alice", "bob"], [9])])
    assert cache.lengths() == {"prompt": 3, "alice": 1, "bob": 1}


def test_the_triton_path_on_a_cpu_model_is_refused_with_the_fix(models, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = models("llama")
    if model.device.type == "cuda":
        pytest.skip("the model is on a GPU here")
    with pytest.raises(ValueError, match="needs the model on a CUDA device .*use 'query_rotation'"):
        HogwildLM(model, attention="triton")


def test_a_retracted_token_comes_back_from_storage_and_only_while_storage_holds_it():
    """`KVBlock.retract` forgets tokens but leaves their K/V where they are; `reinstate` gives them back with their
    ids (the batch takes back a step launched ahead, then keeps it if the guess was right)."""
    from hogwild_bench.engine.blocks import KVBlock

    block = KVBlock("step", num_layers=1)
    block.start_write([7, 8, 9])
    block.write(0, torch.arange(6.0).view(1, 3, 2), torch.zeros(1, 3, 2))
    block.finish_write()
    block.retract(1)
    assert block.length == 2 and block.token_ids == [7, 8]
    block.reinstate([5])
    assert block.length == 3 and block.token_ids == [7, 8, 5]
    assert block.layer_kv(0)[0][0, 2].tolist() == [4.0, 5.0]  # the K/V written before the retraction
    with pytest.raises(RuntimeError, match="no stored K/V"):
        block.reinstate([1] * (block.capacity(0) - block.length + 1))


def test_the_model_gets_the_cache_under_the_keyword_its_transformers_version_takes(models, tokenizer):
    """Recent transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name goes in 5.40, and would then
    be swallowed by ``**kwargs``): no forward of the engine may use a deprecated name."""
    import inspect
    import warnings

    from hogwild_bench.engine import GenerationOptions, HogwildGenerator, HogwildLM
    from hogwild_bench.engine.cache import cache_keyword

    model = models("qwen2")
    assert cache_keyword(type(model)) in inspect.signature(type(model).forward).parameters
    options = GenerationOptions(n_workers=2, layout="combined", budgets=(6,), early_stop=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        HogwildGenerator(HogwildLM(model), tokenizer, options).generate("2+2?")
