"""Token choice: the right distribution, reproducible from a seed, and independent of batch-mates."""

import pytest
import torch

from hogwild_bench.engine.sampling import (
    Draw,
    Sampler,
    SamplingParams,
    WindowDraws,
    draw_tokens,
    enqueue_draws,
    gumbel_noise,
)
from hogwild_bench.engine.sampling_kernel import BLOCK_V, CHUNK_V, gumbel_argmax


def frequencies(tokens: list[int], vocab: int) -> torch.Tensor:
    return torch.bincount(torch.tensor(tokens), minlength=vocab).float() / len(tokens)


def test_sampled_tokens_follow_the_tempered_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    sampler = Sampler(SamplingParams(temperature=0.5, seed=1))
    tokens = sampler(logits.expand(40_000, 4))
    expected = torch.softmax(logits / 0.5, dim=-1)
    assert torch.allclose(frequencies(tokens, 4), expected, atol=0.01)


def test_top_p_keeps_the_smallest_head_reaching_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    tokens = Sampler(SamplingParams(temperature=1.0, top_p=0.7, seed=2))(logits.expand(20_000, 4))
    freq = frequencies(tokens, 4)
    assert freq[2] == freq[3] == 0  # 0.5 + 0.3 already reaches 0.7
    assert torch.allclose(freq[:2], torch.tensor([0.625, 0.375]), atol=0.015)


def test_greedy_takes_the_argmax_and_never_a_forbidden_token():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0]])
    assert Sampler(SamplingParams())(logits) == [1, 0]
    assert Sampler(SamplingParams(), extra_forbidden=[1])(logits) == [2, 0]
    sampled = Sampler(SamplingParams(temperature=2.0, forbidden_token_ids=(1,)))(logits.repeat(500, 1))
    assert 1 not in sampled


def test_draws_are_reproducible_from_the_seed_and_change_with_it():
    logits = torch.randn(8, 50)
    first = Sampler(SamplingParams(temperature=1.0, seed=3))
    again = Sampler(SamplingParams(temperature=1.0, seed=3))
    assert first(logits) == again(logits)
    assert first(logits) == again(logits)  # the second draws of both match too ...
    assert first(logits) != Sampler(SamplingParams(temperature=1.0, seed=4))(logits)  # ... and another seed differs
    assert Sampler(SamplingParams(temperature=1.0, seed=3))(logits) != first(logits)  # a later draw is new noise


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)])
def test_a_draw_does_not_depend_on_the_draws_beside_it(order):
    torch.manual_seed(0)
    logits = [torch.randn(rows, 40) for rows in (2, 4, 1)]
    params = [
        SamplingParams(temperature=0.8, top_p=0.9, seed=5),
        SamplingParams(),  # a greedy finisher beside samplers
        SamplingParams(temperature=1.3, seed=6, forbidden_token_ids=(3, 7)),
    ]
    alone = [Sampler(p)(x) for p, x in zip(params, logits)]
    samplers = [Sampler(p) for p in params]
    together = draw_tokens([Draw(logits[i], samplers[i]) for i in order])
    assert [together[order.index(i)] for i in range(3)] == alone
    assert [s.draws for s in samplers] == [2, 4, 1]


@pytest.mark.parametrize("forbidden", [(), (3, 7)])
def test_a_window_chooses_the_tokens_of_its_steps_drawn_one_after_another(forbidden):
    """`WindowDraws` builds the rows' table once and moves only the counters: each step's tokens are those
    `enqueue_draws` chooses step by step (the samplers' counters moving on), mixed samplers and forbidden sets
    included, and it leaves the counters where they were."""
    torch.manual_seed(1)
    params = [
        SamplingParams(temperature=0.8, top_p=0.9, seed=5),
        SamplingParams(forbidden_token_ids=forbidden),  # greedy
        SamplingParams(temperature=1.3, seed=6, forbidden_token_ids=forbidden),
    ]
    counts = [2, 1, 3]
    steps = [torch.randn(sum(counts), 40) for _ in range(4)]
    stepwise, samplers = [], [Sampler(p) for p in params]
    for logits in steps:
        parts = logits.split(counts)
        stepwise.append(enqueue_draws([Draw(x, s) for x, s in zip(parts, samplers)]).result())
    window_samplers = [Sampler(p) for p in params]
    window = WindowDraws(window_samplers, counts)
    on_device = [window.step(logits) for logits in steps]
    assert window.result() == stepwise
    assert [sum(t, []) for t in stepwise] == [x.tolist() for x in on_device]
    assert [s.draws for s in window_samplers] == [0, 0, 0]
    greedy = WindowDraws([Sampler(SamplingParams())], [6])
    assert [greedy.step(x).tolist() for x in steps] == [x.argmax(-1).tolist() for x in steps]


