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
from itertools import accumulate

import numpy as np
import torch
import torch.nn.functional as F

from engine.attention.backend import AttentionBackend, AttentionShape, Stage
from engine.runner.forward_metadata import ForwardMetadata, cache_slots


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
    """Everything the layers of one step share: built with the step's metadata, read by every layer."""

    num_slots: int  # of the cache it was made for
    decode: DecodePlan | None
    prefills: list[PrefillPlan]


@dataclass(frozen=True)
class PlanOutline:
    """A plan's host-side half: which rows decode, which prefill (before the step's copy)."""

    num_slots: int
    decode: tuple[slice | torch.Tensor, slice | torch.Tensor, int] | None  # (sequences, query rows, longest context)
    prefills: list[tuple[int, int, int]]  # (sequence, first query row, end row) of each longer query


def outline_plan(meta: ForwardMetadata, num_slots: int, stage: Stage) -> PlanOutline:
    """Split a step into decodes and prefills from its host-side lengths alone (no device read)."""
    starts = list(accumulate(meta.query_lens_cpu, initial=0))
    decodes = [i for i, n in enumerate(meta.query_lens_cpu) if n == 1]
    decode = None
    if decodes:
        length = max(meta.context_lens_cpu[i] for i in decodes)
        decode = (_as_index(decodes, stage), _as_index([starts[i] for i in decodes], stage), length)
    prefills = [(i, starts[i], starts[i + 1]) for i, n in enumerate(meta.query_lens_cpu) if n > 1]
    return PlanOutline(num_slots, decode, prefills)


def complete_plan(outline: PlanOutline, meta: ForwardMetadata) -> AttentionPlan:
    """The cache rows and masks, computed on the device from the step's block tables and lengths."""
    decode = _decode_plan(meta, *outline.decode, outline.num_slots) if outline.decode else None
    prefills = [_prefill_plan(meta, seq, start, end, outline.num_slots) for seq, start, end in outline.prefills]
    return AttentionPlan(outline.num_slots, decode, prefills)


def _as_index(ids: list[int], stage: Stage) -> slice | torch.Tensor:
    """A slice when ids are consecutive (a view instead of a gather), else an int64 index tensor."""
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return slice(ids[0], ids[0] + len(ids))
    return stage(np.array(ids, dtype=np.int64))


def _slots(tables: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    """tables [B, max_blocks] -> slots [B, length] of positions 0..length-1."""
    return cache_slots(tables, slice(None), torch.arange(length, device=tables.device), block_size)


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


def _decode_plan(meta: ForwardMetadata, which: slice | torch.Tensor, rows: slice | torch.Tensor, length: int,
                 num_slots: int) -> DecodePlan:
    device = meta.block_tables.device
    slots = _slots(meta.block_tables[which], length, meta.block_size)  # [Bd, L]
    valid = torch.arange(length, device=device) < meta.context_lens[which].unsqueeze(1)  # [Bd, L]
    # position 0 is always a real, written slot of the sequence: a safe stand-in for padding
    slots = torch.where(valid, slots, slots[:, :1])
    return DecodePlan(rows, _kv_rows(slots, num_slots), valid[:, None, None, :])


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

    def plan(self, meta: ForwardMetadata, shape: AttentionShape, stage: Stage) -> PlanOutline:
        """The host half of the step's plan: decode and prefill rows (index tensors staged)."""
        return outline_plan(meta, shape.num_slots, stage)

    def finish_plan(self, plan: PlanOutline, meta: ForwardMetadata) -> AttentionPlan:
        """The device half: cache rows and masks from meta's block tables and context lengths."""
        return complete_plan(plan, meta)

    def fits(self, plan: object, q: torch.Tensor, kv_cache: torch.Tensor) -> bool:
        return isinstance(plan, AttentionPlan) and plan.num_slots == kv_cache.shape[1] * kv_cache.shape[2]

    @staticmethod
    def max_staged_bytes(max_tokens: int, max_seqs: int) -> int:
        return 2 * 8 * max_seqs  # decode sequences and their rows, int64 each

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata, scale: float,
               k: torch.Tensor | None = None, v: torch.Tensor | None = None) -> torch.Tensor:
        """q [T, heads, head_dim] -> [T, heads, head_dim], causal over each sequence's cached context
        (read from the cache: k and v are not used)."""
        plan = self.step_plan(meta, q, kv_cache)
        if plan.decode is not None and not plan.prefills:  # pure decode: every row is a decode, in order
            return _attend_decode(q, kv_cache, plan.decode, scale)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if plan.decode is not None:
            out[plan.decode.rows] = _attend_decode(q[plan.decode.rows], kv_cache, plan.decode, scale)
        for p in plan.prefills:
            out[p.start:p.end] = _attend_prefill(q[p.start:p.end], kv_cache, p, scale)
        return out

    def attend_unstored(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
        meta: ForwardMetadata, scale: float,
    ) -> torch.Tensor:
        plan = self.step_plan(meta, q, kv_cache)
        if plan.prefills or plan.decode is None or plan.decode.rows != slice(0, q.shape[0]):
            raise ValueError("unstored attention takes pure-decode steps only")
        return _attend_decode(q, kv_cache, plan.decode, scale, (k, v, meta.context_lens))


