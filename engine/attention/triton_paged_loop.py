"""The loop both Triton attention kernels share: online softmax over a range of paged context.

A @triton.jit helper, inlined into each kernel. It reads context tokens start..end-1 of one
sequence through its block table, BLOCK_N at a time, for one kv head, and folds them into the
running max `m`, sum `l` and output `acc` of the query rows `q` (scores in base 2). With CAUSAL, row
r only sees tokens at or before positions[r]; without, every token in range.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def paged_softmax_loop(
    q, m, l, acc,  # [R, D_PAD] queries; [R] running max and sum; [R, D_PAD] fp32 running output
    positions,  # [R] position of each query row (read only when CAUSAL)
    cache_ptr, table, start, end, kv_head, dims, dim_mask, scale_log2,
    v_offset, stride_cache_slot, stride_cache_head,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
):
    for n0 in range(start, end, BLOCK_N):
        tokens = n0 + tl.arange(0, BLOCK_N)
        token_mask = tokens < end
        page = tl.load(table + tokens // BLOCK_SIZE, mask=token_mask, other=0).to(tl.int64)
        offs = (page * BLOCK_SIZE + tokens % BLOCK_SIZE) * stride_cache_slot + kv_head * stride_cache_head
        kv_mask = token_mask[:, None] & dim_mask[None, :]  # masked slots read 0: a NaN there never spreads
        k = tl.load(cache_ptr + offs[:, None] + dims[None, :], mask=kv_mask, other=0.0)  # [BLOCK_N, D_PAD]
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # [R, BLOCK_N]
        visible = token_mask[None, :]
        if CAUSAL:
            visible = visible & (tokens[None, :] <= positions[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))  # finite: every row sees at least one token of the range
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        v = tl.load(cache_ptr + v_offset + offs[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    return m, l, acc
