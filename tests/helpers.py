"""Test doubles around the engine: record every forward, or drive the engine and the replay together."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hogwild_bench.engine.model import HogwildLM


@dataclass
class ForwardRecord:
    views: list[list[str]]
    tokens: list[list[int]]
    flat_views: list[list[int]]  # each row's flattened view right after the forward (its new tokens included)
    logits: torch.Tensor


def plain_logits(model, token_ids: list[int]) -> torch.Tensor:
    """Logits of the unmodified model (SDPA, no Hogwild code) on one flat sequence: ``[len, vocab]``."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        with torch.no_grad():
            return model(torch.tensor([token_ids])).logits[0].float()
    finally:
        model.set_attn_implementation(previous)


class RecordingLM:
    """Wraps a `HogwildLM` and records each forward with the flattened text each row saw."""

    def __init__(self, lm: HogwildLM):
        self.lm = lm
        self.records: list[ForwardRecord] = []
        self.caches: list = []

    def new_cache(self):
        self.caches.append(self.lm.new_cache())
        return self.caches[-1]

    def forward(self, cache, writes, all_logits: bool = False):
        logits = self.lm.forward(cache, writes, all_logits=all_logits)
        self.records.append(
            ForwardRecord(
                views=[list(w.view) for w in writes],
                tokens=[list(w.tokens) for w in writes],
                flat_views=[cache.tokens(w.view) for w in writes],
                logits=logits,
            )
        )
        return logits

    def prefill(self, cache, name, token_ids, context=None):
        from hogwild_bench.engine.model import Write

        return self.forward(cache, [Write([*(context or []), name], list(token_ids))])[0]


class TeeCache:
    """Engine cache and replay cache side by side; reads come from the engine, mutations go to both."""

    def __init__(self, engine_cache, replay_cache):
        self.engine, self.replay = engine_cache, replay_cache

    @property
    def blocks(self):
        return self.engine.blocks

    def block(self, name):
        return self.engine.block(name)

    def commit(self, source, target):
        self.engine.commit(source, target)
        self.replay.commit(source, target)

    def clear(self, name):
        self.engine.clear(name)
        self.replay.clear(name)

    def reserve(self, names, tokens, like):
        self.engine.reserve(names, tokens, like=like)  # storage only: the replay keeps plain lists

    def share(self, name, token_ids):
        ours, theirs = self.engine.share(name, token_ids), self.replay.share(name, token_ids)
        assert ours == theirs, f"the caches disagree whether block {name!r} must be written"
        return ours

    def tokens(self, names):
        ours, theirs = self.engine.tokens(names), self.replay.tokens(names)
        assert ours == theirs, f"token bookkeeping diverged for {names}"
        return ours


@dataclass
class TeeLM:
    """Runs every forward through the engine and the replay reference; keeps the worst logit gap."""

    engine: HogwildLM
    replay: object
    max_gap: float = 0.0
    forwards: int = 0
    gaps: list[float] = field(default_factory=list)

    def new_cache(self):
        return TeeCache(self.engine.new_cache(), self.replay.new_cache())

    def forward(self, cache, writes, all_logits: bool = False):
        ours = self.engine.forward(cache.engine, writes, all_logits=all_logits)
        theirs = self.replay.forward(cache.replay, writes, all_logits=all_logits)
        gap = (ours - theirs).abs().max().item()
        self.gaps.append(gap)
        self.max_gap = max(self.max_gap, gap)
        self.forwards += 1
        return ours

    def prefill(self, cache, name, token_ids, context=None):
        from hogwild_bench.engine.model import Write

        return self.forward(cache, [Write([*(context or []), name], list(token_ids))])[0]


# -- bucket graphs without a GPU: their host tables are built for real, capture and replay are stubbed --------
class _Ready:
    """Stands in for the CUDA event that says the staging buffers were copied."""

    def synchronize(self):
        pass

    def record(self):
        pass


def host_buffers(graph) -> None:
    """`BucketGraph._allocate` without pinned memory or a device: the host staging buffers, and CPU tensors
    standing in for the device tables."""
    graph._allocate_host(pin=False)
    graph.tables_i32, graph.tables_i64 = torch.zeros_like(graph.host_i32), torch.zeros_like(graph.host_i64)
    graph.input_ids = graph.tables_i64[: graph.rows].view(graph.rows, 1)  # where token ids on the device go
    graph.positions = graph.tables_i64[graph.rows : 2 * graph.rows].view(graph.rows, 1)
    graph.uploaded = _Ready()


def random_replay(scale: float = 1.0):
    """A `BucketGraph._capture` stand-in whose replays yield random logits (``scale`` x standard normal)."""

    def capture(graph, blocks, sizes) -> None:
        noise = torch.Generator().manual_seed(graph.captures)
        vocab = graph.lm.model.config.vocab_size

        class Replay:
            def replay(self):
                graph.logits = torch.randn(graph.rows, vocab, generator=noise) * scale

        graph.graph = Replay()
        graph.captures += 1

    return capture


def track_blocks(monkeypatch) -> list:
    """Weak references to every `KVBlock` created from now on (see `live_blocks`)."""
    import weakref

    from hogwild_bench.engine.blocks import KVBlock

    refs, init = [], KVBlock.__init__

    def tracking(block, *args, **kwargs):
        init(block, *args, **kwargs)
        refs.append(weakref.ref(block))

    monkeypatch.setattr(KVBlock, "__init__", tracking)
    return refs


def live_blocks(refs: list) -> list:
    """The tracked blocks something still refers to (after a garbage collection)."""
    import gc

    gc.collect()
    return [block for block in (ref() for ref in refs) if block is not None]
