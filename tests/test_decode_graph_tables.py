"""A single generation's replayed decode step uses tables prepared during the previous step only when the cache
is exactly in the state they were prepared for (CPU: no capture or replay runs here; the GPU tests check the
replayed tokens end to end)."""

from types import SimpleNamespace

import numpy as np
import torch

from hogwild_bench.engine import HogwildCache, RotaryShift, get_layout
from hogwild_bench.engine.graphs import DecodeGraph
from hogwild_bench.engine.triton_attention import flat_tables

LAYERS, KV_HEADS, DIM = 2, 2, 8


def graph_over_filled_cache(layout: str, n: int) -> DecodeGraph:
    cache = HogwildCache(LAYERS, RotaryShift(torch.ones(DIM // 2)), "triton")
    views = get_layout(layout).views(n)
    lengths = {name: 3 + 5 * i for i, name in enumerate(dict.fromkeys(name for view in views for name in view))}
    for name, length in lengths.items():
        block = cache.writable(name)
        block.start_write(list(range(length)))
        for layer in range(LAYERS):
            keys = torch.randn(KV_HEADS, length, DIM)
            block.write(layer, keys, keys)
        block.finish_write()
    config = SimpleNamespace(num_attention_heads=2 * KV_HEADS, num_key_value_heads=KV_HEADS)
    lm = SimpleNamespace(device=torch.device("cpu"), model=SimpleNamespace(config=config))
    return DecodeGraph(lm, cache, views)


def fresh_tables(graph: DecodeGraph) -> np.ndarray:
    return flat_tables(graph._host_tables()[1])[1].numpy()


def step_on_host(graph: DecodeGraph, tokens: list[int]) -> None:
    """What `DecodeGraph.step` does to the cache around its replay: one token per row, then the next plan."""
    graph.cache.begin_forward(graph.views, [[t] for t in tokens])
    graph.cache.end_forward(ok=True)
    graph._prepare_next()


def test_preparing_the_next_step_leaves_the_cache_as_it_was():
    graph = graph_over_filled_cache("combined", 3)
    before = {name: (b.length, b.pending, list(b.token_ids)) for name, b in graph.cache.blocks.items()}
    graph._prepare_next()
    assert graph.prepared is not None
    assert {name: (b.length, b.pending, list(b.token_ids)) for name, b in graph.cache.blocks.items()} == before
    assert graph.cache.rows is None


def test_prepared_tables_are_those_of_the_next_step_built_afresh():
    for layout in ("combined", "contiguous", "interleaved"):
        graph = graph_over_filled_cache(layout, 2)
        for step in range(3):
            step_on_host(graph, [10 + step, 20 + step])
            graph.cache.begin_forward(graph.views, [[1], [2]])
            try:
                assert graph._same_state(graph._blocks(), graph.prepared)
                np.testing.assert_array_equal(graph.prepared[1], fresh_tables(graph))
            finally:
                graph.cache.end_forward(ok=True)


def test_a_commit_or_a_new_block_between_steps_makes_the_prepared_tables_unusable():
    graph = graph_over_filled_cache("interleaved", 2)
    step_on_host(graph, [1, 2])
    graph.cache.commit("step0", "history")  # a step boundary: lengths change
    graph.cache.begin_forward(graph.views, [[3], [4]])
    assert not graph._same_state(graph._blocks(), graph.prepared)
    graph.cache.end_forward(ok=False)

    step_on_host(graph, [1, 2])
    graph.cache.blocks["step1"] = type(graph.cache.blocks["step1"])("step1", LAYERS)  # another object, same name
    graph.cache.begin_forward(graph.views, [[3], [4]])
    assert not graph._same_state(graph._blocks(), graph.prepared)
    graph.cache.end_forward(ok=False)


def test_a_view_naming_a_dropped_block_prepares_nothing_and_changes_nothing():
    graph = graph_over_filled_cache("contiguous", 2)
    del graph.cache.blocks["prompt"]
    graph._prepare_next()
    assert graph.prepared is None
    assert graph.cache.rows is None and all(b.pending == 0 for b in graph.cache.blocks.values())
