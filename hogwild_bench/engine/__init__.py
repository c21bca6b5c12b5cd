"""Hogwild! engine: N workers decoding together over one shared, block-structured KV cache.

Plain torch (+ an optional Triton kernel); knows nothing of Hydra, W&B or datasets.

    from hogwild_bench.engine import HogwildLM, HogwildGenerator, GenerationOptions
    lm = HogwildLM(model)                                   # any supported transformers causal LM
    gen = HogwildGenerator(lm, tokenizer, GenerationOptions(n_workers=2, layout="combined", budgets=[512]))
    result = gen.generate("What is 17 + 25?")
    print(result.snapshots[512].answer)
"""

from hogwild_bench.engine.blocks import KVBlock
from hogwild_bench.engine.cache import HogwildCache
from hogwild_bench.engine.generation import (
    GenerationOptions,
    GenerationResult,
    HogwildGenerator,
    ParagraphBoundary,
    Snapshot,
    closed_boxed_answer,
)
from hogwild_bench.engine.layouts import LAYOUTS, Combined, Contiguous, Interleaved, Isolated, Layout, get_layout
from hogwild_bench.engine.model import HogwildLM, Write
from hogwild_bench.engine.prompts import PromptFormat
from hogwild_bench.engine.rope import RotaryShift, UnsupportedModelError, check_model_supported
from hogwild_bench.engine.sampling import SamplingParams

__all__ = [
    "KVBlock", "HogwildCache", "GenerationOptions", "GenerationResult", "HogwildGenerator", "ParagraphBoundary",
    "Snapshot", "closed_boxed_answer", "LAYOUTS", "Combined", "Contiguous", "Interleaved", "Isolated", "Layout",
    "get_layout",
    "HogwildLM", "Write", "PromptFormat", "RotaryShift", "UnsupportedModelError", "check_model_supported",
    "SamplingParams",
]  # fmt: skip
