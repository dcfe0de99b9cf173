"""Paged decode attention in Triton: one query token per sequence, split over the KV length.

Flash-decoding: the grid is (sequence, kv head, split). Each program reads its split's range of the
context through the block table once and serves all GROUP query heads of its kv head with it (a
[GROUP_PAD, d] x [d, BLOCK_N] dot, GROUP padded up to 16 for tl.dot). Each split leaves a partial
output and its log-sum-exp; a second kernel combines them. With one split the first kernel writes
the output directly and no second kernel runs.

The number of splits depends only on the batch size, the kv heads and the block tables' width, never
on the context lengths, so a CUDA graph captured for one (batch, max_blocks) stays valid whatever the
lengths. Inside the kernel the splits divide each sequence's own context evenly (whole BLOCK_N tiles),
so a short context in a wide, graph-padded table still spreads over all of them; a split with nothing
left exits after writing an empty partial. A sequence with context length 0 (a padding row of a
captured batch) gets a zero output.

The reference, and the CPU path, is the torch backend's decode attention.
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from engine.attention.torch_backend import TorchAttentionBackend
from engine.attention.triton_paged_loop import paged_softmax_loop
from engine.runner.forward_metadata import ForwardMetadata

LOG2E = math.log2(math.e)
PROGRAMS_PER_SM = 2  # enough programs in flight to hide load latency (H100 sweep: 2 beats 1 and 4)
MAX_SPLITS = 32
DEFAULT_BLOCK_N = 64  # context tokens per loop iteration (several pages when the block size is 16)
# ... and from WIDE_BATCH sequences on, 128: fewer, longer rounds. H200 sweep (benchmarks/decode_sweep.py,
# contexts 100-1,536): 256 sequences 231 -> 227 us, 128: 131 -> 124, 64: 78 -> 74, 32: 65 -> 48 (3 stages, the default)
WIDE_BLOCK_N, WIDE_BATCH = 128, 32


# per-step values: specialising on them (== 1, multiple of 16) would compile new variants mid-serving
@triton.jit(do_not_specialize=["stride_bt", "num_splits"])
def _decode_split_kernel(
    q_ptr,  # [B, H, d]
    cache_ptr,  # [2, num_slots, kv_heads, d] contiguous: keys, then values at v_offset
    block_tables_ptr,  # [B, max_blocks] int32
    context_lens_ptr,  # [B] int32
    out_ptr,  # DIRECT: the output [B, H, d] (strides stride_ob, stride_oh); else partial outputs
    # [B, H, num_splits, d] fp32 contiguous
    lse_ptr,  # [B, H, num_splits] fp32 log2-sum-exp of each split's scores (unused when DIRECT)
    scale_log2,  # softmax scale * log2(e): scores are kept in base 2
    stride_qb, stride_qh, stride_ob, stride_oh,
    stride_bt, v_offset, stride_cache_slot, stride_cache_head,
    num_heads, head_dim, num_splits,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, DIRECT: tl.constexpr, PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    context_len = tl.load(context_lens_ptr + seq)
    # the splits share this sequence's own context evenly (not the table's width), in whole tiles
    split_len = ((context_len + BLOCK_N - 1) // BLOCK_N + num_splits - 1) // num_splits * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, context_len)

    rows = tl.arange(0, GROUP_PAD)  # query heads of this kv head, padded
    heads = kv_head * GROUP + rows
    dims = tl.arange(0, D_PAD)
    row_mask = rows < GROUP
    dim_mask = dims < head_dim
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :],
                mask=row_mask[:, None] & dim_mask[None, :], other=0.0)  # [GROUP_PAD, D_PAD]

    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)  # running max (base-2 scores)
    l = tl.zeros([GROUP_PAD], tl.float32)  # running sum of exp2(score - m)
    acc = tl.zeros([GROUP_PAD, D_PAD], tl.float32)
    table = block_tables_ptr + seq * stride_bt
    m, l, acc = paged_softmax_loop(
        q, m, l, acc, rows, cache_ptr, table, start, end, kv_head, dims, dim_mask, scale_log2,
        v_offset, stride_cache_slot, stride_cache_head, BLOCK_SIZE, BLOCK_N, False, PRECISION,
    )

    l_safe = tl.where(l > 0, l, 1.0)  # an empty split (or context) leaves acc = 0
    out = acc / l_safe[:, None]
    out_mask = row_mask[:, None] & dim_mask[None, :]
    if DIRECT:
        dst = out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :]
        tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        part = (seq * num_heads + heads) * num_splits + split  # [GROUP_PAD] rows of the contiguous scratch
        tl.store(out_ptr + part[:, None] * head_dim + dims[None, :], out, mask=out_mask)
        lse = m + tl.log2(l_safe)  # -inf for an empty split
        tl.store(lse_ptr + part, lse, mask=row_mask)


@triton.jit(do_not_specialize=["num_splits"])
def _decode_combine_kernel(
    partial_ptr,  # [B, H, num_splits, d] fp32
    lse_ptr,  # [B, H, num_splits] fp32
    out_ptr,  # [B, H, d]
    stride_ob, stride_oh, num_heads, num_splits, head_dim,
    SPLITS_PAD: tl.constexpr, D_PAD: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    row = seq * num_heads + head
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, D_PAD)
    split_mask = splits < num_splits
    dim_mask = dims < head_dim
    lse = tl.load(lse_ptr + row * num_splits + splits, mask=split_mask, other=float("-inf"))
    top = tl.max(lse, 0)
    top = tl.where(top == float("-inf"), 0.0, top)  # all splits empty: context length 0
    w = tl.exp2(lse - top)  # 0 for empty splits
    part = tl.load(partial_ptr + (row * num_splits + splits)[:, None] * head_dim + dims[None, :],
                   mask=split_mask[:, None] & dim_mask[None, :], other=0.0)
    total = tl.sum(w, 0)
    out = tl.sum(part * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty), mask=dim_mask)


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: few programs keep it fast


def default_block_n(batch: int, elem_bytes: int = 2, head_dim: int = 128) -> int:
    """Context tokens per round of the decode kernel for a batch of this many sequences, of values
    elem_bytes wide: 128 only where a round's keys and values take what 16-bit ones of head_dim 128
    do (the pipeline keeps several rounds in shared memory; fp32 or wider heads would not fit)."""
    fits = elem_bytes * triton.next_power_of_2(head_dim) <= 2 * 128
    return WIDE_BLOCK_N if batch >= WIDE_BATCH and fits else DEFAULT_BLOCK_N


def choose_num_splits(batch: int, num_kv_heads: int, max_blocks: int, block_size: int,
                      device: torch.device, block_n: int | None = None) -> int:
    """Splits per sequence so that batch x kv_heads x splits programs fill the GPU about twice over.

    Depends only on shapes (never on context lengths): fixed for a captured (batch, max_blocks).
    `block_n` only bounds the splits by the longest context's rounds (by default 16-bit values':
    a launch in shorter rounds may leave a split empty, which is harmless).
    """
    block_n = block_n or default_block_n(batch)
    tiles = triton.cdiv(max_blocks * block_size, block_n)  # iterations of the longest possible context
    wanted = triton.cdiv(PROGRAMS_PER_SM * _num_sms(device), max(1, batch * num_kv_heads))
    return max(1, min(wanted, tiles, MAX_SPLITS))


def decode_attention(
    q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata, scale: float,
    num_splits: int | None = None, block_n: int | None = None, out: torch.Tensor | None = None,
    num_warps: int = 4, num_stages: int | None = None,
) -> torch.Tensor:
    """q [B, H, d], one token per sequence -> [B, H, d], each over its meta.context_lens[i] cached tokens.

    Reads meta.block_tables [B, max_blocks] int32 and meta.context_lens [B] int32 on the device only.
    No host sync and no value-dependent allocation: capturable in a CUDA graph.
    """
    batch, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, cache_dim = kv_cache.shape
    tables, lens = meta.block_tables, meta.context_lens
    block_n = block_n or default_block_n(batch, q.element_size(), head_dim)
    _check(q, kv_cache, tables, lens, block_size, meta.block_size, num_kv_heads, cache_dim, block_n)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    assert out.shape == q.shape and out.dtype == q.dtype and out.stride(2) == 1, "bad out tensor"
    if batch == 0:
        return out
    max_blocks = tables.shape[1]
    if num_splits is None:
        num_splits = choose_num_splits(batch, num_kv_heads, max_blocks, block_size, q.device, block_n)
    group = num_heads // num_kv_heads
    d_pad = triton.next_power_of_2(head_dim)
    direct = num_splits == 1
    if direct:
        partial, lse = out, out  # the output itself; lse unused
    else:  # scratch sized by shapes alone; under capture it comes from the graph's pool
        partial = torch.empty(batch, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        lse = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=q.device)
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, kv_cache, tables, lens, partial, lse, scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        tables.stride(0), kv_cache.stride(0), num_kv_heads * head_dim, head_dim,
        num_heads, head_dim, num_splits,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), D_PAD=d_pad,
        BLOCK_SIZE=block_size, BLOCK_N=block_n, DIRECT=direct, PRECISION=dot_precision(q.dtype),
        num_warps=num_warps, **({} if num_stages is None else {"num_stages": num_stages}),
    )
    if not direct:
        _decode_combine_kernel[(batch, num_heads)](
            partial, lse, out, out.stride(0), out.stride(1), num_heads, num_splits, head_dim,
            SPLITS_PAD=triton.next_power_of_2(num_splits), D_PAD=d_pad, num_warps=1,
        )
    return out


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 dots in full precision (tl.dot would use tf32 on the GPU); 16-bit types ignore it."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _check(q: torch.Tensor, kv_cache: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor,
           block_size: int, meta_block_size: int, num_kv_heads: int, cache_dim: int, block_n: int) -> None:
    batch, num_heads, head_dim = q.shape
    assert kv_cache.dim() == 5 and kv_cache.shape[0] == 2 and kv_cache.is_contiguous(), \
        f"kv_cache {tuple(kv_cache.shape)} must be a contiguous [2, blocks, block_size, kv_heads, head_dim]"
    assert block_size == meta_block_size, f"cache block size {block_size} != meta.block_size {meta_block_size}"
    assert cache_dim == head_dim and num_heads % num_kv_heads == 0, \
        f"q heads/dim ({num_heads}, {head_dim}) do not fit cache kv heads/dim ({num_kv_heads}, {cache_dim})"
    assert q.dtype == kv_cache.dtype and q.dtype in (torch.float32, torch.bfloat16, torch.float16), \
        f"q {q.dtype} and cache {kv_cache.dtype} must share one of fp32/bf16/fp16"
    assert q.stride(2) == 1, "q needs a unit stride over head_dim"
    assert tables.dim() == 2 and tables.shape[0] == batch and tables.dtype == torch.int32, \
        f"block_tables {tuple(tables.shape)} {tables.dtype} is not [{batch}, max_blocks] int32"
    assert tables.stride(1) == 1, "block_tables rows must be contiguous"
    assert lens.shape == (batch,) and lens.dtype == torch.int32, f"context_lens {tuple(lens.shape)} {lens.dtype}"
    assert block_n >= 16 and block_n & (block_n - 1) == 0, f"block_n {block_n} must be a power of two >= 16"
    assert q.device == kv_cache.device == tables.device == lens.device, "tensors on different devices"


def ref_decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata, scale: float) -> torch.Tensor:
    """The plain-torch decode attention, the CPU path: the torch backend on a pure-decode step."""
    assert meta.is_pure_decode, "decode attention takes one query token per sequence"
    return TorchAttentionBackend().attend(q, kv_cache, meta, scale)
