"""Attention of each worker's new tokens over its ordered list of blocks (torch paths).

Two ways to compute the same thing:

* `attend_rotating_queries` -- the paper's fast design. Keys stay at block-local positions; for each block
  the queries are rotated by ``own_offset - block_offset`` and a partial softmax is computed; partials are
  merged by log-sum-exp. No key is touched, so a block shared by many workers is read, never copied.
* `attend_rotating_keys` -- the plain reference: rotate every block's keys into the worker's view,
  concatenate, run SDPA with a causal mask on the worker's own block.

Both take one worker ("row") at a time; the Triton kernel does all rows together.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from hogwild_bench.engine.blocks import KVBlock
from hogwild_bench.engine.rope import RotaryShift


@dataclass
class RowView:
    """One worker's view for one forward: the blocks in order and its new tokens.

    The worker writes into ``blocks[-1]``. Its ``n_new`` real tokens are the last ``n_new`` of the padded
    query length and sit at local positions ``own.length + write_offset ...`` of that block. ``write_offset``
    is 0 except where one write of several tokens runs as one-token rows (`token_rows`): row ``j`` of it
    carries the write's token ``j`` and sees its own block causally up to that token.
    """

    blocks: list[KVBlock]
    n_new: int
    write_offset: int = 0

    @property
    def own(self) -> KVBlock:
        return self.blocks[-1]

    @cached_property
    def offsets(self) -> list[int]:
        """Each block's offset in the view: the tokens visible before it. Computed when first asked (the
        torch paths ask; the Triton plan computes every row's offsets at once, vectorised), which is safe
        because a row lives for one forward, during which no visible length changes."""
        offsets, total = [], 0
        for block in self.blocks:
            offsets.append(total)
            total += block.visible_length
        return offsets

    def query_start(self, q_len: int) -> int:
        """Local position in the own block of the first of the ``q_len`` (left-padded) query slots."""
        return self.own.length + self.write_offset - (q_len - self.n_new)

    def query_local_positions(self, q_len: int, device: torch.device) -> torch.Tensor:
        """Local positions of the ``q_len`` (left-padded) query slots in the own block."""
        start = self.query_start(q_len)
        return torch.arange(start, start + q_len, device=device)


def token_rows(rows: list[RowView]) -> list[RowView]:
    """Each row as one row per new token: row ``j`` of a write sees the same blocks at the same offsets and
    its own block up to its token ``j`` (causal), which is what the multi-token row computes for that token.
    A forward of one-token rows can then replay from a decode graph, whatever number of tokens its writes
    carry (a step header, a collaboration prompt)."""
    return [row if row.n_new == 1 else RowView(row.blocks, 1, write_offset=j) for row in rows for j in range(row.n_new)]


def _own_block_mask(local_q: torch.Tensor, n_keys: int) -> torch.Tensor:
    """``[T, n_keys]`` True where a key of the own block is visible (causal in local positions)."""
    keys = torch.arange(n_keys, device=local_q.device)
    return keys[None, :] <= local_q[:, None]


def attend_rotating_queries(
    query: torch.Tensor, row: RowView, layer: int, rope: RotaryShift, scaling: float
) -> torch.Tensor:
    """``query [heads, T, D]`` (rotated at own-block-local positions) -> output ``[T, heads, D]``."""
    heads, q_len, dim = query.shape
    local_q = row.query_local_positions(q_len, query.device)
    own_offset = row.offsets[-1]
    outs, lses = [], []
    for index, (block, offset) in enumerate(zip(row.blocks, row.offsets)):
        kv = block.layer_kv(layer)
        if kv is None:
            continue
        keys, values = kv
        kv_heads = keys.shape[0]
        q = rope.rotate(query, own_offset - offset).float().view(kv_heads, heads // kv_heads, q_len, dim)
        scores = torch.einsum("hgtd,hld->hgtl", q, keys.float()) * scaling
        if index == len(row.blocks) - 1:
            scores = scores.masked_fill(~_own_block_mask(local_q, keys.shape[1]), float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)
        probs = torch.exp(scores - lse.nan_to_num(neginf=0.0)[..., None])
        outs.append(torch.einsum("hgtl,hld->hgtd", probs, values.float()))
        lses.append(lse)
    if not outs:
        return query.new_zeros(q_len, heads, dim)
    lses_t = torch.stack(lses)
    total = torch.logsumexp(lses_t, dim=0)
    weights = torch.exp(lses_t - total.nan_to_num(neginf=0.0)).nan_to_num(0.0)
    out = (weights[..., None] * torch.stack(outs)).sum(0)
    return out.reshape(heads, q_len, dim).transpose(0, 1).to(query.dtype)


def attend_rotating_keys(
    query: torch.Tensor, row: RowView, layer: int, rope: RotaryShift, scaling: float
) -> torch.Tensor:
    """Reference path: keys rotated into the view and concatenated, then SDPA. Same contract as above."""
    heads, q_len, dim = query.shape
    local_q = row.query_local_positions(q_len, query.device)
    keys, values, masks = [], [], []
    for index, (block, offset) in enumerate(zip(row.blocks, row.offsets)):
        kv = block.layer_kv(layer)
        if kv is None:
            continue
        k, v = kv
        keys.append(rope.rotate(k, offset))
        values.append(v)
        if index == len(row.blocks) - 1:
            masks.append(_own_block_mask(local_q, k.shape[1]))
        else:
            masks.append(torch.ones(q_len, k.shape[1], dtype=torch.bool, device=query.device))
    if not keys:
        return query.new_zeros(q_len, heads, dim)
    k, v, mask = torch.cat(keys, dim=1), torch.cat(values, dim=1), torch.cat(masks, dim=1)
    groups = heads // k.shape[0]
    k, v = k.repeat_interleave(groups, dim=0), v.repeat_interleave(groups, dim=0)
    q = rope.rotate(query, row.offsets[-1])
    out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, scale=scaling)[0]
    out = out.nan_to_num(0.0)  # query slots with nothing visible (left padding) are zeroed
    return out.transpose(0, 1)
