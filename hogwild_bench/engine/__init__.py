"""Hogwild! engine: N workers decoding together over one shared, block-structured KV cache.

Plain torch (+ an optional Triton kernel); knows nothing of Hydra, W&B or datasets.

    from hogwild_bench.engine import HogwildLM, HogwildGenerator, GenerationOptions
    lm = HogwildLM(model)                                   # any supported transformers causal LM
    gen = HogwildGenerator(lm, tokenizer, GenerationOptions(n_workers=2, layout="combined", budgets=[512]))
    result = gen.generate("What is 17 + 25?")
    print(result.snapshots[512].response)

(``stop=`` / ``finisher=`` hooks end a generation on a final answer and force one at each budget:
`hogwild_bench.answers` has the ``\\boxed{}`` ones.)
"""

from hogwild_bench.engine.blocks import KVBlock
from hogwild_bench.engine.cache import HogwildCache
from hogwild_bench.engine.generation import (
    Finisher,
    GenerationOptions,
    GenerationResult,
    HogwildGenerator,
    ParagraphBoundary,
    Snapshot,
    StopRule,
    end_of_turn_ids,
)
from hogwild_bench.engine.layouts import LAYOUTS, Combined, Contiguous, Interleaved, Isolated, Layout, get_layout
from hogwild_bench.engine.model import HogwildLM, Write
from hogwild_bench.engine.prompts import PromptFormat
from hogwild_bench.engine.rope import RotaryShift, UnsupportedModelError, check_model_supported
from hogwild_bench.engine.sampling import SamplingParams

__all__ = [
    "KVBlock", "HogwildCache", "GenerationOptions", "GenerationResult", "HogwildGenerator", "ParagraphBoundary",
    "Snapshot", "Finisher", "StopRule", "end_of_turn_ids",
    "LAYOUTS", "Combined", "Contiguous", "Interleaved", "Isolated", "Layout",
    "get_layout",
    "HogwildLM", "Write", "PromptFormat", "RotaryShift", "UnsupportedModelError", "check_model_supported",
    "SamplingParams",
]  # fmt: skip
