"""Paged attention in plain torch: the CPU path, and the reference that Triton kernels must match.

Keys and values are gathered from the cache by slot index, then attended with torch's SDPA:
- decode sequences (query length 1) in one batched call, padded to the longest context and masked;
- every longer query (a prefill, or a prefill chunk after a cached prefix) on its own, with a causal
  mask whose diagonal is offset by the cached prefix (context_len - query_len).

Cache slots past a sequence's context may hold garbage, even NaN (a block's previous owner, or a
cache made with torch.empty). They never reach the output: the padded key positions of a decode
batch read the sequence's own first slot instead, and are masked out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.attention.backend import AttentionBackend
from engine.forward_metadata import ForwardMetadata


@dataclass
class DecodePlan:
    """The decode sequences of a step, batched."""

    rows: slice | torch.Tensor  # their query rows in q [T, ...]: a slice when consecutive
    kv_rows: torch.Tensor  # [2, Bd, L] int64 cache rows (see _kv_rows) of keys and values, L = longest context
    mask: torch.Tensor  # [Bd, 1, 1, L] bool, True where the key position < context_len


@dataclass
class PrefillPlan:
    """One sequence with a query longer than one token."""

    start: int  # its query rows are start:end
    end: int
    kv_rows: torch.Tensor  # [2, context_len] int64 cache rows (see _kv_rows) of its keys and values
    mask: torch.Tensor | None  # [query_len, context_len] bool; None when there is no cached prefix (plain causal)


@dataclass
class AttentionPlan:
    """Everything the layers of one step share: built at the first layer, reused by the others."""

    decode: DecodePlan | None
    prefills: list[PrefillPlan]


def build_plan(meta: ForwardMetadata, num_slots: int) -> AttentionPlan:
    """Split a step into decodes and prefills and compute their cache rows and masks.

    num_slots: cache slots per layer (num_blocks * block_size). Uses only the host-side lengths to
    decide shapes, so it never waits on the device.
    """
    starts = [0]
    for n in meta.query_lens_cpu:
        starts.append(starts[-1] + n)
    decodes = [i for i, n in enumerate(meta.query_lens_cpu) if n == 1]
    decode = _decode_plan(meta, decodes, [starts[i] for i in decodes], num_slots) if decodes else None
    prefills = [
        _prefill_plan(meta, i, starts[i], starts[i + 1], num_slots)
        for i, n in enumerate(meta.query_lens_cpu) if n > 1
    ]
    return AttentionPlan(decode, prefills)


def _as_index(ids: list[int], device: torch.device) -> slice | torch.Tensor:
    """A slice when ids are consecutive (a view instead of a gather), else an index tensor."""
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return slice(ids[0], ids[0] + len(ids))
    return torch.tensor(ids, dtype=torch.int64, device=device)


def _slots(tables: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    """tables [B, max_blocks] -> slots [B, length] of positions 0..length-1."""
    pos = torch.arange(length, device=tables.device)
    return tables[:, pos // block_size].long() * block_size + pos % block_size


def _kv_rows(slots: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Slots [...] -> [2, ...]: their rows in a layer's cache seen as [2 * num_slots, kv_heads * head_dim],
    the keys' then the values'. One index_select over dim 0 of that view gathers both, on every
    thread (over dim 1 of [2, num_slots, ...], torch gathers on one thread: 2-2.5x slower)."""
    return torch.stack([slots, slots + num_slots])


