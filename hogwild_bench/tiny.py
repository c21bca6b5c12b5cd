"""Tiny random-weight models and a shipped tokenizer, for tests and the CPU demo (no model hub needed).

Each family is built from its transformers config class with ``from_config``, so the code paths are the
real ones; only the sizes are tiny and the weights random (seeded).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

TOKENIZER_FILE = Path(__file__).parent / "assets" / "tiny_tokenizer.json"

QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
LLAMA_TEMPLATE = (
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHAT_TEMPLATES = {"qwen": QWEN_TEMPLATE, "llama": LLAMA_TEMPLATE}

CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config, "mistral": MistralConfig}
TINY_SIZES = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


def tiny_tokenizer(chat_style: str = "qwen") -> PreTrainedTokenizerFast:
    """The shipped byte-level BPE tokenizer with a Qwen-style (``<think>``) or Llama-style chat template."""
    if chat_style not in CHAT_TEMPLATES:
        raise ValueError(f"unknown chat_style {chat_style!r}; valid: {', '.join(CHAT_TEMPLATES)}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_FILE),
        eos_token="<|im_end|>" if chat_style == "qwen" else "<|eot_id|>",
        pad_token="<|endoftext|>",
        bos_token=None if chat_style == "qwen" else "<|begin_of_text|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATES[chat_style]
    return tokenizer


def tiny_config(family: str, vocab_size: int, **overrides):
    if family not in CONFIGS:
        raise ValueError(f"unknown tiny model family {family!r}; valid: {', '.join(CONFIGS)}")
    kwargs = dict(TINY_SIZES, vocab_size=vocab_size, max_position_embeddings=8192, tie_word_embeddings=False)
    if family == "mistral":
        kwargs["sliding_window"] = None
    if family == "qwen3":
        kwargs["head_dim"] = 16
    kwargs.update(overrides)
    return CONFIGS[family](**kwargs)


def tiny_model(family: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A tiny random-weight causal LM of ``family`` (llama, qwen2, qwen3, mistral), in eval mode."""
    config = tiny_config(family, vocab_size=len(tiny_tokenizer()), **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # random init gives near-uniform logits; a larger output scale makes greedy choices well separated
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return model.eval()
