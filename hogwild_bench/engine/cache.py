"""`HogwildCache`: a `transformers.Cache` whose storage is a set of named `KVBlock`s.

Stock models call ``cache.update(k, v, layer_idx)`` (the cache is ``past_key_values`` in older transformers)
with the new tokens' (already rotated) keys; this cache has its attention backend (`engine.backends`) store
them in each worker's own block and hands them back unchanged. The registered ``"hogwild"`` attention
function (`engine.model`) then has the backend read the blocks of each worker's view. Between forwards the
cache is plain data: blocks can be committed, cleared, reserved or prefilled.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import torch
from transformers import Cache

from hogwild_bench.engine.attention import RowView
from hogwild_bench.engine.backends import BACKENDS
from hogwild_bench.engine.blocks import KVBlock
from hogwild_bench.engine.rope import RotaryShift

ATTENTION_BACKENDS = tuple(BACKENDS)


@functools.cache
def cache_keyword(model_class: type | None = None) -> str:
    """The keyword a stock model's ``forward`` takes its KV cache under: ``cache`` since transformers renamed it
    (``past_key_values`` is deprecated there and goes in 5.40, after which it would be swallowed by ``**kwargs``),
    ``past_key_values`` before. ``model_class``: the model's class (default: transformers' Llama, for callers
    that have no model)."""
    if model_class is None:
        from transformers import LlamaForCausalLM

        model_class = LlamaForCausalLM
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


class UnknownBlockError(KeyError):
    """A view names a block that no write, clear, reserve or commit created."""

    def __str__(self) -> str:
        return str(self.args[0])


class BlockBackedCache(Cache):
    """The `transformers.Cache` surface shared by caches whose storage is `KVBlock`s rather than cache layers:
    nothing to compile, no sliding layers, one entry per model layer."""

    def __init__(self, num_layers: int):
        super().__init__(layers=[])
        self.num_layers = num_layers

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * self.num_layers

    def __len__(self) -> int:
        return self.num_layers

    # the model's own masks see only the new tokens: what each row attends to is the engine's business
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return query_length, 0


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without making the host wait (pinned staging on CUDA)."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


class PackedRows:
    """A forward whose rows' new tokens are packed into one sequence (``[1, total]``, no padding): the model's
    matrix products then cost ``total`` tokens, not ``rows x longest``, when a few rows write many tokens (a
    step prefix, a finisher suffix) beside many rows writing one. Attention backends still see left-padded
    ``[rows, heads, T, D]`` tensors: `unpack` and `pack` convert at the engine's two per-layer calls."""

    def __init__(self, n_new: Sequence[int]):
        self.rows, self.width, self.total = len(n_new), max(n_new), sum(n_new)
        gather, real, start = [], [], 0
        for r, n in enumerate(n_new):
            pad = self.width - n
            gather.append([self.total] * pad + list(range(start, start + n)))  # index `total`: a zero slot
            real.extend(r * self.width + pad + j for j in range(n))
            start += n
        self._gather, self._real = torch.tensor(gather), torch.tensor(real)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _indices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:
            self._on[device] = (to_device(self._gather, device), to_device(self._real, device))
        return self._on[device]

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """``[1, heads, total, D]`` -> left-padded ``[rows, heads, T, D]`` (padding slots are zeros)."""
        gather, _ = self._indices(x.device)
        flat = torch.cat([x[0], x.new_zeros(x.shape[1], 1, x.shape[3])], dim=1)  # [heads, total + 1, D]
        return flat[:, gather].transpose(0, 1)

    def pack(self, out: torch.Tensor) -> torch.Tensor:
        """``[rows, T, heads, D]`` (attention output) -> ``[1, total, heads, D]``, the real tokens in order."""
        _, real = self._indices(out.device)
        return out.reshape(self.rows * self.width, *out.shape[2:])[real][None]