def _attend_decode(q: torch.Tensor, kv_cache: torch.Tensor, plan: DecodePlan, scale: float,
                   newest: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """q [Bd, heads, d] -> [Bd, heads, d], one query per sequence over its first context_len slots.

    newest: (k, v [Bd, kv_heads, d], context_lens [Bd]) of tokens not stored yet, read in place of
    the cache at each sequence's last position."""
    if torch.compiler.is_compiling():  # a compiled decode step (engine/runner/compiled_decode.py)
        return _attend_decode_fused(q, kv_cache, plan, scale, newest)
    kv = _gather(kv_cache, plan.kv_rows)  # [2, Bd, L, kv_heads, d]
    if newest is not None:
        k_new, v_new, context_lens = newest
        last = torch.arange(kv.shape[2], device=kv.device) == (context_lens[:, None] - 1)  # [Bd, L]
        kv = torch.where(last[None, :, :, None, None], torch.stack([k_new, v_new])[:, :, None], kv)
    k, v = kv.transpose(2, 3)
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2), k, v, attn_mask=plan.mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1],
    )  # [Bd, heads, 1, d]; k, v: [Bd, kv_heads, L, d]
    return out.squeeze(2)


def _attend_decode_fused(q: torch.Tensor, kv_cache: torch.Tensor, plan: DecodePlan, scale: float,
                         newest: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """_attend_decode as products, a softmax and sums over the cache rows, for torch.compile: inductor
    fuses them into loops that read the context through its rows, with no copy of it and no SDPA
    call. Eager, the same expressions would build [Bd, L, heads, d] products in memory.

    On the embedded model at int4, compiled (2-core Xeon), the gather and SDPA took 2.7 ms of a
    16.5 ms decode step (90 us a layer); this made single-request decode 6-14% faster and 16 prompts
    8-13% (A/B in one process, four and three rounds)."""
    bd, heads, d = q.shape
    kv_heads = kv_cache.shape[-2]
    group = heads // kv_heads
    flat = kv_cache.view(-1, kv_heads, d)  # [2 * num_slots, kv_heads, d]
    k, v = flat[plan.kv_rows[0]], flat[plan.kv_rows[1]]  # [Bd, L, kv_heads, d]
    length = k.shape[1]
    if newest is not None:
        k_new, v_new, context_lens = newest
        last = (torch.arange(length, device=q.device) == (context_lens[:, None] - 1))[:, :, None, None]
        k = torch.where(last, k_new[:, None], k)
        v = torch.where(last, v_new[:, None], v)
    valid = plan.mask.view(bd, length, 1, 1)
    qg = q.view(bd, 1, kv_heads, group, d).float()
    scores = (qg * k[:, :, :, None, :].float()).sum(-1) * scale  # [Bd, L, kv_heads, group]
    probs = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=1)
    # padding rows read a stand-in slot, which (a one-token context's, unstored) may hold anything
    v = torch.where(valid, v, 0)
    out = (probs[..., None] * v[:, :, :, None, :].float()).sum(1)  # [Bd, kv_heads, group, d]
    return out.view(bd, heads, d).to(q.dtype)


def _attend_prefill(q: torch.Tensor, kv_cache: torch.Tensor, plan: PrefillPlan, scale: float) -> torch.Tensor:
    """q [q_len, heads, d] of one sequence -> [q_len, heads, d], causal after its cached prefix."""
    k, v = _gather(kv_cache, plan.kv_rows).transpose(1, 2)  # [kv_heads, ctx, d] each
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k, v, attn_mask=plan.mask, is_causal=plan.mask is None, scale=scale,
        enable_gqa=q.shape[1] != k.shape[0],
    )  # [heads, q_len, d]
    return out.transpose(0, 1)
