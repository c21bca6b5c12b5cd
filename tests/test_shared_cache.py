"""The shared_cache drop-in: both seed notebooks' loops, ported with only the import changed, give at every
step the logits of the engine's own API driving the same layout."""

import pytest
import torch
from helpers import plain_logits

from hogwild_bench import shared_cache  # was: import shared_cache
from hogwild_bench.engine import HogwildLM, PromptFormat, Write

ATOL = 1e-4
HEADER = "\n\n### Work in progress (others)\n\n"
SEPARATOR = "### Work in progress (own)\n\n"


class EngineMirror:
    """The same operations through the engine API, with named blocks."""

    def __init__(self, model):
        self.lm = HogwildLM(model, attention="query_rotation")
        self.cache = self.lm.new_cache()

    def prefill(self, name, ids, context=None):
        return self.lm.prefill(self.cache, name, ids, context=context)

    def step(self, views, tokens):
        return self.lm.forward(self.cache, [Write(v, t) for v, t in zip(views, tokens)])


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_colab_two_workers_loop(models, tokenizer, family):
    model = models(family)
    mirror = EngineMirror(model)
    problem = "Calculate x - x^2 + x * (1 - x) for x = 4,5,6,7."
    fmt = PromptFormat(tokenizer, 2, layout="combined", system_as_user=True)
    worker_prompts = [
        f"{fmt.step_prefix(0, 1)}Hi, I'm Alice. Here's how we should collaborate:",
        f"{fmt.step_prefix(1, 1)}Hi, I'm Bob.",
    ]

    # --- the notebook, verbatim in structure ---------------------------------------------------------
    cache_common, cache_current_step_header, cache_separator, cache_w1, cache_w2 = (
        shared_cache.CacheBlock(config=model.config) for _ in range(5)
    )
    cm = shared_cache.SharedCacheManager(
        cache_structure=[
            [cache_common, cache_current_step_header, cache_w2, cache_separator, cache_w1],
            [cache_common, cache_current_step_header, cache_w1, cache_separator, cache_w2],
        ]
    )
    tokenizer_kwargs = dict(return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    history = []
    current_step_index_by_worker = [1, 1]
    current_step_tokens_by_worker = [tokenizer.encode(p, add_special_tokens=False) for p in worker_prompts]
    with torch.inference_mode():
        model(**tokenizer([fmt.prompt_text(problem)], **tokenizer_kwargs), use_cache=True, past_key_values=cache_common)
        model(**tokenizer(HEADER, **tokenizer_kwargs), use_cache=True, past_key_values=cache_current_step_header)
        model(**tokenizer(SEPARATOR, **tokenizer_kwargs), use_cache=True, past_key_values=cache_separator)
    next_inputs = tokenizer(worker_prompts, **tokenizer_kwargs)

    # the engine mirror: standalone prefills of the same texts, the same views
    mirror.prefill("common", tokenizer.encode(fmt.prompt_text(problem), add_special_tokens=False))
    mirror.prefill("header", tokenizer.encode(HEADER, add_special_tokens=False))
    mirror.prefill("sep", tokenizer.encode(SEPARATOR, add_special_tokens=False))
    views = [["common", "header", "w2", "sep", "w1"], ["common", "header", "w1", "sep", "w2"]]
    mirror_tokens = [list(t) for t in current_step_tokens_by_worker]
    differs_from_flat_text = False
    commits = 0

    for inference_step in range(40):
        with torch.inference_mode():
            logits = model(**cm.get_input_kwargs(**next_inputs)).logits[..., -1, :]
            new_tokens = logits.argmax(-1)
        expected = mirror.step(views, mirror_tokens)
        torch.testing.assert_close(logits.float(), expected, atol=ATOL, rtol=0)
        if inference_step == 5:
            flat = mirror.cache.tokens(views[0])
            differs_from_flat_text = (plain_logits(model, flat)[-1] - expected[0]).abs().max().item() > 1e-3

        next_input_tokens = new_tokens.unsqueeze(-1).tolist()
        for worker_index, (_worker_name, worker_tokens, new_token) in enumerate(
            zip(fmt.names, current_step_tokens_by_worker, new_tokens.tolist())
        ):
            worker_tokens.append(new_token)
            if len(worker_tokens) >= 9 + 3 * worker_index:  # the test's step boundary (fmt.is_end_of_step)
                current_step_index_by_worker[worker_index] += 1
                history.extend(worker_tokens)
                worker_tokens.clear()
                start_msg = fmt.step_prefix(worker_index, current_step_index_by_worker[worker_index])
                worker_tokens.extend(tokenizer.encode(start_msg, add_special_tokens=False))
                cache_common.append_from(cm.cache_structure[worker_index][-1])
                cm.cache_structure[worker_index][-1].clear()
                next_input_tokens[worker_index] = [new_token] + worker_tokens
                mirror.cache.commit(f"w{worker_index + 1}", "common")
                commits += 1
        next_inputs = tokenizer.pad(dict(input_ids=next_input_tokens), padding_side="left", return_tensors="pt")
        mirror_tokens = [list(t) for t in next_input_tokens]

    assert commits >= 6
    assert cache_common.get_seq_length() == mirror.cache.block("common").length
    assert differs_from_flat_text, "standalone headers make logits differ from the plain model on the flat text"


def test_mutating_cache_structure_between_steps(models, tokenizer):
    model = models("llama")
    mirror = EngineMirror(model)
    common, w1, w2 = (shared_cache.CacheBlock(config=model.config) for _ in range(3))
    cm = shared_cache.SharedCacheManager(cache_structure=[[common, w2, w1], [common, w1, w2]])
    prompt = tokenizer.encode("Count to ten together.", add_special_tokens=False)
    with torch.inference_mode():
        model(input_ids=torch.tensor([prompt]), past_key_values=common, use_cache=True)
    mirror.prefill("common", prompt)
    views = [["common", "w2", "w1"], ["common", "w1", "w2"]]
    tokens = [tokenizer.encode(" one", add_special_tokens=False), tokenizer.encode(" two", add_special_tokens=False)]
    for _ in range(3):
        logits = model(**cm.get_input_kwargs(torch.tensor([tokens[0][-1:], tokens[1][-1:]]))).logits[:, -1]
        torch.testing.assert_close(logits.float(), mirror.step(views, [t[-1:] for t in tokens]), atol=ATOL, rtol=0)
        tokens = [t + [int(x)] for t, x in zip(tokens, logits.argmax(-1))]
    # commit Alice's step into the history, as the colab does; both workers see it at the end of history
    common.append_from(w1)
    w1.clear()
    mirror.cache.commit("w1", "common")
    # and mutate the structure itself: Bob no longer sees Alice's (empty) current step
    cm.cache_structure[1] = [common, w2]
    views[1] = ["common", "w2"]
    logits = model(**cm.get_input_kwargs(torch.tensor([tokens[0][-1:], tokens[1][-1:]]))).logits[:, -1]
    torch.testing.assert_close(logits.float(), mirror.step(views, [t[-1:] for t in tokens]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_thinker_writer_loop(models, tokenizer, family):
    model = models(family)
    mirror = EngineMirror(model)
    device = torch.device("cpu")
    tokenizer_kwargs = dict(add_special_tokens=False, return_tensors="pt", padding=True, padding_side="left")
    worker_prompts = [
        "\n\n# Writer mode\n\nI am in Writer mode. My text is visible to the user.\n",
        "<|im_end|>\n<|im_start|>assistant\n<think>\n\n# Thinker mode\n\nI am in Thinker mode. I reason.\n",
    ]
    problem = "Calculate x - x^2 + x^3 for x = 5,6,7,8."
    text_prompt_t = f"<|im_start|>user\nYou are in Thinker mode.\n\n{problem}<|im_end|>\n<|im_start|>assistant"
    text_prompt_w = f"<|im_start|>user\nYou are in Writer mode.\n\n{problem}"
    text_split_w = " <the thinker will continue here>\n</think>\n"
    text_split_t = " <the writer will continue here>\n\n"

    names = {}

    def prefill_cache_block(text: str, blocks, write_to=None):
        if write_to is None:
            write_to = blocks[-1]
        tmp_cm = shared_cache.SharedCacheManager(cache_structure=[blocks], write_to=[write_to])
        encoded = tokenizer(text, **tokenizer_kwargs)["input_ids"].to(device)
        with torch.inference_mode():
            model(**tmp_cm.get_input_kwargs(encoded))
        # mirror: prefill in the context of the same block list
        view = [names[id(b)] for b in blocks]
        mirror.prefill(view[-1], encoded[0].tolist(), context=view[:-1])

    prompt_w, prompt_t, split_w, split_t, cache_w, cache_t, starter_w_for_init_t, starter_t_for_init_w = (
        shared_cache.CacheBlock(config=model.config) for _ in range(8)
    )
    for name in ("prompt_w", "prompt_t", "split_w", "split_t", "cache_w", "cache_t", "starter_w_for_init_t",
                 "starter_t_for_init_w"):  # fmt: skip
        names[id(locals()[name])] = name
    cm_thinker_only = shared_cache.SharedCacheManager(
        cache_structure=[[prompt_t, cache_w, split_t, cache_t]], write_to=[cache_t]
    )
    cm_thinking_and_writing = shared_cache.SharedCacheManager(
        cache_structure=[[prompt_w, cache_t, split_w, cache_w], [prompt_t, cache_w, split_t, cache_t]],
        write_to=[cache_w, cache_t],
    )
    prefill_cache_block(text_prompt_w, [prompt_w])
    prefill_cache_block(text_prompt_t, [prompt_t])
    prefill_cache_block(worker_prompts[1], [prompt_w, starter_t_for_init_w])
    prefill_cache_block(worker_prompts[0], [prompt_t, starter_w_for_init_t])
    prefill_cache_block(text_split_w, [prompt_w, starter_t_for_init_w, split_w])
    prefill_cache_block(text_split_t, [prompt_t, starter_w_for_init_t, split_t])
    prefill_cache_block(worker_prompts[0], [prompt_w, starter_t_for_init_w, split_w, cache_w])
    prefill_cache_block(worker_prompts[1], [prompt_t, starter_w_for_init_t, split_t, cache_t])
    thinker_view = ["prompt_t", "cache_w", "split_t", "cache_t"]
    both_views = [["prompt_w", "cache_t", "split_w", "cache_w"], thinker_view]

    def run(cm, views, inputs):
        with torch.inference_mode():
            logits = model(**cm.get_input_kwargs(**inputs)).logits[..., -1, :]
        mask = inputs.get("attention_mask")
        rows = [ids[m.bool()].tolist() if mask is not None else ids.tolist()
                for ids, m in zip(inputs["input_ids"], mask if mask is not None else inputs["input_ids"])]  # fmt: skip
        torch.testing.assert_close(logits.float(), mirror.step(views, rows), atol=ATOL, rtol=0)
        return logits

    def decision_yes_no(logits):
        probs = logits.softmax(-1)
        yes_id = tokenizer(" yes", add_special_tokens=False)["input_ids"][0]
        no_id = tokenizer(" no", add_special_tokens=False)["input_ids"][0]
        return "yes" if probs[..., yes_id] > probs[..., no_id] else "no"

    def ends_with_dnl(seq):
        return tokenizer.decode(seq[-1:])[-1] == "\n"

    writer_tokens, thinker_tokens = tokenizer(worker_prompts, add_special_tokens=False)["input_ids"]
    writer_tokens.append(tokenizer("\n")["input_ids"][0])
    thinker_tokens.append(tokenizer("\n")["input_ids"][0])
    generated_tokens = [0, 0]
    state, gates, switches = "thinker_only", 0, 0
    for _ in range(40):
        if state == "thinker_only":
            next_inputs = {"input_ids": torch.tensor([[thinker_tokens[-1]]], device=device)}
            logits = run(cm_thinker_only, [thinker_view], next_inputs)
            new_tok_t = int(logits.argmax(-1))
            thinker_tokens.append(new_tok_t)
            generated_tokens[1] += 1
            if generated_tokens[1] and (ends_with_dnl(thinker_tokens) or generated_tokens[1] % 7 == 0):
                gates += 1
                control_q = "[CONTROL] Have I thought enough to resume writing a response? (yes/no): "
                ci = tokenizer(control_q, return_tensors="pt").to(device)
                logits_ctrl = run(cm_thinker_only, [thinker_view], ci)
                decision = "yes" if gates % 2 == 0 else decision_yes_no(logits_ctrl)  # force both branches
                ans = f" {decision}\n\n"
                ai = tokenizer(ans, return_tensors="pt").to(device)
                run(cm_thinker_only, [thinker_view], ai)
                thinker_tokens.extend(tokenizer.encode(control_q + ans, add_special_tokens=False))
                if decision == "yes":
                    state, switches = "thinking_and_writing", switches + 1
        else:
            next_inputs = {"input_ids": torch.tensor([[writer_tokens[-1]], [thinker_tokens[-1]]], device=device)}
            logits = run(cm_thinking_and_writing, both_views, next_inputs)
            new_tok_w, new_tok_t = logits.argmax(-1).tolist()
            writer_tokens.append(new_tok_w)
            thinker_tokens.append(new_tok_t)
            generated_tokens[0] += 1
            generated_tokens[1] += 1
            if generated_tokens[0] and (ends_with_dnl(writer_tokens) or generated_tokens[0] % 5 == 0):
                control_q = "\n\n[CONTROL] Should I wait for thoughts before continuing writing? (yes/no): "
                control_texts = [control_q, tokenizer.decode([thinker_tokens[-1]])]
                ci = tokenizer(control_texts, return_tensors="pt", padding=True).to(device)  # right-padded
                logits_ctrl = run(cm_thinking_and_writing, both_views, ci)
                decision = decision_yes_no(logits_ctrl[0])
                ai_texts = [f"{decision}\n\n", tokenizer.decode([thinker_tokens[-1]])]
                ai = tokenizer(ai_texts, return_tensors="pt", padding=True).to(device)
                run(cm_thinking_and_writing, both_views, ai)
                writer_tokens.extend(tokenizer.encode(control_q + f"{decision}\n\n", add_special_tokens=False))
                if decision == "yes":
                    state, switches = "thinker_only", switches + 1
    assert gates >= 2 and switches >= 1, "the loop should exercise both states"


def _two_workers(model, tokenizer):
    """Prompt + two worker blocks, each worker seeing the other's block before its own."""
    prompt, w1, w2 = (shared_cache.CacheBlock(config=model.config) for _ in range(3))
    with torch.inference_mode():
        model(**tokenizer(["Compute 6 * 7."], return_tensors="pt"), use_cache=True, past_key_values=prompt)
    cm = shared_cache.SharedCacheManager(cache_structure=[[prompt, w2, w1], [prompt, w1, w2]])
    return cm, (prompt, w1, w2)


def _ids(tokenizer, texts):
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)


def test_active_worker_indices_select_and_reorder_rows_like_the_official_api(models, tokenizer):
    model = models("qwen3")
    full, (_, a1, a2) = _two_workers(model, tokenizer)
    reordered, (_, b1, b2) = _two_workers(model, tokenizer)
    with torch.inference_mode():
        both = model(**full.get_input_kwargs(**_ids(tokenizer, [" one", " two three"]))).logits[:, -1]
        swapped = model(**reordered.get_input_kwargs(**_ids(tokenizer, [" two three", " one"]),
                                                      active_worker_indices=[1, 0])).logits[:, -1]  # fmt: skip
        torch.testing.assert_close(swapped, both.flip(0), atol=ATOL, rtol=0)
        assert (b1.kv.token_ids, b2.kv.token_ids) == (a1.kv.token_ids, a2.kv.token_ids)
        four = _ids(tokenizer, [" four"])
        only = model(**reordered.get_input_kwargs(**four, active_worker_indices=[1]))
        assert only.logits.shape[0] == 1 and b2.get_seq_length() == a2.get_seq_length() + four["input_ids"].shape[1]
        assert b1.get_seq_length() == a1.get_seq_length()  # the inactive worker wrote nothing
        with pytest.raises(ValueError, match="must be distinct workers of cache_structure"):
            reordered.get_input_kwargs(**_ids(tokenizer, [" x"]), active_worker_indices=[2])


def test_an_all_padding_row_is_an_inactive_worker(models, tokenizer):
    model = models("llama")
    active, (_, a1, a2) = _two_workers(model, tokenizer)
    alone, (_, b1, b2) = _two_workers(model, tokenizer)
    ids = _ids(tokenizer, [" five six", " seven"])
    ids["attention_mask"][1] = 0  # worker 2 sits this step out
    with torch.inference_mode():
        both = model(**active.get_input_kwargs(**ids)).logits[:, -1]
        just_one = model(**alone.get_input_kwargs(**_ids(tokenizer, [" five six"]), active_worker_indices=[0]))
    torch.testing.assert_close(both[0], just_one.logits[0, -1], atol=ATOL, rtol=0)
    assert a2.get_seq_length() == 0 and a1.get_seq_length() == b1.get_seq_length() == ids["input_ids"].shape[1]
    ids["attention_mask"][0] = 0
    with pytest.raises(ValueError, match="every row is padding"):
        active.get_input_kwargs(**ids)


def test_append_from_can_empty_the_other_block_and_unknown_arguments_raise(models, tokenizer):
    model = models("qwen3")
    cm, (prompt, w1, w2) = _two_workers(model, tokenizer)
    history = shared_cache.CacheBlock(config=model.config)
    with torch.inference_mode():
        model(**cm.get_input_kwargs(**_ids(tokenizer, [" a b", " c"])))
    n1, n2 = w1.get_seq_length(), w2.get_seq_length()
    history.append_from(w1)
    assert history.get_seq_length() == w1.get_seq_length() == n1  # kept
    history.append_from(w2, keep_other=False)
    assert history.get_seq_length() == n1 + n2 and w2.get_seq_length() == 0
    with pytest.raises(TypeError, match="token_type_ids"):
        cm.get_input_kwargs(**_ids(tokenizer, [" d", " e"]), token_type_ids=None)
    with pytest.raises(ValueError, match="write_to\\[i\\] must be the last block"):
        cm.get_input_kwargs(**_ids(tokenizer, [" d", " e"]), write_to=[prompt, w2])
