"""Decode steps replayed from CUDA graphs equal eager Triton steps (GPU only)."""

import pytest
import torch
from conftest import LAYOUTS
from helpers import RecordingLM

from hogwild_bench.answers import BOXED_FINISHER
from hogwild_bench.engine import GenerationOptions, HogwildGenerator, HogwildLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@pytest.mark.parametrize(
    "layout,dtype,compile",
    [(layout, dtype, False) for layout in LAYOUTS for dtype in (torch.float32, torch.bfloat16)]
    + [(layout, torch.bfloat16, True) for layout in LAYOUTS],
)
def test_graph_replay_matches_eager(models, tokenizer, layout, dtype, compile):
    """Captured steps give the eager steps' logits and tokens. With ``compile`` both runs use the compiled
    model (fused bf16 norms round differently from eager ones, so sampled tokens may differ from uncompiled
    runs; `test_compiled.py` checks compiled against uncompiled in float32)."""
    model = models("qwen3").to("cuda", dtype)
    runs = []
    try:
        for graphs in (False, True):
            lm = HogwildLM(model, attention="triton", cuda_graphs=graphs, compile=compile)
            recorder = RecordingLM(lm)
            options = GenerationOptions(n_workers=3, layout=layout, budgets=(24, 48), collab_interval=16,
                                        early_stop=False, sampling=SamplingParams(temperature=0.7, seed=1))  # fmt: skip
            gen = HogwildGenerator(
                recorder, tokenizer, options, finisher=BOXED_FINISHER, boundary=lambda s: len(s) >= 12
            )
            result = gen.generate("2+2?")
            runs.append((recorder.records, result.snapshots[48], recorder.caches[-1]))
    finally:
        model.to("cpu", torch.float32)
    (eager, eager_snap, _), (graph, graph_snap, cache) = runs
    graphs = list(cache.decode_graphs.values())
    assert graphs and sum(g.captures for g in graphs) < 20, "graphs are captured once and replayed"
    assert sum(g.prepared_hits for g in graphs) > 0, "most steps use the tables prepared during the one before"
    assert graph_snap.worker_tokens == eager_snap.worker_tokens
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    for a, b in zip(eager, graph):
        torch.testing.assert_close(a.logits, b.logits, atol=tol, rtol=tol)


