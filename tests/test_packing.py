"""A forward whose rows write different numbers of tokens runs them packed in one sequence: the same logits
and the same cached K/V as left-padded rows, for a fraction of the token slots."""

import copy

import pytest
import torch
from conftest import FAMILIES

from hogwild_bench.engine import HogwildLM, Write

BACKENDS = ["query_rotation", "key_rotation", "triton"]


def _run(model, attention: str, pack_rows: bool):
    lm = HogwildLM(model, attention=attention, cuda_graphs=False, pack_rows=pack_rows)
    shapes = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    try:
        cache = lm.new_cache()
        lm.prefill(cache, "prompt", list(range(3, 40)))
        views = [["prompt", "b", "a"], ["prompt", "a", "b"], ["prompt", "a", "b", "c"]]
        steps = [[[5], [6, 7, 8, 9, 10], [11, 12, 13]], [[14], [15], [16, 17]], [[18, 19, 20, 21, 22, 23], [24], [25]]]
        logits = [lm.forward(cache, [Write(v, t) for v, t in zip(views, step)]) for step in steps]
    finally:
        hook.remove()
    stored = {
        name: [block.layer_kv(layer) for layer in range(block.num_layers)] for name, block in cache.blocks.items()
    }
    return logits, stored, shapes[1:]  # after the prompt's prefill


# every family on the torch paths; the Triton path (the interpreter on CPU: slow) on one
CASES = [(family, attention) for family in FAMILIES for attention in BACKENDS[:2]] + [("qwen3", "triton")]


@pytest.mark.parametrize("family,attention", CASES)
def test_packed_rows_equal_padded_rows(models, family, attention):
    model = models(family)
    if attention == "triton" and torch.cuda.is_available():  # the kernel itself; the interpreter only on CPU
        model = copy.deepcopy(model).cuda()
    padded_logits, padded_kv, padded_shapes = _run(model, attention, pack_rows=False)
    packed_logits, packed_kv, packed_shapes = _run(model, attention, pack_rows=True)
    assert padded_shapes == [(3, 5), (3, 2), (3, 6)]
    assert packed_shapes == [(1, 9), (1, 4), (1, 8)]  # the model ran 21 token slots instead of 39
    for a, b in zip(padded_logits, packed_logits):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert padded_kv.keys() == packed_kv.keys()
    for name in padded_kv:
        for a, b in zip(padded_kv[name], packed_kv[name]):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
