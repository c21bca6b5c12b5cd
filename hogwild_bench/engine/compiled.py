"""Decode forwards traced by `torch.compile`: the model's own code, with its small kernels fused.

A decode step of a 7B model launches about a thousand small kernels besides its GEMMs (HF's RMSNorm alone is
six per call, RoPE ten per layer); even replayed from a CUDA graph they cost ~2 ms a step, more than the
attention. `torch.compile` fuses them, but it cannot trace the engine (block lists, per-forward plans are
Python objects that change every step). So the model is compiled against `StandInCache`, a stateless
`transformers.Cache` whose ``update`` hands the new K/V through untouched, and the engine's whole work per
layer -- store the new K/V in the own blocks, attend over every row's view -- is one opaque custom op,
``hogwild::attend``, that finds the cache of the forward in flight through `running`. The model code is
traced as written; nothing in it is replaced.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from hogwild_bench.engine.cache import BlockBackedCache, HogwildCache, cache_keyword

_IN_FLIGHT: list[HogwildCache] = []


@contextmanager
def running(cache: HogwildCache) -> Iterator[None]:
    """Make ``cache`` (with a forward begun on it) the one ``hogwild::attend`` reads and writes."""
    _IN_FLIGHT.append(cache)
    try:
        yield
    finally:
        _IN_FLIGHT.pop()


@torch.library.custom_op("hogwild::attend", mutates_args=())
def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layer: int, scaling: float) -> torch.Tensor:
    """``query [rows, heads, T, D]``, new ``key/value [rows, kv_heads, T, D]`` -> ``[rows, T, heads, D]``.

    Side effect (hidden from the compiler, which never reads cache storage): the new K/V are stored."""
    if not _IN_FLIGHT:
        raise RuntimeError("hogwild::attend called outside `running(cache)`")
    cache = _IN_FLIGHT[-1]
    cache.store_new(key, value, layer)
    return cache.attend(query, layer, scaling, groups=query.shape[1] // key.shape[1])


@attend.register_fake
def _(query, key, value, layer, scaling):
    rows, heads, q_len, dim = query.shape
    return query.new_empty(rows, q_len, heads, dim)


class StandInCache(BlockBackedCache):
    """What a compiled model sees as ``past_key_values``: no state, and ``update`` stores nothing (the
    attention op does), so the traced graph holds for every step."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        return key_states, value_states


class CompiledDecoder:
    """``torch.compile`` of a model for decode forwards over a `HogwildCache`.

    Compiled on first use (Inductor generates kernels for the whole model: slow, once). Static (the default):
    one compilation per number of rows, one new token per row, the fastest kernels for CUDA-graph replays.
    ``dynamic=True``: one compilation for every number of rows and tokens per row, so a batched run (rows
    join and leave every few steps, some rows write a step prefix) never recompiles. ``buckets=True``: static,
    called only by the bucket graphs' captures, one compilation per bucket (powers of two from 8 rows): room is
    made for that many specialisations, which torch would otherwise stop compiling after eight.
    """

    BUCKET_COMPILATIONS = 16  # buckets of 8 .. 2**18 rows

    def __init__(self, model: torch.nn.Module, backend: str = "inductor", dynamic: bool = False,
                 buckets: bool = False):  # fmt: skip
        if dynamic and buckets:
            raise ValueError("CompiledDecoder: dynamic=True compiles once for every shape; buckets=True is static")
        self.model, self.dynamic = model, dynamic
        if buckets:
            config = torch._dynamo.config
            config.recompile_limit = max(config.recompile_limit, self.BUCKET_COMPILATIONS)
        self.stand_in = StandInCache(model.config.num_hidden_layers)
        self.compiled = torch.compile(model, backend=backend, dynamic=dynamic)

    def __call__(
        self, cache: HogwildCache, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: int | torch.Tensor = 1
    ) -> torch.Tensor:
        """Logits ``[rows, V]`` (model dtype) of each row's last token; a forward must be begun on ``cache``.
        ``keep``: 1 for left-padded rows, or the last token's index of each row packed in one sequence."""
        with running(cache):
            out = self.compiled(
                input_ids=input_ids, position_ids=position_ids, **{cache_keyword(type(self.model)): self.stand_in},
                hogwild_cache=self.stand_in, use_cache=True, logits_to_keep=keep,
            )  # fmt: skip
        return out.logits[:, -1] if isinstance(keep, int) else out.logits[0]
