"""Builds ``tiny_tokenizer.json``: a small byte-level BPE tokenizer for tests and the CPU demo.

There is no model hub here, so the tiny random models need a tokenizer that ships in the repo. It is
trained on this project's own prompt text and the shipped sample problems, so those encode compactly.
Run ``python -m hogwild_bench.assets.build_tiny_tokenizer`` to rebuild it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hogwild_bench.answers import BOXED_FINISHER
from hogwild_bench.engine import prompts
from hogwild_bench.engine.layouts import Combined

HERE = Path(__file__).parent
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
]  # fmt: skip
VOCAB_SIZE = 1024


def corpus() -> list[str]:
    texts = [prompts.SOLO_SYSTEM_PROMPT, prompts.TEAM_SYSTEM_PROMPT, *prompts.LAYOUT_NOTES.values()]
    texts += [prompts.HISTORY_HEADER, prompts.COLLAB_PROMPT, BOXED_FINISHER.suffix]
    texts += list(Combined().constants.values())
    texts += [f"**{name} [{i}]:** Hi, I'm {name}." for name in prompts.WORKER_NAMES for i in range(1, 10)]
    sample = HERE.parent / "data" / "sample_math.jsonl"
    for line in sample.read_text().splitlines():
        row = json.loads(line)
        texts += [row["problem"], row["answer"]]
    texts += [" ".join(str(i) for i in range(200)), "\\boxed{ } \\frac{ }{ } x^2 + y = z. Wait, let me check."]
    return texts


def build() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus() * 3, trainer=trainer)
    return tokenizer


if __name__ == "__main__":
    build().save(str(HERE / "tiny_tokenizer.json"))
    print("wrote", HERE / "tiny_tokenizer.json")