class HogwildCache(BlockBackedCache):
    """Named KV blocks plus the per-forward plan (which worker sees which blocks, writes where).

    ``attention`` picks the attention path: ``"query_rotation"`` (torch, the fast design),
    ``"key_rotation"`` (torch reference), or ``"triton"`` (CUDA kernel).
    """

    def __init__(self, num_layers: int, rope: RotaryShift, attention: str = "query_rotation"):
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {attention!r}; valid: {', '.join(ATTENTION_BACKENDS)}")
        super().__init__(num_layers)
        self.rope = rope
        self.attention = attention  # the backend's name
        self.backend = BACKENDS[attention]()
        self.blocks: dict[str, KVBlock] = {}
        self.rows: list[RowView] | None = None
        self.forward_state: dict = {}  # per-forward scratch for attention backends (e.g. kernel metadata)
        self.packed: PackedRows | None = None  # set for a forward whose rows are packed into one sequence
        # set when the caller cannot wrap the model call (the shared_cache adapter): the attention of this
        # layer ends the forward
        self.finish_after_layer: int | None = None
        self.graph = None  # a DecodeGraph while it captures: K/V appends go through its device tables
        self.decode_graphs: dict = {}  # views -> DecodeGraph (HogwildLM with cuda_graphs=True)

    # -- blocks ----------------------------------------------------------------------------------
    def block(self, name: str) -> KVBlock:
        """The block called ``name``. Reading a block nothing created is an error (a misspelled name in a view
        would otherwise attend to an empty block): blocks come into being by being written, cleared,
        reserved or committed into."""
        if name not in self.blocks:
            known = ", ".join(sorted(self.blocks)) or "none yet"
            raise UnknownBlockError(f"no block {name!r} in this cache; known blocks: {known}")
        return self.blocks[name]

    def writable(self, name: str) -> KVBlock:
        """The block called ``name``, created empty if new (the block a write, clear or commit targets)."""
        if name not in self.blocks:
            self.blocks[name] = KVBlock(name, self.num_layers)
        return self.blocks[name]

    def commit(self, source: str, target: str) -> None:
        """Move ``source``'s tokens to the end of ``target`` (RoPE shift only) and empty ``source``."""
        self.backend.commit(self, self.block(source), self.writable(target))
        self.block(source).clear()

    def reserve(self, names: Sequence[str], tokens: int, like: str) -> None:
        """Preallocate ``tokens`` of storage for each block in ``names`` (dtype/device per layer taken from
        block ``like``), so that no append reallocates -- and no decode graph is re-captured -- until then."""
        template = self.block(like)
        for name in names:
            block = self.writable(name)
            for layer in range(self.num_layers):
                if template.keys[layer] is not None:
                    block._reserve(layer, tokens, template.keys[layer])

    def clear(self, name: str) -> None:
        self.writable(name).clear()

    def share(self, name: str, token_ids: Sequence[int]) -> bool:
        """Make block ``name`` the K/V of ``token_ids`` written alone from position 0 (a text every generation of
        a sweep opens with). True: the caller must write them now (the block is emptied for it); False: the
        block already holds exactly them. A cache of one generation always asks; `engine.batch`'s namespaces
        share one such block between all generations that open with the same tokens."""
        block = self.writable(name)
        if block.token_ids == list(token_ids) and not block.pending:
            return False
        block.clear()
        return True

    def tokens(self, names: Sequence[str]) -> list[int]:
        """The flattened token ids of a view: what the plain model would read."""
        return [t for name in names for t in self.block(name).token_ids]

    def lengths(self) -> dict[str, int]:
        return {name: block.length for name, block in self.blocks.items()}

    # -- one forward -----------------------------------------------------------------------------
    def begin_forward(self, views: Sequence[Sequence[str]], new_tokens: Sequence[Sequence[int]]) -> None:
        """Declare the forward about to run: row b sees ``views[b]`` and appends ``new_tokens[b]`` to
        ``views[b][-1]``. Every row's new tokens are visible to every row that has that block in view."""
        for view in views:  # written blocks first: a row may read a block another row creates in this forward
            self.writable(view[-1])
        blocks = self.blocks
        try:  # plain lookups: this runs for every row of every step
            resolved = [[blocks[name] for name in view] for view in views]
        except KeyError:
            resolved = [[self.block(name) for name in view] for view in views]  # raises the error naming it
        self.begin_forward_blocks(resolved, new_tokens)

    def begin_forward_blocks(self, views: Sequence[Sequence[KVBlock]], new_tokens: Sequence[Sequence[int]]) -> None:
        """`begin_forward` with the blocks themselves (they need not be registered by name here)."""
        if self.rows is not None:
            raise RuntimeError("a forward is already in flight on this cache")
        owners = [view[-1] for view in views]
        if len({id(b) for b in owners}) != len(owners):
            raise ValueError(f"two rows write into the same block in one forward: {[b.name for b in owners]}")
        started = []
        try:
            for view, tokens in zip(views, new_tokens):
                if not tokens:
                    raise ValueError(f"row writing {view[-1].name!r} has no new tokens")
                view[-1].start_write(tokens)
                view[-1].reserve_pending()
                started.append(view[-1])
        except Exception:
            for block in started:
                block.abort_write()
            raise
        self.rows = [RowView(list(view), len(t)) for view, t in zip(views, new_tokens)]

    def end_forward(self, ok: bool = True) -> None:
        for row in self.rows or []:
            row.own.finish_write() if ok else row.own.abort_write()
        self.rows = None
        self.forward_state = {}
        self.packed = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Called by every attention layer with ``[rows, kv_heads, T, head_dim]`` new keys/values."""
        self.store_new(key_states, value_states, layer_idx)
        return key_states, value_states

    def store_new(self, key_states: torch.Tensor, value_states: torch.Tensor, layer: int) -> None:
        """Write each row's new (left-padded) keys/values into its own block."""
        if self.rows is None:
            raise RuntimeError("HogwildCache.update outside a planned forward; use HogwildLM.forward")
        if self.packed is not None:
            key_states, value_states = self.packed.unpack(key_states), self.packed.unpack(value_states)
        self.backend.store(self, key_states, value_states, layer)

    def attend(self, query: torch.Tensor, layer: int, scaling: float, groups: int) -> torch.Tensor:
        """``query [rows, heads, T, D]`` of the forward in flight -> ``[rows, T, heads, D]`` over each row's view
        (``groups`` query heads per KV head)."""
        if self.packed is not None:
            return self.packed.pack(self.backend.attend(self, self.packed.unpack(query), layer, scaling, groups))
        return self.backend.attend(self, query, layer, scaling, groups)

    def __repr__(self) -> str:
        return f"HogwildCache({', '.join(f'{n}={b.length}' for n, b in self.blocks.items())})"