def test_compiled_graph_steps_match_uncompiled_eager_in_float32(models, tokenizer):
    model = models("llama").to("cuda")
    runs = []
    try:
        for graphs, compile in ((False, False), (True, True)):
            recorder = RecordingLM(HogwildLM(model, attention="triton", cuda_graphs=graphs, compile=compile))
            options = GenerationOptions(n_workers=2, layout="combined", budgets=(32,), collab_interval=16,
                                        early_stop=False, sampling=SamplingParams(temperature=0.0))  # fmt: skip
            gen = HogwildGenerator(
                recorder, tokenizer, options, finisher=BOXED_FINISHER, boundary=lambda s: len(s) >= 12
            )
            result = gen.generate("2+2?")
            runs.append((recorder.records, result.snapshots[32]))
    finally:
        model.to("cpu")
    (eager, eager_snap), (compiled, compiled_snap) = runs
    assert compiled_snap.worker_tokens == eager_snap.worker_tokens
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a.logits, b.logits, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("family,lanes,compiled,ahead", [
    ("qwen2", 1, False, None), ("llama", 1, False, None), ("qwen2", 2, False, None), ("qwen2", 2, True, None),
    ("qwen2", 1, False, "overlap"), ("llama", 1, True, "overlap"), ("qwen2", 2, False, "overlap"),
    ("qwen2", 1, False, "window"), ("llama", 2, True, "window"),
])  # fmt: skip
def test_batched_steps_replayed_from_bucket_graphs_equal_each_generation_alone(
    models, tokenizer, family, lanes, compiled, ahead, monkeypatch
):
    """The batcher's graphs serve any generations in flight: as they finish and others join (different worker
    counts, layouts, early stops, finishers, sampling), each generation's tokens and snapshots stay those it
    gets alone and eager, in float32; a handful of captures serve every step. In two lanes (each with its own
    graphs, the host preparing one while the device runs the other) too, and with the replayed steps
    torch.compile'd per bucket (``compile_buckets``; the eager forwards stay uncompiled), and with each step
    launched before the host read the last one's tokens (``overlap``: token ids copied into the replayed graph's
    inputs on the device; wrong guesses taken back), and in windows of 4 decode steps (``window``)."""
    from helpers import live_blocks, track_blocks
    from test_batching import MIXED, comparable, each_alone, jobs_for

    from hogwild_bench.engine.batch import ContinuousBatcher

    model = models(family).to("cuda")
    try:
        lm = HogwildLM(model, attention="triton", cuda_graphs=False)
        expected = each_alone(lm, tokenizer)
        blocks = track_blocks(monkeypatch)
        steps: list[int] = []
        batcher = ContinuousBatcher(
            HogwildLM(model, attention="triton", compile_buckets=compiled), max_rows=6 * lanes, cuda_graphs=True,
            on_step=lambda rows, seconds: steps.append(rows), lanes=lanes, overlap=ahead == "overlap",
            window=4 if ahead == "window" else 1,
        )  # fmt: skip
        finished = list(batcher.run(jobs_for(lm, tokenizer, [5, 3, 1, 0, 4, 2])))
    finally:
        model.to("cpu")
    assert [f.error for f in finished] == [None] * len(MIXED)
    assert (batcher.lm.bucket_decoder is not None) == compiled and batcher.lm.decoder is None
    for f in finished:
        assert comparable(f.result) == expected[f.key], f"generation {f.key} changed when replayed from graphs"
    # writes of several tokens (step prefixes every 4 tokens here, finisher prompts) replay as one-token rows:
    # eager are only first writes into blocks without storage and a rare write longer than a replay's room
    # (with inserts eager, over 40 forwards were)
    assert batcher.times.eager <= 10 * lanes and batcher.times.replayed > 20
    if ahead == "overlap":
        assert 0 < batcher.times.taken_back < batcher.times.ahead
    if ahead == "window":
        assert 0 < batcher.times.kept < batcher.times.ahead
    # (stepping ahead mixes generations' rows differently, so more row-count buckets are used: 11 captures seen;
    # one lane without it: 9 since the prompt's template is a block of its own, session 30)
    for lane in batcher.lanes:
        assert lane.graphs is not None and 0 < lane.graphs.captures <= (12 if ahead else 10)
        assert lane.graphs.replays > 10
    # nothing keeps a finished generation's storage: not a capture's plan, not a bucket's last walk
    assert {b.name for b in live_blocks(blocks)} == {"bucket scratch"}


@pytest.mark.parametrize("overlap", [False, True], ids=["in_turn", "overlap"])
def test_inserts_replayed_beside_the_decode_forward_equal_each_generation_alone(models, tokenizer, overlap):
    """With a replay room too small for the step prefixes and finisher prompts of the generations in flight,
    those writes replay in forwards of their own (several per launch, some of the same bucket as the decode
    rows'): each generation still gets exactly what it gets alone and eager, in float32."""
    from test_batching import MIXED, comparable, each_alone, jobs_for

    from hogwild_bench.engine.batch import ContinuousBatcher

    model = models("qwen2").to("cuda")
    try:
        lm = HogwildLM(model, attention="triton", cuda_graphs=False)
        expected = each_alone(lm, tokenizer)
        batcher = ContinuousBatcher(HogwildLM(model, attention="triton"), max_rows=8, cuda_graphs=True,
                                    overlap=overlap)  # fmt: skip
        batcher.replay_rows = 8
        groups, plan = [], batcher._insert_groups

        def spy(*args):
            made = plan(*args)
            groups.extend(made)
            return made

        batcher._insert_groups = spy
        finished = list(batcher.run(jobs_for(lm, tokenizer, [1, 5, 3, 0, 4, 2])))
    finally:
        model.to("cpu")
    assert [f.error for f in finished] == [None] * len(MIXED)
    for f in finished:
        assert comparable(f.result) == expected[f.key], f"generation {f.key} changed with inserts replayed"
    assert batcher.times.replayed > 20 and batcher.lanes[0].graphs.replays == batcher.times.replayed
    assert sum(replay for _, replay in groups) >= 3, "no insert forward was replayed"
