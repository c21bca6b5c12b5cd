"""The Triton kernel against the torch query-rotation path (CPU: TRITON_INTERPRET=1, tiny shapes).

Run on a GPU with ``HOGWILD_TRITON_FULL=1`` for full shapes (bf16, relative error < 1e-2)."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")

from hogwild_bench.answers import BOXED_FINISHER  # noqa: E402
from hogwild_bench.engine.attention import RowView, attend_rotating_queries, token_rows  # noqa: E402
from hogwild_bench.engine.blocks import KVBlock  # noqa: E402
from hogwild_bench.engine.rope import RotaryShift  # noqa: E402

ON_GPU = torch.cuda.is_available()
os.environ["HOGWILD_TRITON_POISON"] = "1"  # outputs start as NaN: every element must be written
if not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels run on CUDA, or on CPU with TRITON_INTERPRET=1", allow_module_level=True)


def make_block(name, length, kv_heads, dim, dtype, device, layers=1):
    block = KVBlock(name, layers)
    if length:
        block.start_write(list(range(length)))
        for layer in range(layers):
            block.write(layer, torch.randn(kv_heads, length, dim, dtype=dtype, device=device),
                        torch.randn(kv_heads, length, dim, dtype=dtype, device=device))  # fmt: skip
        block.finish_write()
    return block


def scenario(n_rows, heads, kv_heads, dim, lengths, q_len, dtype, device, seed):
    """Shared prompt + history + one block per worker (combined-like views, a repeated separator)."""
    torch.manual_seed(seed)
    prompt = make_block("prompt", lengths[0], kv_heads, dim, dtype, device)
    history = make_block("history", lengths[1], kv_heads, dim, dtype, device)
    sep = make_block("sep", 3, kv_heads, dim, dtype, device)
    empty = make_block("empty", 0, kv_heads, dim, dtype, device)
    steps = [make_block(f"s{i}", lengths[2] + 5 * i, kv_heads, dim, dtype, device) for i in range(n_rows)]
    rows = []
    for i in range(n_rows):
        others = [b for j, s in enumerate(steps) if j != i for b in (s, sep)]
        view = [prompt, history, empty, *others, steps[i]]
        # the new tokens of this forward are already written into the own block (pending)
        n_new = 1 + (i % q_len)
        own = steps[i]
        own.start_write(list(range(n_new)))
        own.write(0, torch.randn(kv_heads, n_new, dim, dtype=dtype, device=device),
                  torch.randn(kv_heads, n_new, dim, dtype=dtype, device=device))  # fmt: skip
        rows.append((view, n_new))
    row_views = [RowView(view, n_new) for view, n_new in rows]
    query = torch.randn(n_rows, heads, q_len, dim, dtype=dtype, device=device)
    return query, row_views


def check(n_rows, heads, kv_heads, dim, lengths, q_len, dtype, device, seed, tol, split=None):
    from hogwild_bench.engine.triton_attention import TritonPlan, attend_rows_triton

    query, rows = scenario(n_rows, heads, kv_heads, dim, lengths, q_len, dtype, device, seed)
    rope = RotaryShift(1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))
    scaling = dim**-0.5
    reference = torch.stack([attend_rotating_queries(query[b].double(), row, 0, rope, scaling).float()
                             for b, row in enumerate(rows)])  # fmt: skip
    plan = TritonPlan.build(rows, q_len, heads // kv_heads, query.device, split=split)
    got = attend_rows_triton(query, rows, 0, rope, scaling, plan).float()
    for b, row in enumerate(rows):  # left-padding slots are unspecified; compare the real tokens
        real = slice(q_len - row.n_new, q_len)
        assert not got[b, real].isnan().any(), f"row {b}: unwritten output"
        error = (got[b, real] - reference[b, real]).norm() / reference[b, real].norm()
        assert error < tol, f"row {b}: relative error {error:.2e}"


def test_a_write_split_into_one_token_rows_attends_as_the_whole_write():
    """Bucket graphs replay writes of several tokens as one row per token: row j sees the same blocks and its
    own block up to the write's token j. Each token's attention must equal the multi-token row's, on the
    torch path and in the kernel (whose one-token rows of one block share its entries)."""
    from hogwild_bench.engine.triton_attention import attend_rows_triton

    dim, q_len = 16, 4
    query, rows = scenario(3, 4, 2, dim, (37, 70, 9), q_len, torch.float32, "cuda" if ON_GPU else "cpu", seed=5)
    rope = RotaryShift(1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))
    split = token_rows(rows)
    assert [r.n_new for r in split] == [1] * sum(r.n_new for r in rows) and len(split) > len(rows)
    # the split rows' queries: each write's real tokens, in order, one per row
    split_query = torch.cat([query[b, :, q_len - row.n_new :].transpose(0, 1)[:, :, None] for b, row in
                             enumerate(rows)])  # fmt: skip
    whole = [attend_rotating_queries(query[b], row, 0, rope, dim**-0.5) for b, row in enumerate(rows)]
    expected = torch.cat([out[q_len - row.n_new :] for out, row in zip(whole, rows)])  # [tokens, heads, D]
    torch_split = torch.cat([attend_rotating_queries(split_query[i], row, 0, rope, dim**-0.5)
                             for i, row in enumerate(split)])  # fmt: skip
    torch.testing.assert_close(torch_split, expected, atol=1e-5, rtol=1e-5)
    kernel_split = attend_rows_triton(split_query, split, 0, rope, dim**-0.5)[:, 0]
    torch.testing.assert_close(kernel_split, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_rows,heads,kv_heads,q_len", [(1, 2, 1, 2), (2, 4, 1, 2), (3, 4, 2, 2), (3, 8, 1, 4)])
def test_kernel_matches_torch_path_tiny(n_rows, heads, kv_heads, q_len):
    """The last case has more query rows per block than one program takes (tiled over the grid)."""
    device = "cuda" if ON_GPU else "cpu"
    check(n_rows, heads, kv_heads, 16, (37, 70, 9), q_len=q_len, dtype=torch.float32, device=device, seed=n_rows,
          tol=1e-4 if not ON_GPU else 5e-3)  # fmt: skip


@pytest.mark.parametrize("split", [16, 64])
def test_kernel_matches_torch_path_whatever_the_split(split):
    """Keys per program is a plan setting (forwards of many rows take longer splits): blocks cut into several
    splits, merged per row, give the same attention."""
    device = "cuda" if ON_GPU else "cpu"
    check(3, 4, 2, 16, (37, 70, 9), q_len=2, dtype=torch.float32, device=device, seed=split, split=split,
          tol=1e-4 if not ON_GPU else 5e-3)  # fmt: skip


@pytest.mark.parametrize("merge_chunk,merge_warps", [(2, 1), (16, 2)])
def test_the_merge_gives_the_same_attention_however_many_partials_it_takes_at_a_time(
    monkeypatch, merge_chunk, merge_warps
):
    """The merge folds a row's partials CHUNK at a time (a `KernelSettings` choice): rows with more partials
    than a chunk (here ~10-14 at split 16) loop, and the running log-sum-exp must carry across iterations."""
    from hogwild_bench.engine.triton_attention import settings

    monkeypatch.setattr(settings, "merge_chunk", merge_chunk)
    monkeypatch.setattr(settings, "merge_warps", merge_warps)
    device = "cuda" if ON_GPU else "cpu"
    check(3, 4, 2, 16, (37, 70, 9), q_len=2, dtype=torch.float32, device=device, seed=7, split=16,
          tol=1e-4 if not ON_GPU else 5e-3)  # fmt: skip


def test_the_merge_takes_the_smallest_chunk_that_holds_the_widest_row_in_one_iteration():
    """Merge programs wait on memory, not on arithmetic: a batched row of ~7-11 partials gets a chunk of 8 / 16
    and a warp per 8, a long single-generation context keeps 32 / 4 (looping); fields set by hand win."""
    from hogwild_bench.engine.triton_attention import KernelSettings

    auto = KernelSettings()
    assert [auto.merge_for(w) for w in (1, 7, 8, 9, 11, 16, 17, 70)] == [
        (8, 1), (8, 1), (8, 1), (16, 2), (16, 2), (16, 2), (32, 4), (32, 4)
    ]  # fmt: skip
    assert KernelSettings(merge_chunk=4).merge_for(70) == (4, 1)
    assert KernelSettings(merge_chunk=32, merge_warps=8).merge_for(3) == (32, 8)
    with pytest.raises(ValueError, match="power of two"):
        KernelSettings(merge_chunk=12)


def test_forwards_of_many_rows_take_the_batch_split():
    from hogwild_bench.engine.triton_attention import settings

    assert settings.split_for(1) == settings.split_for(settings.batch_rows - 1) == settings.split
    assert settings.split_for(settings.batch_rows) == settings.split_for(4096) == settings.batch_split


@pytest.mark.skipif(not (ON_GPU and os.environ.get("HOGWILD_TRITON_FULL")), reason="full shapes: GPU only")
@pytest.mark.parametrize("n_rows", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("ratio", [1, 4, 8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_full_shapes(n_rows, ratio, dtype):
    kv_heads = 4
    for seed, lengths in enumerate([(1031, 2049, 17), (16384, 777, 1), (5, 0, 300)]):
        check(n_rows, kv_heads * ratio, kv_heads, 128, lengths, q_len=1 if seed != 2 else 4, dtype=dtype,
              device="cuda", seed=seed, tol=1e-2)  # fmt: skip


# the registry's real models: Qwen2.5-Coder-1.5B (12 heads / 2 KV, head_dim 128), -0.5B (14 / 2, head_dim 64),
# SmolLM2-135M (9 / 3, head_dim 64)
REAL_SHAPES = [(12, 2, 128), (14, 2, 64), (9, 3, 64)]


@pytest.mark.skipif(not (ON_GPU and os.environ.get("HOGWILD_TRITON_FULL")), reason="full shapes: GPU only")
@pytest.mark.parametrize("heads,kv_heads,dim", REAL_SHAPES)
@pytest.mark.parametrize("n_rows", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("split", [None, 1024])
def test_kernel_real_model_shapes(heads, kv_heads, dim, n_rows, dtype, split):
    tol = 1e-2 if dtype == torch.bfloat16 else 5e-3  # float32 dots run as tf32-free ieee; the merge adds a little
    for seed, lengths in enumerate([(211, 1500, 37), (4000, 0, 1), (5, 9, 300)]):
        check(n_rows, heads, kv_heads, dim, lengths, q_len=1 if seed != 2 else 4, dtype=dtype, device="cuda",
              seed=seed, tol=tol, split=split)  # fmt: skip


@pytest.mark.parametrize("heads,kv_heads,dim", REAL_SHAPES)
def test_kernel_real_model_head_layouts_tiny(heads, kv_heads, dim):
    """The real models' GQA ratios (6, 7, 3) and head sizes at tiny lengths: under the interpreter in CI."""
    device = "cuda" if ON_GPU else "cpu"
    check(2, heads, kv_heads, dim, (13, 21, 5), q_len=2, dtype=torch.float32, device=device, seed=3,
          tol=1e-4 if not ON_GPU else 5e-3)  # fmt: skip