def test_gumbel_noise_is_standard_gumbel():
    noise = gumbel_noise(torch.arange(64), 4096)
    assert abs(noise.mean().item() - 0.5772) < 0.01  # Euler-Mascheroni
    assert abs(noise.var().item() - torch.pi**2 / 6) < 0.03
    assert not torch.equal(noise[0], noise[1])


def kernel_available() -> bool:
    import os

    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.skipif(not kernel_available(), reason="Triton runs on CUDA, or on CPU with TRITON_INTERPRET=1")
def test_the_one_launch_sampler_chooses_the_reference_tokens():
    from hogwild_bench.engine.sampling import _choose, _choose_in_kernel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    rows, vocab = 6, 5000  # a vocabulary over two of the kernel's chunks, not a multiple of one
    logits = torch.randn(rows, vocab, device=device) * 3
    logits[1, :4000] = float("-inf")  # forbidden tokens; the best one left sits in the last chunk
    logits[2] = float("-inf")  # everything forbidden: token 0, as torch.argmax
    logits[3, [10, 20, 3000]] = 50.0  # ties of the greedy row, in one chunk and across two: the first wins
    temperature = [0.7, 1.0, 1.0, 1.0, 1.5, 0.2]
    greedy = [0, 0, 0, 1, 0, 0]
    table = torch.tensor(
        [[t, 1.0, 12345 + 977 * r, 40 + r, g] for r, (t, g) in enumerate(zip(temperature, greedy))],
        dtype=torch.float64,
        device=device,
    )
    for draw in range(3):  # three draws of the same logits: new noise each time, the same choices as torch
        table[:, 3] += draw
        assert _choose_in_kernel(logits, table).tolist() == _choose(logits, table, top_p=False).tolist()
    assert _choose_in_kernel(logits, table)[[2, 3]].tolist() == [0, 10]


@pytest.mark.skipif(not kernel_available(), reason="Triton runs on CUDA, or on CPU with TRITON_INTERPRET=1")
@pytest.mark.parametrize("chunk", [BLOCK_V, 2 * BLOCK_V, CHUNK_V])
def test_the_sampler_kernel_gives_the_same_tokens_however_the_vocabulary_is_cut_into_programs(chunk):
    from hogwild_bench.engine.sampling import _choose, _keys

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(1)
    rows, vocab = 5, 3 * BLOCK_V + 17
    logits = torch.randn(rows, vocab, device=device) * 2
    logits[0, : 3 * BLOCK_V] = float("-inf")  # only the last, partial chunk has candidates
    logits[1, [5, BLOCK_V + 5, 3 * BLOCK_V + 1]] = 80.0  # greedy ties in three chunks: the first wins
    logits[2] = float("-inf")  # nothing allowed: token 0
    table = torch.tensor([[1.0, 1.0, 777 + r, r, int(r == 1)] for r in range(rows)], dtype=torch.float64, device=device)
    chosen = gumbel_argmax(logits, _keys(table), table[:, 0].float(), table[:, 4].bool(), chunk=chunk)
    assert chosen.tolist() == _choose(logits, table, top_p=False).tolist()
    assert chosen[[1, 2]].tolist() == [5, 0] and chosen[0] >= 3 * BLOCK_V
    with pytest.raises(ValueError, match="multiple of"):
        gumbel_argmax(logits, _keys(table), table[:, 0].float(), table[:, 4].bool(), chunk=BLOCK_V + 1)
