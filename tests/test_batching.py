"""Continuous batching: many generations in one forward give exactly what each gives alone."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from hogwild_bench.answers import BOXED_FINISHER, stop_on_boxed
from hogwild_bench.engine import GenerationOptions, HogwildGenerator, HogwildLM, Isolated, PromptFormat, SamplingParams
from hogwild_bench.engine.batch import AdmissionError, BatchJob, ContinuousBatcher


def every(n):
    return lambda step: len(step) >= n


LONG_PROBLEM = "Compute the sum of the first twenty positive odd integers, then divide it by four. " * 3

# (problem, options, generator keyword arguments): different worker counts, layouts, prompt lengths,
# early stops, finisher runs mid-generation, sampling with a seed, per-worker stops, in-context headers
MIXED = [
    ("2+2?", dict(n_workers=2, layout="combined", budgets=(5, 10), early_stop=False), dict(finisher=True)),
    ("What is 3! + 4!?", dict(n_workers=3, layout="interleaved", budgets=(8,), collab_interval=4), {}),
    ("2+2?", dict(n_workers=1, layout="contiguous", budgets=(6, 9), first_steps=["So \\boxed{4}."]), dict(stop=True)),
    (LONG_PROBLEM, dict(n_workers=2, layout="contiguous", budgets=(7,), sampling=SamplingParams(0.8, 0.9, 3)), {}),
    (
        "1/2 + 1/3?",
        dict(
            n_workers=2,
            layout=Isolated(),
            budgets=(4, 8),
            first_steps=["", ""],
            per_worker=True,
            sampling=SamplingParams(temperature=0.7, seed=5),
        ),
        dict(finisher=True),
    ),  # fmt: skip
    ("Is 91 prime?", dict(n_workers=2, layout="combined", budgets=(9,), header_prefill="in_context"), {}),
]


def make_generator(lm, tokenizer, options: dict, hooks: dict) -> HogwildGenerator:
    extra = {"boundary": every(4)}
    if isinstance(options["layout"], Isolated):  # as the independent protocol formats it
        extra["prompt_format"] = PromptFormat(tokenizer, 1, layout="contiguous", step_labels=False)
    if hooks.get("finisher"):
        extra["finisher"] = BOXED_FINISHER
    if hooks.get("stop"):
        extra["stop"] = stop_on_boxed(tokenizer)
    return HogwildGenerator(lm, tokenizer, GenerationOptions(**options), **extra)


def comparable(result) -> dict:
    """A generation result without its timings."""
    return {
        budget: {k: v for k, v in dataclasses.asdict(snap).items() if k != "wall_seconds"}
        for budget, snap in result.snapshots.items()
    } | {"tokens_per_worker": result.tokens_per_worker, "finished_early": result.finished_early}


def jobs_for(lm, tokenizer, order, mixed=MIXED):
    for index in order:
        problem, options, hooks = mixed[index]
        gen = make_generator(lm, tokenizer, options, hooks)
        yield BatchJob(
            key=index,
            start=lambda cache, gen=gen, problem=problem: gen.steps(cache, problem),
            rows=gen.options.n_workers,
            kv_tokens=gen.worst_case_tokens(problem),
        )


def each_alone(lm, tokenizer, mixed=MIXED) -> dict[int, dict]:
    """What each generation of ``mixed`` gives run by itself (unbatched), by its index."""
    return {i: comparable(make_generator(lm, tokenizer, o, h).generate(p)) for i, (p, o, h) in enumerate(mixed)}


@pytest.fixture(scope="module")
def alone(models, tokenizer):
    lm = HogwildLM(models("qwen2"))
    return lm, each_alone(lm, tokenizer)


@pytest.mark.parametrize(
    "ahead", [{}, {"overlap": True}, {"window": 4}, {"window": 9}], ids=["in_turn", "overlap", "window4", "window9"]
)
@pytest.mark.parametrize(
    "max_rows,order,lanes", [(64, [0, 1, 2, 3, 4, 5], 1), (4, [5, 3, 1, 0, 4, 2], 1), (8, [5, 3, 1, 0, 4, 2], 2)]
)
def test_batched_generations_equal_each_generation_run_alone(alone, tokenizer, max_rows, order, lanes, ahead):
    """Also in two lanes stepped in turn (the host's work for one beside the device's for the other), with
    each step launched before the host has read the last step's tokens (``overlap``: the guessed steps that
    were wrong -- step boundaries, stops, budgets, finishers -- taken back), and in windows of several decode
    steps run before the host reads any of their tokens (``window``: a generation takes the steps up to its
    first request that differs)."""
    lm, expected = alone
    steps, lane_rows = [], []

    def on_step(rows, seconds):
        steps.append(rows)
        lane_rows.append([lane.rows for lane in batcher.lanes])

    batcher = ContinuousBatcher(lm, max_rows=max_rows, on_step=on_step, lanes=lanes, **ahead)
    finished = list(batcher.run(jobs_for(lm, tokenizer, order)))
    times = batcher.times
    if "overlap" in ahead:
        assert 0 < times.taken_back < times.ahead, "most steps ran ahead and stood, some were taken back"
    if "window" in ahead:
        assert 0 < times.kept < times.ahead, "generations took most window steps, not all"
    assert all(rows <= max_rows // lanes for step in lane_rows for rows in step), "each lane keeps to its share"
    assert any(all(step) for step in lane_rows), "every lane had generations at once"
    assert [f.error for f in finished] == [None] * len(MIXED)
    assert sorted(f.key for f in finished) == sorted(order)
    for f in finished:
        assert comparable(f.result) == expected[f.key], f"generation {f.key} changed when batched"
        assert f.cost.forwards > 0 and f.cost.peak_kv_bytes > 0 and f.cost.seconds > 0
    assert max(steps) <= max_rows
    assert max(steps) > 3  # rows of several generations really shared forwards
    assert batcher.cache.blocks == {} and batcher.reserved_bytes == 0  # finished generations free everything


def test_the_batch_accounts_for_its_time_and_forwards(alone, tokenizer):
    """`BatchTimes` counts every forward once (by kind) and splits the run's time into its phases; the time
    the caller spends with a finished generation (scoring, storing) is ``outside``, not the engine's."""
    import time

    lm, _ = alone
    steps = []
    batcher = ContinuousBatcher(lm, max_rows=64, on_step=lambda rows, seconds: steps.append(rows))
    started = time.perf_counter()
    for _ in batcher.run(jobs_for(lm, tokenizer, range(len(MIXED)))):
        time.sleep(0.02)
    wall = time.perf_counter() - started
    times = batcher.times
    assert times.replayed + times.eager + times.prefill == len(steps) and times.replayed == 0  # no graphs on CPU
    assert times.prefill >= 1 and times.eager > times.prefill
    assert times.outside >= 0.02 * len(MIXED)
    phases = times.forward + times.draw + times.resume + times.admit + times.outside
    assert 0.9 * wall <= phases <= wall
    assert "eager" in times.summary() and "outside" in times.summary()


