import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from hogwild_bench.tiny import tiny_model, tiny_tokenizer  # noqa: E402

FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
LAYOUTS = ("contiguous", "interleaved", "combined")

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer("qwen")


@pytest.fixture(scope="session")
def models():
    cache = {}

    def get(family: str, **overrides):
        key = (family, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = tiny_model(family, **overrides)
        return cache[key]

    return get