def test_generation_with_triton_backend_matches_torch_backend(models, tokenizer):
    from helpers import RecordingLM

    from hogwild_bench.engine import GenerationOptions, HogwildGenerator, HogwildLM

    device = "cuda" if ON_GPU else "cpu"
    # one layer on CPU: the interpreter's kernel launches are the test's cost (~60 s with the fixtures' two)
    model = models("llama", **({} if ON_GPU else {"num_hidden_layers": 1})).to(device)
    runs = []
    for backend in ("query_rotation", "triton"):
        recorder = RecordingLM(HogwildLM(model, attention=backend))
        options = GenerationOptions(n_workers=2, layout="combined", budgets=(4,), collab_interval=2, early_stop=False,
                                    finisher_max_tokens=1)  # fmt: skip
        result = HogwildGenerator(
            recorder, tokenizer, options, finisher=BOXED_FINISHER, boundary=lambda s: len(s) >= 3
        ).generate("1+1?")
        runs.append((recorder.records, result.snapshots[4]))
    model.to("cpu")
    (ref, ref_snap), (got, got_snap) = runs
    assert got_snap.worker_tokens == ref_snap.worker_tokens
    for a, b in zip(ref, got):
        torch.testing.assert_close(a.logits, b.logits, atol=2e-3 if ON_GPU else 1e-4, rtol=0)