def test_inserts_that_overflow_the_decode_replay_are_replayed_in_chunks_of_its_room(alone):
    """Writes of several tokens that do not fit beside the decode rows get replayed forwards of their own, each
    within the replay room, generations in order; a wave needing more than `INSERT_REPLAY_CHUNKS` of them, or a
    write longer than the room, runs in one eager forward (an eager forward's host time is that of several
    replays)."""
    from hogwild_bench.engine.batch import INSERT_REPLAY_CHUNKS

    lm, _ = alone
    batcher = ContinuousBatcher(lm, max_rows=4)
    room = batcher.replay_rows
    waiting = [SimpleNamespace(tokens=t) for t in (room // 2, room // 2, room // 4, room)]
    groups = batcher._insert_groups(waiting, lambda r: r.tokens)
    assert groups == [(waiting[:2], True), (waiting[2:3], True), (waiting[3:], True)]
    wave = [SimpleNamespace(tokens=room) for _ in range(INSERT_REPLAY_CHUNKS + 1)]
    assert batcher._insert_groups(wave, lambda r: r.tokens) == [(wave, False)]
    too_long = [SimpleNamespace(tokens=2), SimpleNamespace(tokens=room + 1)]
    assert batcher._insert_groups(too_long, lambda r: r.tokens) == [(too_long, False)]


def test_prompts_ride_in_replayed_forwards_where_their_block_has_room(alone):
    """With bucket graphs a prompt joins the decode forward's spare rows, one row per token, or else a replayed
    forward of its own; a prompt whose block has no storage yet, or a wave too large for `INSERT_REPLAY_CHUNKS`
    replayed forwards, is prefilled eagerly, as without graphs."""
    from hogwild_bench.engine.batch import INSERT_REPLAY_CHUNKS, PREFILL_TOKENS, _Lane
    from hogwild_bench.engine.model import Write

    lm, _ = alone
    batcher = ContinuousBatcher(lm, max_rows=8)
    room = batcher.replay_rows

    def generation(tokens: int, storage: int | None):
        block = SimpleNamespace(room=lambda: storage or 0)  # an empty block with storage for ``storage`` tokens
        namespace = SimpleNamespace(block=lambda name: block)
        return SimpleNamespace(draw=None, writes=[Write(["prompt"], [1] * tokens)], namespace=namespace,
                               job=SimpleNamespace(rows=1))  # fmt: skip

    def groups(members):
        lane = _Lane(graphs=object(), members={i: r for i, r in enumerate(members)})
        return [([members.index(r) for r in group], replay) for group, replay in batcher._groups(lane, [])]

    decoding = [generation(1, 64) for _ in range(3)]
    prompt = PREFILL_TOKENS + 8  # two do not fit beside the decode rows
    rides, own_forward, no_storage = generation(prompt, room), generation(prompt, room), generation(prompt, None)
    assert groups([*decoding, rides, own_forward, no_storage]) == [([5], False), ([4], True), ([0, 1, 2, 3], True)]
    wave = [generation(room, room) for _ in range(INSERT_REPLAY_CHUNKS + 2)]  # one fills the decode forward
    assert groups(wave)[-1] == ([0], True)
    assert all(not replay for _, replay in groups(wave)[:-1]) and sum(len(g) for g, _ in groups(wave)) == len(wave)
    assert groups([generation(room + 1, 2 * room)]) == [([0], False)]  # longer than a replayed forward's rows


def test_prompts_admitted_together_are_prefilled_in_one_forward(alone, tokenizer):
    """A wave of new generations costs one packed prefill forward, not one forward per prompt, and gives
    the same results; without packed rows each prompt runs alone (it would pad the others to its length).
    Before it, each distinct prompt template is written once, alone (`SharedBlocks`)."""
    lm, _ = alone
    mixed = [(f"{LONG_PROBLEM} {problem}", options, hooks) for problem, options, hooks in MIXED]  # all prefills
    expected = each_alone(lm, tokenizer, mixed)
    templates = set()
    for problem, options, hooks in mixed:
        gen = make_generator(lm, tokenizer, options, hooks)
        templates.add(tuple(gen.shared_opening(gen.fmt.encode(gen.fmt.prompt_text(problem, gen.layout.has_history)))))
    assert 1 < len(templates) < len(mixed)
    first_forwards = {}
    for pack_rows in (True, False):
        lm.pack_rows = pack_rows
        forwards: list[int] = []
        batcher = ContinuousBatcher(lm, max_rows=64, on_step=lambda rows, seconds, into=forwards: into.append(rows))
        try:
            finished = list(batcher.run(jobs_for(lm, tokenizer, range(len(mixed)), mixed)))
        finally:
            lm.pack_rows = True
        assert all(comparable(f.result) == expected[f.key] for f in finished)
        assert forwards[: len(templates)] == [1] * len(templates)  # each template once, alone
        first_forwards[pack_rows] = forwards[len(templates) : len(templates) + len(mixed)]
    assert first_forwards[True][0] == len(mixed)  # every prompt in the next forward
    assert first_forwards[False] == [1] * len(mixed)  # one prompt per forward


def test_generations_whose_prompts_open_alike_read_one_block_of_that_opening(alone, tokenizer):
    """The prompt's template (chat header, collaboration rules) is the same in every generation of a grid point:
    the batch writes its K/V once, alone, and every such generation's views open with that one block; it is
    dropped with the last generation that reads it. Results stay those of each generation alone."""
    lm, _ = alone
    gen = make_generator(lm, tokenizer, dict(n_workers=2, layout="combined", budgets=(6,)), {})
    problems = ["2+2?", "What is 3! + 4!?", "Is 91 prime?"]
    expected = [comparable(gen.generate(problem)) for problem in problems]
    jobs = [
        BatchJob(i, lambda cache, p=p: gen.steps(cache, p), 2, gen.worst_case_tokens(p)) for i, p in enumerate(problems)
    ]
    steps, holders = [], []
    batcher = ContinuousBatcher(lm, max_rows=64)
    batcher.on_step = lambda rows, seconds: (steps.append(rows), holders.append(dict(batcher.shared.held.values())))
    finished = sorted(batcher.run(jobs), key=lambda f: f.key)
    assert [comparable(f.result) for f in finished] == expected
    assert steps[:2] == [1, 3]  # the template alone (as the first generation was admitted), then the problems
    assert holders[1] == {"shared0/": 3}  # all three read that one block
    assert all(h.keys() <= {"shared0/"} for h in holders)  # and it was never written again
    opening = gen.shared_opening(gen.fmt.encode(gen.fmt.prompt_text(problems[0])))
    assert opening == gen.template_ids()[:-1] and finished[0].result.snapshots[6].blocks["template"] == opening
    assert batcher.cache.blocks == {} and batcher.shared.held == {}


def test_a_batched_run_through_one_dynamic_compilation_equals_each_generation_alone(alone, models, tokenizer):
    """``compile_dynamic``: every forward (any rows, any tokens per row, prefills included) runs the one traced
    graph; greedy tokens and snapshots stay those of each generation run alone without compilation."""
    from torch._dynamo.utils import counters

    from hogwild_bench.engine.compiled import CompiledDecoder

    _, expected = alone
    torch._dynamo.reset()
    counters.clear()
    lm = HogwildLM(models("qwen2"))
    lm.decoder = CompiledDecoder(lm.model, backend="aot_eager", dynamic=True)  # traces as inductor would
    finished = list(ContinuousBatcher(lm, max_rows=64).run(jobs_for(lm, tokenizer, range(len(MIXED)))))
    assert [f.error for f in finished] == [None] * len(MIXED)
    for f in finished:
        assert comparable(f.result) == expected[f.key], f"generation {f.key} changed when compiled"
    assert not counters["graph_break"]
    # Dynamo specialises sizes of 1: at most one graph per (one row or more) x (one token per row or more)
    assert counters["stats"]["unique_graphs"] <= 4, "a few dynamic graphs, not one per batch shape"


def test_a_generation_that_fails_does_not_stop_the_others(alone, tokenizer):
    lm, expected = alone

    def broken(cache):
        yield from make_generator(lm, tokenizer, *MIXED[1][1:]).steps(cache, "2+2?")
        raise RuntimeError("scoring hook exploded")

    jobs = list(jobs_for(lm, tokenizer, [0, 2]))
    jobs.insert(1, BatchJob(key="broken", start=broken, rows=3, kv_tokens=1))
    finished = {f.key: f for f in ContinuousBatcher(lm, max_rows=8).run(jobs)}
    assert "exploded" in str(finished["broken"].error)
    assert comparable(finished[0].result) == expected[0] and comparable(finished[2].result) == expected[2]


def out_of_memory_at_call(call: int, function):
    """``function`` that fails as a device out of memory at its ``call``-th call, once."""
    calls = []

    def failing_once(*args, **kwargs):
        calls.append(None)
        if len(calls) == call:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return function(*args, **kwargs)

    return failing_once


def assert_one_of_two_lanes_failed(batcher: ContinuousBatcher, lm, tokenizer, expected) -> None:
    """Run generations 0 and 4 (one per lane) where a device call fails once: exactly one ends out of memory, the
    other finishes as it would alone, and the batch holds nothing afterwards."""
    finished = {f.key: f for f in batcher.run(jobs_for(lm, tokenizer, [0, 4]))}
    failed = [key for key, f in finished.items() if not f.ok]
    assert len(failed) == 1 and "out of memory" in str(finished[failed[0]].error)
    (ok,) = [key for key in finished if key not in failed]
    assert comparable(finished[ok].result) == expected[ok]
    assert batcher.cache.blocks == {} and batcher.reserved_bytes == 0


def test_token_choices_that_fail_end_only_their_generations(alone, tokenizer, monkeypatch):
    """A token choice that fails on the device (out of memory) ends the generations whose choice it was, in
    their lane; the other lane's generations finish as they would alone."""
    import hogwild_bench.engine.batch as batch_module

    lm, expected = alone
    monkeypatch.setattr(batch_module, "enqueue_draws", out_of_memory_at_call(5, batch_module.enqueue_draws))
    batcher = ContinuousBatcher(lm, max_rows=4, lanes=2)
    assert_one_of_two_lanes_failed(batcher, lm, tokenizer, expected)


def test_a_window_step_that_fails_ends_only_the_generations_in_it(alone, tokenizer, monkeypatch):
    """A guessed step of a window that fails on the device (out of memory) ends the generations stepped in it,
    as any failed forward does; the other lane's generation finishes as it would alone, and nothing is left."""
    lm, expected = alone
    failing = out_of_memory_at_call(3, ContinuousBatcher._forward_guessed)
    monkeypatch.setattr(ContinuousBatcher, "_forward_guessed", failing)
    batcher = ContinuousBatcher(lm, max_rows=4, lanes=2, window=4)
    assert_one_of_two_lanes_failed(batcher, lm, tokenizer, expected)


def test_window_and_overlap_are_one_or_the_other(alone):
    lm, _ = alone
    with pytest.raises(ValueError, match="window must be >= 1"):
        ContinuousBatcher(lm, max_rows=4, window=0)
    with pytest.raises(ValueError, match="choose one"):
        ContinuousBatcher(lm, max_rows=4, window=4, overlap=True)


def test_admission_refuses_what_cannot_fit_alone_and_queues_what_fits_later(alone, tokenizer):
    lm, expected = alone
    jobs = list(jobs_for(lm, tokenizer, [0, 1, 2]))
    one_job = lm.kv_bytes_per_token * max(j.kv_tokens for j in jobs[:1] + jobs[2:])
    batcher = ContinuousBatcher(lm, max_rows=2, kv_budget_bytes=one_job)
    in_flight = []
    batcher.on_step = lambda rows, seconds: in_flight.append(len(batcher.running))
    finished = {f.key: f for f in batcher.run(jobs)}
    assert isinstance(finished[1].error, AdmissionError) and "batch.max_rows is 2" in str(finished[1].error)
    assert comparable(finished[0].result) == expected[0] and comparable(finished[2].result) == expected[2]
    assert max(in_flight) == 1  # the memory budget holds one generation at a time
    small = ContinuousBatcher(lm, max_rows=8, kv_budget_bytes=1024)
    (refused,) = small.run(jobs_for(lm, tokenizer, [2]))
    assert isinstance(refused.error, AdmissionError) and "GiB of KV storage" in str(refused.error)


def test_worst_case_tokens_covers_what_a_generation_allocates(alone, tokenizer):
    lm, _ = alone
    for index, (problem, options, hooks) in enumerate(MIXED):
        gen = make_generator(lm, tokenizer, options, hooks)
        (done,) = ContinuousBatcher(lm, max_rows=8).run(jobs_for(lm, tokenizer, [index]))
        assert done.cost.peak_kv_bytes <= gen.worst_case_tokens(problem) * lm.kv_bytes_per_token


def test_worst_case_tokens_covers_a_step_longer_than_its_preallocation(alone, tokenizer):
    """Under a layout with a history a step block starts with room for 1024 tokens; a worker whose step
    runs past that (no paragraph break for 1100 tokens) grows it, and admission must have counted the growth."""
    lm, _ = alone
    options = GenerationOptions(n_workers=1, layout="combined", budgets=(1300,), early_stop=False)
    gen = HogwildGenerator(lm, tokenizer, options, boundary=lambda step: len(step) >= 1100)
    job = BatchJob(0, lambda cache: gen.steps(cache, "2+2?"), 1, gen.worst_case_tokens("2+2?"))
    (done,) = ContinuousBatcher(lm, max_rows=1).run([job])
    assert done.ok and done.result.tokens_per_worker == 1300
    assert done.cost.peak_kv_bytes <= gen.worst_case_tokens("2+2?") * lm.kv_bytes_per_token


def test_kv_bytes_per_token_matches_the_model_shape(models):
    model = models("qwen2")
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    expected = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * torch.finfo(model.dtype).bits // 8
    assert HogwildLM(model).kv_bytes_per_token == expected


COST_FIELDS = ("generation_forwards", "generation_seconds", "generation_tokens_per_second", "peak_kv_bytes")
CONTENT = ("response", "extracted_answer", "correct", "tokens_per_worker", "total_tokens", "finished_early",
           "worker_texts", "worker_ends", "answered_by", "finisher_answer", "worker_answers")  # fmt: skip


@pytest.mark.parametrize(
    "protocol", [["grid.workers=[1,2,3]", "grid.layouts=[combined,interleaved]"],
                 ["protocol=independent", "grid.workers=[2,3]", "generation.temperature=0.7"]],
)  # fmt: skip
def test_a_batched_run_stores_what_a_one_at_a_time_run_stores(tmp_path, protocol):
    from conftest import compose_config, tiny_run_overrides

    from hogwild_bench.runner import run
    from hogwild_bench.store import ResultStore, record_key

    stored = {}
    runs = (("batched", "batch.max_rows=7"), ("overlap", "batch.overlap=true"), ("window", "batch.window=6"),
            ("alone", "batch.enabled=false"))  # fmt: skip
    for where, batching in runs:
        overrides = tiny_run_overrides(tmp_path / where, "dataset.limit=4", *protocol, batching)
        records = ResultStore(run(compose_config(overrides))).records()
        assert all(r["status"] == "ok" and all(r[f] is not None for f in COST_FIELDS) for r in records)
        stored[batching] = {record_key(r): {f: r.get(f) for f in CONTENT} for r in records}
    batched, overlapped, windowed, alone = stored.values()
    assert batched == alone and overlapped == alone and windowed == alone and len(batched) > 0


def model_reading(weight_bytes: int) -> SimpleNamespace:
    """A stand-in model whose decode step reads ``weight_bytes`` of weights (`bench.weight_bytes_read`), with
    no memory behind them."""
    weights = torch.empty(weight_bytes // 2, dtype=torch.bfloat16, device="meta")
    table = SimpleNamespace(weight=torch.empty(0, device="meta"))  # the tied embedding table: read whole
    return SimpleNamespace(
        parameters=lambda: [weights], get_input_embeddings=lambda: table, get_output_embeddings=lambda: table
    )


def test_automatic_lanes_are_two_for_small_models_on_a_gpu_and_one_otherwise(models):
    """``batch.lanes=0``: a small model's batched step is host-bound (two lanes overlap host and GPU), a large
    one's GPU-bound (two lanes read the weights twice per round); on CPU there is nothing to overlap."""
    from hogwild_bench.runner import GPU_BOUND_WEIGHT_BYTES, lanes

    def run_config(value):
        return SimpleNamespace(batch=SimpleNamespace(lanes=value))

    def engine(device, weight_bytes):
        return SimpleNamespace(device=torch.device(device), model=model_reading(weight_bytes))

    small, large = GPU_BOUND_WEIGHT_BYTES // 3, 2 * GPU_BOUND_WEIGHT_BYTES
    assert lanes(run_config(0), engine("cuda", small)) == 2
    assert lanes(run_config(0), engine("cuda", large)) == 1
    assert lanes(run_config(0), engine("cpu", small)) == 1
    assert lanes(run_config(3), engine("cuda", large)) == 3  # a value set by hand is kept


def test_automatic_overlap_is_on_for_one_lane_on_a_gpu_only():
    """``batch.overlap=null``: launching a step before its tokens are read pays where one lane leaves the GPU
    waiting for the host; two lanes already cover that, and on CPU the forward is the host's own work. A value
    set by hand is kept. With windows of several steps (``batch.window``), which step ahead their own way, auto
    is off."""
    from hogwild_bench.config import RunConfig
    from hogwild_bench.runner import overlaps

    assert RunConfig().batch.overlap is None, "auto by default"

    def run_config(value, window=1):
        return SimpleNamespace(batch=SimpleNamespace(overlap=value, window=window))

    def engine(device):
        return SimpleNamespace(device=torch.device(device))

    assert overlaps(run_config(None), engine("cuda"), 1) is True
    assert overlaps(run_config(None), engine("cuda"), 2) is False
    assert overlaps(run_config(None), engine("cpu"), 1) is False
    assert overlaps(run_config(True), engine("cuda"), 2) is True
    assert overlaps(run_config(False), engine("cuda"), 1) is False
    assert overlaps(run_config(None, window=8), engine("cuda"), 1) is False


def test_automatic_bucket_compilation_is_on_for_gpu_bound_steps_only():
    """``batch.compile_buckets=null``: fusing the small kernels pays where the loop waits for the GPU (a step
    reading >= 8 GB of weights), not where it waits for its own host work; a value set by hand is kept."""
    from hogwild_bench.config import RunConfig
    from hogwild_bench.runner import GPU_BOUND_WEIGHT_BYTES, compiles_buckets

    assert RunConfig().batch.compile_buckets is None, "auto by default"

    def run_config(value):
        return SimpleNamespace(batch=SimpleNamespace(compile_buckets=value))

    small, large = model_reading(GPU_BOUND_WEIGHT_BYTES // 3), model_reading(2 * GPU_BOUND_WEIGHT_BYTES)
    assert compiles_buckets(run_config(None), large) is True
    assert compiles_buckets(run_config(None), small) is False
    assert compiles_buckets(run_config(False), large) is False
    assert compiles_buckets(run_config(True), small) is True
