"""Decode forwards through `torch.compile` (engine as one opaque op) equal the eager engine."""

import os
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, LAYOUTS
from helpers import RecordingLM
from torch._dynamo.utils import counters

from hogwild_bench.answers import BOXED_FINISHER
from hogwild_bench.engine import GenerationOptions, HogwildGenerator, HogwildLM, SamplingParams, Write
from hogwild_bench.engine.compiled import CompiledDecoder


def _generate(lm, tokenizer, layout):
    recorder = RecordingLM(lm)
    options = GenerationOptions(n_workers=3, layout=layout, budgets=(20,), collab_interval=8, early_stop=False,
                                sampling=SamplingParams(temperature=0.7, seed=3))  # fmt: skip
    gen = HogwildGenerator(recorder, tokenizer, options, finisher=BOXED_FINISHER, boundary=lambda s: len(s) >= 10)
    result = gen.generate("1+1?")
    return recorder.records, result.snapshots[20]


@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_decode_matches_eager_in_every_layout(models, tokenizer, family):
    model = models(family)
    torch._dynamo.reset()
    counters.clear()
    compiled = HogwildLM(model, attention="query_rotation")
    compiled.decoder = CompiledDecoder(model, backend="aot_eager")  # traces as inductor would; compiles fast
    for layout in LAYOUTS:
        eager_records, eager_snap = _generate(HogwildLM(model, attention="query_rotation"), tokenizer, layout)
        records, snap = _generate(compiled, tokenizer, layout)
        assert snap.worker_tokens == eager_snap.worker_tokens
        decode = [(a, b) for a, b in zip(eager_records, records) if all(len(t) == 1 for t in a.tokens)]
        assert len(decode) > 10
        for a, b in zip(eager_records, records):
            assert a.flat_views == b.flat_views
            torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    assert not counters["graph_break"], "the model traces as one graph around the engine's op"
    assert counters["stats"]["unique_graphs"] <= 3, "one graph per number of rows, not per step or layer"


def _cpu_inductor_available() -> bool:
    """Inductor's CPU backend builds C++ against Python's headers."""
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which(os.environ.get("CXX", "g++")) is not None and headers.exists()


@pytest.mark.skipif(not _cpu_inductor_available(), reason="no C++ compiler or Python headers for Inductor on CPU")
def test_inductor_decode_matches_eager_and_sdpa_fallback_is_untouched(models):
    """The real backend: kernels generated for the model's norms/RoPE/MLP, the engine op in between."""
    model = models("qwen2")
    torch._dynamo.reset()
    eager, compiled = HogwildLM(model, attention="query_rotation"), HogwildLM(model, compile=True)
    assert compiled.attention == "query_rotation" and compiled.decoder is not None
    caches = [eager.new_cache(), compiled.new_cache()]
    for lm, cache in zip((eager, compiled), caches):
        lm.prefill(cache, "prompt", list(range(5, 25)))
    views = [["prompt", "step1", "step0"], ["prompt", "step0", "step1"]]
    for step in range(4):
        a, b = (
            lm.forward(c, [Write(v, [40 + step + i]) for i, v in enumerate(views)])
            for lm, c in zip((eager, compiled), caches)
        )
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert caches[1].lengths() == caches[0].lengths() == {"prompt": 20, "step1": 4, "step0": 4}
    # outside a Hogwild forward the model is the stock model: the same logits as with plain SDPA
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        through_hogwild = model(ids).logits
    model.set_attn_implementation("sdpa")
    try:
        with torch.no_grad():
            plain = model(ids).logits
    finally:
        model.set_attn_implementation("hogwild")
    torch.testing.assert_close(through_hogwild, plain, atol=1e-5, rtol=0)


def test_attend_op_outside_a_forward_is_refused():
    q = torch.zeros(1, 2, 1, 4)
    with pytest.raises(RuntimeError, match="outside `running"):
        torch.ops.hogwild.attend(q, q[:, :1], q[:, :1], 0, 1.0)