def _gather(kv_cache: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """kv_cache [2, num_blocks, block_size, kv_heads, d], rows [2, ...] from _kv_rows -> [2, ..., kv_heads, d]."""
    kv_heads, head_dim = kv_cache.shape[-2:]
    flat = kv_cache.view(-1, kv_heads * head_dim).index_select(0, rows.view(-1))
    return flat.view(*rows.shape, kv_heads, head_dim)


def _decode_plan(meta: ForwardMetadata, seqs: list[int], rows: list[int], num_slots: int) -> DecodePlan:
    device = meta.block_tables.device
    which = _as_index(seqs, device)
    length = max(meta.context_lens_cpu[i] for i in seqs)
    slots = _slots(meta.block_tables[which], length, meta.block_size)  # [Bd, L]
    valid = torch.arange(length, device=device) < meta.context_lens[which].unsqueeze(1)  # [Bd, L]
    # position 0 is always a real, written slot of the sequence: a safe stand-in for padding
    slots = torch.where(valid, slots, slots[:, :1])
    return DecodePlan(_as_index(rows, device), _kv_rows(slots, num_slots), valid[:, None, None, :])


def _prefill_plan(meta: ForwardMetadata, seq: int, start: int, end: int, num_slots: int) -> PrefillPlan:
    ctx, q_len = meta.context_lens_cpu[seq], end - start
    slots = _slots(meta.block_tables[seq:seq + 1], ctx, meta.block_size)[0]  # [ctx]
    mask = None
    if ctx != q_len:
        device = slots.device
        q_pos = torch.arange(ctx - q_len, ctx, device=device)  # positions of this step's queries
        mask = torch.arange(ctx, device=device) <= q_pos.unsqueeze(1)  # [q_len, ctx]
    return PrefillPlan(start, end, _kv_rows(slots, num_slots), mask)


class TorchAttentionBackend(AttentionBackend):
    """Paged attention with torch ops only: the CPU path, and the reference for faster backends."""

    name = "torch"

    def store_kv(self, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata) -> None:
        """Write k, v [T, kv_heads, head_dim] into the cache rows meta.slot_mapping."""
        num_kv_heads, head_dim = kv_cache.shape[-2:]
        kv_cache[0].view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
        kv_cache[1].view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)

    def plan(self, meta: ForwardMetadata, num_slots: int) -> AttentionPlan:
        """The step's plan, built once per ForwardMetadata object and shared by all layers."""
        return self.cached_plan(meta, num_slots, lambda: build_plan(meta, num_slots))

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata, scale: float) -> torch.Tensor:
        """q [T, heads, head_dim] -> [T, heads, head_dim], causal over each sequence's cached context."""
        plan = self.plan(meta, kv_cache.shape[1] * kv_cache.shape[2])
        if plan.decode is not None and not plan.prefills:  # pure decode: every row is a decode, in order
            return _attend_decode(q, kv_cache, plan.decode, scale)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if plan.decode is not None:
            out[plan.decode.rows] = _attend_decode(q[plan.decode.rows], kv_cache, plan.decode, scale)
        for p in plan.prefills:
            out[p.start:p.end] = _attend_prefill(q[p.start:p.end], kv_cache, p, scale)
        return out


def _attend_decode(q: torch.Tensor, kv_cache: torch.Tensor, plan: DecodePlan, scale: float) -> torch.Tensor:
    """q [Bd, heads, d] -> [Bd, heads, d], one query per sequence over its first context_len slots."""
    k, v = _gather(kv_cache, plan.kv_rows).transpose(2, 3)
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2), k, v, attn_mask=plan.mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1],
    )  # [Bd, heads, 1, d]; k, v: [Bd, kv_heads, L, d]
    return out.squeeze(2)


def _attend_prefill(q: torch.Tensor, kv_cache: torch.Tensor, plan: PrefillPlan, scale: float) -> torch.Tensor:
    """q [q_len, heads, d] of one sequence -> [q_len, heads, d], causal after its cached prefix."""
    k, v = _gather(kv_cache, plan.kv_rows).transpose(1, 2)  # [kv_heads, ctx, d] each
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k, v, attn_mask=plan.mask, is_causal=plan.mask is None, scale=scale,
        enable_gqa=q.shape[1] != k.shape[0],
    )  # [heads, q_len, d]
    return out.transpose(0, 1)
