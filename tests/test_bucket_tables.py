"""The tables a bucket graph replays from, built incrementally from step to step, equal tables built afresh.

A `BucketGraph` reuses the previous step's walk over the views and its K/V address tables while the rows see
the same blocks with the same storage. This runs a churning batch on CPU (joins, leaves, step commits,
finishers, early ends) with the capture and replay stubbed -- replay yields random logits -- and checks
every replayed step's host tables against a fresh build. The GPU tests check replayed tokens end to end."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import LAYOUTS
from helpers import host_buffers, live_blocks, random_replay, track_blocks

from hogwild_bench.answers import BOXED_FINISHER
from hogwild_bench.engine import GenerationOptions, HogwildGenerator, HogwildLM, triton_attention
from hogwild_bench.engine import bucket_graphs as bucket_module
from hogwild_bench.engine.attention import RowView, token_rows
from hogwild_bench.engine.batch import PREFILL_TOKENS, BatchJob, ContinuousBatcher
from hogwild_bench.engine.triton_attention import plan_arrays, plan_steps, table_views


def _jobs(lm, tokenizer, count):
    for index in range(count):
        options = GenerationOptions(
            n_workers=1 + index % 3,
            layout=LAYOUTS[index % 3],
            budgets=(10 + index % 5, 40),
            collab_interval=9,
            early_stop=False,
            worker_eos="forbid",
        )
        gen = HogwildGenerator(lm, tokenizer, options, finisher=BOXED_FINISHER, boundary=lambda s: len(s) >= 20)
        problem = "What is 2+2?" * (1 + index % 4)
        yield BatchJob(index, lambda cache, g=gen, p=problem: g.steps(cache, p), options.n_workers,
                       gen.worst_case_tokens(problem))  # fmt: skip


def stubbed_batcher(models, monkeypatch, **options) -> ContinuousBatcher:
    """A batch over the tiny qwen2 whose lanes replay from bucket graphs, capture and replay stubbed (a replay
    yields random logits)."""
    monkeypatch.setattr(bucket_module.BucketGraph, "_allocate", host_buffers)
    monkeypatch.setattr(bucket_module.BucketGraph, "_capture", random_replay())
    lm = HogwildLM(models("qwen2"), attention="query_rotation")
    batcher = ContinuousBatcher(lm, **options)
    for lane in batcher.lanes:
        lane.graphs = bucket_module.BucketGraphs(lm, batcher.cache)
    return batcher


@pytest.mark.parametrize("window", [1, 4])
def test_incremental_step_tables_equal_tables_built_afresh(models, tokenizer, monkeypatch, window):
    # buckets of 16 rows and more take the batch split, those of 8 the small one: both are checked
    batch = replace(triton_attention.settings, batch_rows=16, batch_split=64)
    monkeypatch.setattr(triton_attention, "settings", batch)
    upload, plan, checked, reused = bucket_module.BucketGraph._upload, bucket_module.BucketGraph._plan, [], []
    several = []  # replayed steps with a write of several tokens
    splits = set()

    def noted_plan(graph, rows, *args):
        before = graph.view_walk
        out = plan(graph, rows, *args)
        reused.append(before is graph.view_walk)
        return out

    def checked_upload(graph, blocks, arrays, rows, tokens):
        upload(graph, blocks, arrays, rows, tokens)
        assert rows == token_rows(graph.cache.rows)
        split = triton_attention.settings.split_for(graph.rows)  # the bucket's, whatever rows it holds now
        assert graph.caps.split == split
        fresh_blocks, fresh, _ = plan_arrays(rows, 1, graph.groups, by_capacity=True, block_m=graph.caps.block_m,
                                             split=split)  # fmt: skip
        assert fresh_blocks == blocks
        stepped_i32, stepped_i64 = graph.host_i32.clone(), graph.host_i64.clone()
        kept = graph.written_read, graph.written_own
        graph.host_i32.fill_(-1), graph.host_i64.fill_(-1)
        graph.written_read = graph.written_own = None  # every table written afresh
        graph._int32_tables(fresh_blocks, fresh)
        graph._int64_tables(fresh_blocks, rows, tokens)
        graph.written_read, graph.written_own = kept
        assert torch.equal(graph.host_i32, stepped_i32) and torch.equal(graph.host_i64, stepped_i64)
        checked.append(len(rows))
        splits.add(split)
        several.append(len(rows) > len(graph.cache.rows))

    again, moved_on = bucket_module.BucketGraph.steps_again, []

    def checked_again(graph, count, first, draw):
        """After a window's steps moved on: the device tables hold its last step's, as a fresh plan gives them."""
        moved = again(graph, count, first, draw)
        if moved:
            rows = [RowView(row.blocks, 1) for row in graph.last.rows]
            for row in rows:  # the last step's token in flight again
                row.own.length, row.own.pending = row.own.length - 1, 1
            try:
                blocks, fresh, _ = plan_arrays(rows, 1, graph.groups, by_capacity=True, block_m=graph.caps.block_m,
                                               split=graph.split)  # fmt: skip
                positions = [row.own.length for row in rows]
            finally:
                for row in rows:
                    row.own.length, row.own.pending = row.own.length + 1, 0
            graph._int32_tables(blocks, fresh)
            assert torch.equal(graph.host_i32, graph.tables_i32)
            assert graph.positions[: len(rows), 0].tolist() == positions
            moved_on.append(moved)
        return moved

    monkeypatch.setattr(bucket_module.BucketGraph, "_upload", checked_upload)
    monkeypatch.setattr(bucket_module.BucketGraph, "_plan", noted_plan)
    monkeypatch.setattr(bucket_module.BucketGraph, "steps_again", checked_again)
    batcher = stubbed_batcher(models, monkeypatch, max_rows=12, window=window)
    lm = batcher.lm
    finished = list(batcher.run(_jobs(lm, tokenizer, 14)))
    assert all(f.ok for f in finished), [str(f.error) for f in finished if not f.ok]
    assert window == 1 or batcher.times.kept > 20, "window steps replayed from the bucket graphs"
    assert len(checked) > 50 and len(set(checked)) > 3, "steps of changing batches were replayed"
    if window == 1:
        assert 0.3 < sum(reused) / len(reused) < 1, "most steps reuse the walk; membership changes rebuild it"
    else:  # a window's later steps move the last step's tables on (`BucketGraph.steps_again`): no plan made
        assert len(moved_on) > 20 and sum(moved_on) > len(moved_on)
    assert sum(several) > 10, "step headers and prompts replay as one-token rows"
    assert splits == {batch.split, batch.batch_split}


def test_tables_of_the_next_decode_steps_follow_from_one_plan(models, tokenizer, monkeypatch):
    """A window of decode steps launched from one host plan: where every row of a bucket writes one token into
    its own block and nothing else changes, the tables of each later step are the first step's moved by its
    `StepIncrements` -- the same as a fresh plan of that step, including the rows' used partials when a block
    crosses a multiple of the split (8 keys here, so many do)."""
    monkeypatch.setattr(triton_attention, "settings", replace(triton_attention.settings, split=8, batch_split=8))
    upload, history = bucket_module.BucketGraph._upload, {}

    def noted_upload(graph, blocks, arrays, rows, tokens):
        upload(graph, blocks, arrays, rows, tokens)
        _, numpy_arrays, _, increments = plan_steps(rows, 1, graph.groups, by_capacity=True,
                                                    block_m=graph.caps.block_m, split=graph.split)  # fmt: skip
        plain = all(row.n_new == 1 and row.write_offset == 0 for row in rows)
        state = {
            "views": [[id(b) for b in row.blocks] for row in rows], "caps": graph.caps,
            "storage": [b.addresses() for b in blocks], "lengths": [b.visible_length for b in blocks],
            "own": [blocks.index(row.own) for row in rows],
        }  # fmt: skip
        history.setdefault(id(graph), []).append((plain, state, numpy_arrays, increments))

    def one_step_later(a: dict, b: dict) -> bool:
        """``b`` is ``a`` one decode step on: the same views and storage, each own block one token longer."""
        grown = [length + (i in a["own"]) for i, length in enumerate(a["lengths"])]
        same = a["views"] == b["views"] and a["caps"] == b["caps"] and b["lengths"] == grown
        return same and all(x is y for x, y in zip(a["storage"], b["storage"]))

    monkeypatch.setattr(bucket_module.BucketGraph, "_upload", noted_upload)
    batcher = stubbed_batcher(models, monkeypatch, max_rows=12)
    lm = batcher.lm
    finished = list(batcher.run(_jobs(lm, tokenizer, 14)))
    assert all(f.ok for f in finished), [str(f.error) for f in finished if not f.ok]
    checked, crossed = 0, 0
    for steps in history.values():
        for first, (plain, state, arrays, increments) in enumerate(steps):
            if not plain:
                continue
            later, previous = first + 1, state
            while later < len(steps) and steps[later][0] and one_step_later(previous, steps[later][1]):
                moved = increments.advance(arrays, later - first)
                fresh = steps[later][2]
                assert moved.keys() == fresh.keys()
                for name in fresh:
                    assert np.array_equal(moved[name], fresh[name]), (name, later - first)
                crossed += not np.array_equal(arrays["row_count"], fresh["row_count"])
                checked, previous, later = checked + 1, steps[later][1], later + 1
    assert checked > 200, "windows of several decode steps were checked"
    assert crossed > 20, "some of them crossed a split"


def test_steps_moved_on_run_only_where_the_blocks_are_as_the_last_step_left_them(models, monkeypatch):
    """`BucketGraph.steps_again` replays the last step's tables moved on, a token a step, each step's ids those drawn
    from the step before; it refuses -- writing nothing -- once a block's length changed behind it, its storage
    moved (the moved tables would be wrong) or an own block lacks room for all the steps."""
    from hogwild_bench.engine.model import DeviceTokens, Write

    monkeypatch.setattr(bucket_module.BucketGraph, "_allocate", host_buffers)
    monkeypatch.setattr(bucket_module.BucketGraph, "_capture", random_replay())
    lm = HogwildLM(models("qwen2"), attention="query_rotation")
    cache = lm.new_cache()
    lm.forward(cache, [Write(["p"], [1, 2, 3])])
    lm.forward(cache, [Write(["p", "a"], [4]), Write(["p", "b"], [5])])
    cache.reserve(["a", "b"], 64, like="p")
    graph = bucket_module.BucketGraph(lm, cache, 8)
    first = DeviceTokens([0, 1], torch.tensor([8, 9]), [0, 1])
    a, b = cache.block("a"), cache.block("b")
    seen = []  # each replay's (ids, positions, own blocks' lengths in the attention tables)

    def draw(logits):
        views = table_views(graph.tables_i32, graph._shapes())
        seen.append((graph.input_ids[:2, 0].tolist(), graph.positions[:2, 0].tolist(), views["length"][1:3].tolist()))
        return torch.tensor([20 + len(seen), 30 + len(seen)])

    assert graph.steps_again(2, first, draw) == 0  # no last step yet
    assert graph.step([["p", "a"], ["p", "b"]], [[6], [7]]) is not None
    assert graph.steps_again(2, first, draw) == 0  # a step not kept to move on (no window asked for it)
    assert graph.step([["p", "a"], ["p", "b"]], [[6], [7]], moves_on=True) is not None
    assert graph.steps_again(3, first, draw) == 3 and (a.length, b.length) == (6, 6)
    assert seen == [([8, 9], [3, 3], [4, 4]), ([21, 31], [4, 4], [5, 5]), ([22, 32], [5, 5], [6, 6])]
    assert graph.steps_again(70, first, draw) == 0, "no room for 70 more tokens"

    lm.forward(cache, [Write(["p", "a"], [10])])  # a write the last step did not make
    assert graph.steps_again(1, first, draw) == 0 and (a.length, b.length, a.pending, b.pending) == (7, 6, 0, 0)
    assert graph.step([["p", "a"], ["p", "b"]], [[6], [7]], moves_on=True) is not None
    cache.reserve(["b"], 4096, like="p")  # b's storage moves
    assert graph.steps_again(1, first, draw) == 0 and (a.length, b.length) == (8, 7)


@pytest.mark.parametrize("lanes,window", [(1, 1), (2, 1), (1, 4)])
def test_a_finished_generation_leaves_nothing_holding_its_storage(models, tokenizer, monkeypatch, lanes, window):
    """The batch admits new generations into the memory a finished one frees, so once a generation is done
    nothing may keep its blocks (their K/V storage) alive -- not the walk of a bucket that last ran it."""
    refs = track_blocks(monkeypatch)
    batcher = stubbed_batcher(models, monkeypatch, max_rows=12, lanes=lanes, window=window)
    lm = batcher.lm
    finished = list(batcher.run(_jobs(lm, tokenizer, 8)))
    assert all(f.ok for f in finished), [str(f.error) for f in finished if not f.ok]
    assert sum(g.replays for lane in batcher.lanes for g in lane.graphs.graphs.values()) > 10
    assert [b.name for b in live_blocks(refs)] == ["bucket scratch"] * len(
        [g for lane in batcher.lanes for g in lane.graphs.graphs.values()]
    )


@pytest.mark.parametrize("seed", range(3))
def test_a_walk_reused_across_steps_gives_the_fresh_plan(seed):
    """Two rows, three blocks: lengths change (one block emptied) under an unchanged walk."""
    from hogwild_bench.engine.attention import RowView
    from hogwild_bench.engine.blocks import KVBlock
    from hogwild_bench.engine.triton_attention import ViewPositions

    torch.manual_seed(seed)
    blocks = [KVBlock(name, 1) for name in "abc"]
    for block in blocks:
        block._reserve(0, 600, torch.zeros(1, 1, 4))
    rows = lambda: [
        RowView([blocks[0], blocks[1], blocks[2]], 1),
        RowView([blocks[0], blocks[2], blocks[1]], 1),
    ]  # noqa: E731
    walk = ViewPositions.walk(rows())
    for lengths in ([5, 300, 1], [5, 0, 2], [300, 7, 9]):
        for block, length in zip(blocks, lengths):
            block.length = length
        fresh_blocks, fresh, fresh_sizes = plan_arrays(rows(), 1, 2, by_capacity=True)
        again_blocks, again, again_sizes = plan_arrays(rows(), 1, 2, by_capacity=True, positions=walk)
        assert walk.same_views(rows()) and fresh_blocks == again_blocks and fresh_sizes == again_sizes
        assert all(torch.equal(fresh[name], again[name]) for name in fresh)


def test_no_forward_but_a_prompt_prefill_writes_into_a_block_without_storage(models, tokenizer, monkeypatch):
    """A block's first write cannot replay from the bucket graphs (there are no K/V addresses to put in the
    tables) and costs an eager forward, so a generation reserves every block it writes -- its step blocks,
    history, finisher and constant headers -- right after its prompt."""
    batcher = stubbed_batcher(models, monkeypatch, max_rows=12)
    lm = batcher.lm
    first_writes, begin = [], batcher.cache.begin_forward

    def noted(views, new_tokens):
        for view, tokens in zip(views, new_tokens):
            block = batcher.cache.blocks.get(view[-1])
            if len(tokens) <= PREFILL_TOKENS and (block is None or block.addresses() is None):
                first_writes.append(view[-1])
        return begin(views, new_tokens)

    monkeypatch.setattr(batcher.cache, "begin_forward", noted)
    finished = list(batcher.run(_jobs(lm, tokenizer, 14)))
    assert all(f.ok for f in finished), [str(f.error) for f in finished if not f.ok]
    assert first_writes == []


def test_prompts_admitted_one_at_a_time_ride_in_replayed_forwards(models, tokenizer, monkeypatch):
    """Generations admitted as others finish write their prompts (longer than `PREFILL_TOKENS`, into blocks they
    reserved) in replayed forwards, one row per token, not in eager prefills of their own; only the first wave and
    the shared template are prefilled eagerly."""
    batcher = stubbed_batcher(models, monkeypatch, max_rows=4)
    lm = batcher.lm
    replayed_prompts, forward = [], bucket_module.BucketGraphs.forward

    def noted(graphs, writes, *args, **kwargs):
        logits = forward(graphs, writes, *args, **kwargs)
        if logits is not None:
            replayed_prompts.extend(w for w in writes if len(w.tokens) > PREFILL_TOKENS)
        return logits

    monkeypatch.setattr(bucket_module.BucketGraphs, "forward", noted)
    options = GenerationOptions(n_workers=2, layout="combined", budgets=(8,), early_stop=False, worker_eos="forbid")
    gen = HogwildGenerator(lm, tokenizer, options, boundary=lambda s: len(s) >= 5)
    problems = [f"Problem {i}: " + "add two and two, then double it. " * 2 for i in range(6)]
    jobs = [
        BatchJob(i, lambda cache, p=p: gen.steps(cache, p), 2, gen.worst_case_tokens(p)) for i, p in enumerate(problems)
    ]
    finished = list(batcher.run(jobs))
    assert all(f.ok for f in finished), [str(f.error) for f in finished if not f.ok]
    assert len(replayed_prompts) >= len(problems) - 2, "prompts of generations admitted later were replayed"
    assert batcher.times.prefill <= 3  # the template, the first two prompts (admitted together)


def test_a_view_naming_an_unknown_block_fails_with_the_error_an_eager_forward_gives(models):
    """The bucket graphs resolve a step's views as an eager forward does: a misspelled block name is an
    `UnknownBlockError` naming it and the known blocks, whichever path runs the step."""
    from hogwild_bench.engine.cache import UnknownBlockError
    from hogwild_bench.engine.model import Write

    lm = HogwildLM(models("qwen2"), attention="query_rotation")
    cache = lm.new_cache()
    lm.forward(cache, [Write(["prompt"], [1, 2, 3])])
    writes = [Write(["prompt", "histroy", "alice"], [4])]
    message = r"no block 'histroy' in this cache; known blocks: alice, prompt"
    with pytest.raises(UnknownBlockError, match=message):
        lm.forward(cache, writes)
    with pytest.raises(UnknownBlockError, match=message):
        bucket_module.BucketGraphs(lm, cache).forward(writes)
    assert cache.rows is None and cache.block("alice").pending == 0  # nothing left half-begun
