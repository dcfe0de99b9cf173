"""Prefill attention in Triton over the paged cache: causal, variable query lengths, one launch.

The grid is (query tile x kv head), the last tiles first. A tile is up to BLOCK_Q consecutive query tokens of one sequence
times the GROUP query heads of one kv head, flattened into BLOCK_M = BLOCK_Q x GROUP rows (padded), so
each K/V load serves the whole group. The program reads the sequence's context through its block
table from position 0 (a cached prefix included: prefix caching, chunked prefill) up to its last
query's position, with an online softmax (flash attention). Query token j of sequence i sits at
position context_len - query_len + j and sees positions 0..that one.

Tiles come from the host-side query lengths (`plan_tiles`), so the grid is exact and rows of
query length 1 (decodes in a mixed batch) are just one-token tiles. A CUDA graph captured for a
padded query length keeps its tiles; those past the sequence's real length (read on the device)
do nothing.

The reference, and the CPU path, is the torch backend's attention.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from engine.attention.backend import Stage, copy_stage
from engine.attention.torch_backend import TorchAttentionBackend
from engine.attention.triton_decode import dot_precision
from engine.attention.triton_paged_loop import paged_softmax_loop
from engine.runner.forward_metadata import ForwardMetadata

LOG2E = math.log2(math.e)
DEFAULT_BLOCK_M = 64  # query rows (tokens x group heads) per program
DEFAULT_BLOCK_N = 64  # context tokens per loop iteration (loop_shape)


# per-step values: specialising on them (== 1, multiple of 16) would compile new variants mid-serving
@triton.jit(do_not_specialize=["num_tiles", "stride_bt"])
def _prefill_kernel(
    q_ptr,  # [T, H, d]
    cache_ptr,  # [2, num_slots, kv_heads, d] contiguous: keys, then values at v_offset
    out_ptr,  # [T, H, d]
    block_tables_ptr,  # [B, max_blocks] int32
    context_lens_ptr,  # [B] int32
    query_start_loc_ptr,  # [B + 1] int32
    tiles_ptr,  # [2, num_tiles] int32: each tile's sequence, then its first query index in that sequence
    num_tiles, num_kv_heads, scale_log2,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_bt, v_offset, stride_cache_slot, stride_cache_head, head_dim,
    GROUP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    # the last tiles first: a causal tile's work grows with its position, and the longest started
    # first leave the short ones to fill the multiprocessors at the end (longest-first scheduling)
    # (the kv heads of one tile side by side, so every head's longest tile starts in the first wave)
    kv_head = tl.program_id(0) % num_kv_heads
    tile = num_tiles - 1 - tl.program_id(0) // num_kv_heads
    seq = tl.load(tiles_ptr + tile)
    first = tl.load(tiles_ptr + num_tiles + tile)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    context_len = tl.load(context_lens_ptr + seq)
    prefix = context_len - q_len

    rows = tl.arange(0, BLOCK_M)
    j = first + rows // GROUP  # query index within the sequence
    heads = kv_head * GROUP + rows % GROUP
    row_mask = (rows < BLOCK_Q * GROUP) & (j < q_len)
    positions = prefix + j  # padding rows too see position 0, so no row's max stays -inf
    dims = tl.arange(0, D_PAD)
    dim_mask = dims < head_dim
    q = tl.load(q_ptr + (q_start + j)[:, None] * stride_qt + heads[:, None] * stride_qh + dims[None, :],
                mask=row_mask[:, None] & dim_mask[None, :], other=0.0)  # [BLOCK_M, D_PAD]

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    end = tl.minimum(prefix + tl.minimum(first + BLOCK_Q, q_len), context_len)  # past the tile's last position
    end = tl.where(first < q_len, end, 0)  # a tile past the queries (a captured graph's padding): no work
    table = block_tables_ptr + seq * stride_bt
    m, l, acc = paged_softmax_loop(
        q, m, l, acc, positions, cache_ptr, table, 0, end, kv_head, dims, dim_mask, scale_log2,
        v_offset, stride_cache_slot, stride_cache_head, BLOCK_SIZE, BLOCK_N, True, PRECISION,
    )

    out = acc / tl.where(l > 0, l, 1.0)[:, None]  # l is 0 only in a tile past the queries, whose rows are not stored
    dst = out_ptr + (q_start + j)[:, None] * stride_ot + heads[:, None] * stride_oh + dims[None, :]
    tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])


@dataclass(frozen=True)
class PrefillTiles:
    """The query tiles of one step for one BLOCK_Q: which sequence and first query index each covers."""

    block_q: int
    tiles: torch.Tensor  # [2, num_tiles] int32 on the device: sequence ids, then first query indices

    @property
    def num_tiles(self) -> int:
        return int(self.tiles.shape[1])


@functools.lru_cache(maxsize=None)
def loop_shape(device: torch.device, head_dim: int) -> tuple[int, int]:
    """(BLOCK_N, stages) of the context loop: 64 context tokens a round in 2 stages. H200 sweep
    (benchmarks/prefill_sweep.py, Qwen3-0.6B's heads) against 128 in 2, the earlier choice: a W256
    ramp step (11 fresh prompts, 7,723 tokens, beside 256 decodes) 432 -> 291 us a layer, two
    2,048-token chunks after 2,048 cached tokens 502 -> 337 us, a lone 1,024-token prompt 35.8 ->
    35.4 us. Masking only a tile's diagonal rounds (two loops) was slower in every case (a lone
    prompt 57 us at 128 in 2)."""
    return DEFAULT_BLOCK_N, 2


def tile_shape(group: int, block_m: int = DEFAULT_BLOCK_M) -> tuple[int, int]:
    """(BLOCK_Q, BLOCK_M): query tokens per tile and rows (tokens x group heads, padded) per program."""
    block_m = max(block_m, 16, 1 << (group - 1).bit_length())  # the next power of two, in plain Python
    return block_m // group, block_m


def plan_tiles(meta: ForwardMetadata, block_q: int, stage: Stage | None = None) -> PrefillTiles:
    """Cut each sequence's queries into tiles of block_q tokens, from the host-side query lengths.

    The tiles go to the device through `stage` (StepInputs': in the step's one copy); by default
    in a copy of their own.
    """
    if stage is None:
        stage = copy_stage(meta.query_start_loc.device)
    return PrefillTiles(block_q, stage(_tiles(tuple(meta.query_lens_cpu), block_q)))


@functools.lru_cache(maxsize=256)
def _tiles(query_lens: tuple[int, ...], block_q: int) -> np.ndarray:
    """[2, num_tiles] int32 (read-only: shared by every step of these query lengths, such as a
    captured prefill graph's replays, whose host lists are those of its capture)."""
    lens = np.asarray(query_lens, dtype=np.int64)
    counts = -(-lens // block_q)  # [B] tiles per sequence
    total = int(counts.sum())
    seqs = np.repeat(np.arange(len(lens)), counts)  # [num_tiles]
    firsts = (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)) * block_q
    tiles = np.stack([seqs, firsts]).astype(np.int32)
    tiles.flags.writeable = False
    return tiles


def prefill_attention(
    q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata, scale: float,
    tiles: PrefillTiles | None = None, block_m: int = DEFAULT_BLOCK_M, block_n: int | None = None,
    out: torch.Tensor | None = None, num_warps: int = 4, num_stages: int | None = None,
) -> torch.Tensor:
    """q [T, H, d] -> [T, H, d]: causal attention of every query over its sequence's cached context.

    Any mix of query lengths (decodes, prefills, chunks after a cached prefix). `tiles` (from
    plan_tiles with tile_shape's BLOCK_Q) may be given to share it between layers.
    """
    num_tokens, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, cache_dim = kv_cache.shape
    if block_n is None and num_stages is None:  # the measured pair for this device
        block_n, num_stages = loop_shape(q.device, head_dim)
    block_n, num_stages = block_n or DEFAULT_BLOCK_N, num_stages or 3
    _check(q, kv_cache, meta, block_size, num_kv_heads, cache_dim, block_n)
    group = num_heads // num_kv_heads
    block_q, block_m = tile_shape(group, block_m)
    if tiles is None:
        tiles = plan_tiles(meta, block_q)
    assert tiles.block_q == block_q, f"tiles cut for BLOCK_Q {tiles.block_q}, kernel uses {block_q}"
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    assert out.shape == q.shape and out.dtype == q.dtype and out.stride(2) == 1, "bad out tensor"
    if tiles.num_tiles == 0:
        return out
    tables = meta.block_tables
    _prefill_kernel[(tiles.num_tiles * num_kv_heads,)](
        q, kv_cache, out, tables, meta.context_lens, meta.query_start_loc, tiles.tiles,
        tiles.num_tiles, num_kv_heads, scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        tables.stride(0), kv_cache.stride(0), num_kv_heads * head_dim, head_dim, head_dim,
        GROUP=group, BLOCK_Q=block_q, BLOCK_M=block_m, D_PAD=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=block_size, BLOCK_N=block_n, PRECISION=dot_precision(q.dtype),
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


def _check(q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata,
           block_size: int, num_kv_heads: int, cache_dim: int, block_n: int) -> None:
    num_tokens, num_heads, head_dim = q.shape
    batch = meta.num_seqs
    tables, lens, starts = meta.block_tables, meta.context_lens, meta.query_start_loc
    assert kv_cache.dim() == 5 and kv_cache.shape[0] == 2 and kv_cache.is_contiguous(), \
        f"kv_cache {tuple(kv_cache.shape)} must be a contiguous [2, blocks, block_size, kv_heads, head_dim]"
    assert block_size == meta.block_size, f"cache block size {block_size} != meta.block_size {meta.block_size}"
    assert cache_dim == head_dim and num_heads % num_kv_heads == 0, \
        f"q heads/dim ({num_heads}, {head_dim}) do not fit cache kv heads/dim ({num_kv_heads}, {cache_dim})"
    assert q.dtype == kv_cache.dtype and q.dtype in (torch.float32, torch.bfloat16, torch.float16), \
        f"q {q.dtype} and cache {kv_cache.dtype} must share one of fp32/bf16/fp16"
    assert q.stride(2) == 1, "q needs a unit stride over head_dim"
    assert num_tokens == sum(meta.query_lens_cpu), f"q has {num_tokens} tokens, meta {sum(meta.query_lens_cpu)}"
    assert tables.dim() == 2 and tables.shape[0] == batch and tables.dtype == torch.int32, \
        f"block_tables {tuple(tables.shape)} {tables.dtype} is not [{batch}, max_blocks] int32"
    assert tables.stride(1) == 1, "block_tables rows must be contiguous"
    assert lens.shape == (batch,) and lens.dtype == torch.int32, f"context_lens {tuple(lens.shape)} {lens.dtype}"
    assert starts.shape == (batch + 1,) and starts.dtype == torch.int32, \
        f"query_start_loc {tuple(starts.shape)} {starts.dtype} is not [{batch + 1}] int32"
    assert block_n >= 16 and block_n & (block_n - 1) == 0, f"block_n {block_n} must be a power of two >= 16"
    assert q.device == kv_cache.device == tables.device == lens.device == starts.device, "tensors on different devices"


def ref_prefill_attention(q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata, scale: float) -> torch.Tensor:
    """The plain-torch attention, the CPU path: the torch backend's, for any mix of query lengths."""
    return TorchAttentionBackend().attend(q, kv_cache, meta, scale)
