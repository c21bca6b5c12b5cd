"""KV blocks: the unit of sharing in a Hogwild! cache.

A block is a run of tokens whose keys are stored at positions *local* to the block (0, 1, 2, ...), so the
same block can sit at any offset in any worker's view. Storage is one contiguous ``[kv_heads, capacity,
head_dim]`` tensor per layer that grows by doubling, and the lengths are plain integers: both are what a
kernel wants to be handed. Mutations run under ``torch.inference_mode`` so a block filled inside a
notebook's ``inference_mode`` cell can be extended outside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hogwild_bench.engine.rope import RotaryShift, rotate_half

MIN_CAPACITY = 64


def storage_tokens(tokens: int) -> int:
    """Capacity a block allocates to hold ``tokens`` (storage grows by doubling from `MIN_CAPACITY`)."""
    capacity = MIN_CAPACITY
    while capacity < tokens:
        capacity *= 2
    return capacity


@dataclass(frozen=True)
class BlockAddresses:
    """One block's storage as kernels see it: ``table [3, layers]`` int64 (CPU) holds per layer the K base
    address, the V base address and the capacity in tokens; ``array`` is the same memory as numpy (host
    tables of many blocks are assembled with numpy: a ``.numpy()`` per block per step costs more than that)."""

    table: torch.Tensor
    min_capacity: int
    array: np.ndarray
    _on_device: dict = field(default_factory=dict, compare=False, repr=False)

    def on(self, device: torch.device) -> torch.Tensor:
        """``table`` on ``device``, copied once (a commit reads it on every step boundary; a copy per commit
        costs a pinned staging buffer and a transfer each time)."""
        if device not in self._on_device:  # pinned and asynchronous on CUDA: no wait for the queued steps
            host = self.table.pin_memory() if device.type == "cuda" else self.table
            self._on_device[device] = host.to(device, non_blocking=True)
        return self._on_device[device]


KERNEL_ALIGNMENT = 16  # bytes: the Triton kernels load K/V in 16-byte vectors from the addresses in the tables


def _check_aligned(name: str, storage: list[torch.Tensor]) -> None:
    """Kernels are told every head of every layer starts on a `KERNEL_ALIGNMENT` boundary (so they can load
    whole vectors); a storage tensor that breaks that would make them read wrong data, so it is refused."""
    for tensor in storage:
        head_stride = tensor.stride(0) * tensor.element_size()
        if tensor.data_ptr() % KERNEL_ALIGNMENT or head_stride % KERNEL_ALIGNMENT or not tensor.is_contiguous():
            raise ValueError(
                f"block {name!r}: K/V storage must be contiguous with every head {KERNEL_ALIGNMENT}-byte aligned "
                f"(address {tensor.data_ptr()}, head stride {head_stride} bytes)"
            )


class KVBlock:
    """Per-layer key/value storage for one block of tokens.

    ``length`` counts tokens whose keys are final. While a forward is in flight, ``pending`` tokens are
    being written past ``length``; they are visible to attention in that forward and become part of
    ``length`` when it finishes (`finish_write`), or are dropped if it fails (`abort_write`).
    """

    def __init__(self, name: str, num_layers: int):
        self.name = name
        self.num_layers = num_layers
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.length = 0
        self.pending = 0
        self.token_ids: list[int] = []
        self._pending_tokens: list[int] = []
        self.storage_version = 0  # bumped whenever any layer's storage is (re)allocated: addresses changed
        self._addresses: tuple[int, BlockAddresses | None] | None = None

    def __repr__(self) -> str:
        return f"KVBlock({self.name!r}, length={self.length}, pending={self.pending})"

    @property
    def visible_length(self) -> int:
        return self.length + self.pending

    def capacity(self, layer: int) -> int:
        keys = self.keys[layer]
        return 0 if keys is None else keys.shape[1]

    def _reserve(self, layer: int, needed: int, like: torch.Tensor) -> None:
        """Grow layer storage to hold ``needed`` tokens, doubling so appends are amortised O(1)."""
        if needed <= self.capacity(layer):
            return
        capacity = max(MIN_CAPACITY, self.capacity(layer))
        while capacity < needed:
            capacity *= 2
        heads, dim = like.shape[0], like.shape[-1]
        for store in (self.keys, self.values):
            grown = like.new_empty(heads, capacity, dim)
            if store[layer] is not None:
                grown[:, : self.length] = store[layer][:, : self.length]
            store[layer] = grown
        self.storage_version += 1

    def addresses(self) -> BlockAddresses | None:
        """Every layer's K/V base address and capacity (None while a layer has no storage). Kernels are handed
        these in tables; they are read once per storage version, not once per forward."""
        if self._addresses is None or self._addresses[0] != self.storage_version:
            found = None
            if all(k is not None for k in self.keys):
                capacity = [k.shape[1] for k in self.keys]
                _check_aligned(self.name, self.keys + self.values)
                table = torch.tensor(
                    [[k.data_ptr() for k in self.keys], [v.data_ptr() for v in self.values], capacity],
                    dtype=torch.int64,
                )
                found = BlockAddresses(table, min(capacity), table.numpy())
            self._addresses = (self.storage_version, found)
        return self._addresses[1]

    def room(self) -> int:
        """Tokens that fit past ``length`` in the storage every layer already has (0 while a layer has none)."""
        found = self.addresses()
        return 0 if found is None else found.min_capacity - self.length

    def addresses_with_room(self) -> BlockAddresses | None:
        """`addresses` if every layer's storage already holds the visible tokens (those of the forward in
        flight included), else None: what a kernel handed the addresses may write and read."""
        found = self.addresses()
        return found if found is not None and found.min_capacity >= self.visible_length else None

    # -- writes from a forward pass -------------------------------------------------------------
    def start_write(self, token_ids: list[int]) -> None:
        if self.pending:
            raise RuntimeError(f"block {self.name!r} is already being written in this forward")
        self.pending = len(token_ids)
        self._pending_tokens = list(token_ids)

    def reserve_pending(self) -> None:
        """Grow every allocated layer to hold the pending tokens now, so addresses stay fixed during the
        forward (kernels read them from a table built once per forward)."""
        if self.addresses_with_room() is None:  # checked outside inference_mode: entering it costs ~10 us a row
            self._reserve_pending()

    @torch.inference_mode()
    def _reserve_pending(self) -> None:
        for layer in range(self.num_layers):
            if self.keys[layer] is not None:
                self._reserve(layer, self.length + self.pending, self.keys[layer])

    @torch.inference_mode()
    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store ``[kv_heads, pending, head_dim]`` keys/values of the forward in flight for one layer."""
        self._reserve(layer, self.length + keys.shape[1], keys)
        self.keys[layer][:, self.length : self.length + keys.shape[1]] = keys
        self.values[layer][:, self.length : self.length + keys.shape[1]] = values

    def finish_write(self) -> None:
        self.length += self.pending
        self.token_ids.extend(self._pending_tokens)
        self.pending, self._pending_tokens = 0, []

    def abort_write(self) -> None:
        self.pending, self._pending_tokens = 0, []

    # -- reads ----------------------------------------------------------------------------------
    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Visible ``(keys, values)``, each ``[kv_heads, visible_length, head_dim]``, or None if empty."""
        n = self.visible_length
        if n == 0 or self.keys[layer] is None:
            return None
        return self.keys[layer][:, :n], self.values[layer][:, :n]

    # -- moves ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def extend_from(self, other: KVBlock, rope: RotaryShift) -> None:
        """Append ``other``'s tokens, re-positioned (RoPE shift by ``self.length``), never recomputed."""
        if not self.prepare_extend(other):
            return
        stored = [layer for layer in range(self.num_layers) if other.keys[layer] is not None]
        if stored:  # one rotation for every layer
            cos, sin = rope.cos_sin(self.length, other.keys[stored[0]].device)
        for layer in stored:
            keys = other.keys[layer][:, : other.length].float()
            keys = (keys * cos + rotate_half(keys) * sin).to(other.keys[layer].dtype)
            self.keys[layer][:, self.length : self.length + other.length] = keys
            self.values[layer][:, self.length : self.length + other.length] = other.values[layer][:, : other.length]
        self.note_extended(other)

    @torch.inference_mode()
    def prepare_extend(self, other: KVBlock) -> bool:
        """Checks and storage for appending ``other``'s tokens: every layer ``other`` has grows to hold them.
        False when there is nothing to append."""
        if self.pending or other.pending:
            raise RuntimeError("cannot move blocks while a forward is writing them")
        if other.length == 0:
            return False
        for layer in range(self.num_layers):
            if other.keys[layer] is not None:
                self._reserve(layer, self.length + other.length, other.keys[layer])
        return True

    def note_extended(self, other: KVBlock) -> None:
        """Bookkeeping once ``other``'s K/V are stored after ``self.length``."""
        self.length += other.length
        self.token_ids.extend(other.token_ids)

    def truncate(self, length: int) -> None:
        """Forget every token from ``length`` on (storage is kept for reuse)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate block {self.name!r} of length {self.length} to {length}")
        self.length = length
        del self.token_ids[length:]

    def clear(self) -> None:
        self.truncate(0)

    def retract(self, count: int) -> None:
        """Hold back the last ``count`` tokens: forgotten like `truncate`, but their K/V stay where they are in
        storage, so `reinstate` can give them back unless the storage moved (a batch steps a generation before
        it has read that generation's last tokens, and takes the step back if the guess was wrong)."""
        self.truncate(self.length - count)

    def reinstate(self, token_ids: list[int]) -> None:
        """Give back tokens `retract` held back, with their ids now known; their K/V must still be in storage."""
        if len(token_ids) > self.room():  # addresses are kept per storage version: hundreds of rows per step
            raise RuntimeError(f"block {self.name!r}: no stored K/V to reinstate past length {self.length}")
        self.length += len(token_ids)
        self.token_ids.extend(token_ids)

    @torch.inference_mode()
    def copy(self, name: str | None = None) -> KVBlock:
        clone = KVBlock(name or self.name, self.num_layers)
        for layer in range(self.num_layers):
            if self.keys[layer] is not None:
                clone.keys[layer] = self.keys[layer][:, : self.length].clone()
                clone.values[layer] = self.values[layer][:, : self.length].clone()
        clone.length, clone.token_ids = self.length, list(self.token_ids)
        return clone