def test_one_append_launch_writes_each_rows_new_tokens_after_its_own_length_and_nothing_else():
    """`OwnBlockTables.append` (how the Triton path stores a forward's K/V on CUDA): the last ``n_new`` of each
    row's left-padded slots land at its own block's length, in every layer, exactly where the per-row copies
    of the torch paths put them."""
    from hogwild_bench.engine.cache import HogwildCache
    from hogwild_bench.engine.triton_attention import OwnBlockTables

    device = "cuda" if ON_GPU else "cpu"
    torch.manual_seed(0)
    layers, kv_heads, dim, lengths, n_new = 2, 2, 16, (5, 0, 70), (1, 3, 2)
    rope = RotaryShift(1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))
    caches = {backend: HogwildCache(layers, rope, backend) for backend in ("query_rotation", "triton")}
    for i, length in enumerate(lengths):
        block = make_block(f"w{i}", max(length, 1), kv_heads, dim, torch.float32, device, layers)
        block.truncate(length)
        for cache in caches.values():
            cache.blocks[f"w{i}"] = block.copy()  # storage of exactly `length` tokens: the forward grows it
    new_k = torch.randn(layers, len(lengths), kv_heads, 3, dim, device=device)
    new_v = torch.randn(layers, len(lengths), kv_heads, 3, dim, device=device)
    for cache in caches.values():
        cache.begin_forward([[f"w{i}"] for i in range(3)], [list(range(n)) for n in n_new])
        assert OwnBlockTables.possible(cache.rows)  # begin_forward reserved room in every layer
        tables = OwnBlockTables(cache.rows, torch.device(device)) if cache.attention == "triton" else None
        for layer in range(layers):
            if tables is None:
                cache.store_new(new_k[layer], new_v[layer], layer)
            else:
                tables.append(layer, new_k[layer], new_v[layer])
        cache.end_forward()
    for i, (length, n) in enumerate(zip(lengths, n_new)):
        torch_block, triton_block = caches["query_rotation"].blocks[f"w{i}"], caches["triton"].blocks[f"w{i}"]
        assert triton_block.length == length + n
        for layer in range(layers):
            got = triton_block.layer_kv(layer)
            torch.testing.assert_close(got[0][:, length:], new_k[layer, i, :, 3 - n :], rtol=0, atol=0)
            torch.testing.assert_close(got[1][:, length:], new_v[layer, i, :, 3 - n :], rtol=0, atol=0)
            for a, b in zip(got, torch_block.layer_kv(layer)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_partial_slots_are_packed_per_entry_and_never_shared():
    """Each (entry, split) gets its own partial slot, and an entry gets only its own block's splits: a short
    separator seen by every row beside one long context must not pay for the context's splits (a stride of
    the longest block's splits per entry made partials ~16x too large and overflowed int32 offsets in big
    batches)."""
    from hogwild_bench.engine.triton_attention import plan_arrays, settings

    device, dim = "cpu", 8
    context = make_block("context", 16 * settings.split, 1, dim, torch.float32, device)  # 16 splits
    sep = make_block("sep", 3, 1, dim, torch.float32, device)
    steps = [make_block(f"s{i}", 2 + i, 1, dim, torch.float32, device) for i in range(6)]
    rows = []
    for i, own in enumerate(steps):
        view = [context, *(b for j, s in enumerate(steps) if j != i for b in (s, sep)), own]
        own.start_write([0])
        rows.append(RowView(view, 1))
    blocks, tables, sizes = plan_arrays(rows, 1, groups=1)
    arrays = {name: table.tolist() for name, table in tables.items()}
    splits = {id(b): -(-b.visible_length // settings.split) for b in blocks}
    entry_splits = [splits[id(blocks[b])] for b, count in enumerate(arrays["ent_count"]) for _ in range(count)]
    assert sizes["n_slots"] == sum(entry_splits) == 6 * 16 + (len(entry_splits) - 6)
    owned = [slot for start, n in zip(arrays["ent_slot"], entry_splits) for slot in range(start, start + n)]
    assert sorted(owned) == list(range(sizes["n_slots"]))  # every slot belongs to exactly one (entry, split)
    for r, (parts, count) in enumerate(zip(arrays["row_parts"], arrays["row_count"])):
        mine = {s for e, (start, n) in enumerate(zip(arrays["ent_slot"], entry_splits)) if arrays["ent_row"][e] == r
                for s in range(start, start + n)}  # fmt: skip
        assert set(parts[:count]) == mine


@pytest.mark.parametrize("source_len,target_len", [(5, 0), (37, 70), (64, 3)])
def test_one_launch_commit_equals_the_per_layer_shift(source_len, target_len):
    """`append_shifted` (how the Triton backend commits a step on CUDA) stores exactly what
    `KVBlock.extend_from` does, in every layer: keys rotated by the target's length, values copied, and
    the target grows its storage when it must."""
    from hogwild_bench.engine.triton_attention import append_shifted

    device = "cuda" if ON_GPU else "cpu"
    torch.manual_seed(source_len)
    layers, kv_heads, dim = 3, 2, 16
    rope = RotaryShift(1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))
    source = make_block("step", source_len, kv_heads, dim, torch.float32, device, layers)
    history = make_block("history", max(target_len, 1), kv_heads, dim, torch.float32, device, layers)
    history.truncate(target_len)
    targets = [history, history.copy()]  # the copy's storage is full: the commit must grow it
    targets[0].extend_from(source, rope)
    append_shifted(targets[1], source, rope)
    expected, got = targets
    assert got.length == expected.length == source_len + target_len
    assert got.token_ids == expected.token_ids
    for layer in range(layers):
        for a, b in zip(got.layer_kv(layer), expected.layer_kv(layer)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
