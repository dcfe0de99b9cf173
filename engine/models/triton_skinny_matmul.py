"""x @ W.T for the few rows of a small decode step, in Triton: every weight byte read once, at the
memory's pace.

A decode step of one to a few sequences multiplies 1..16 rows by each projection. cuBLAS picks
tiles made for wide products and, measured on an H200 with Qwen3-0.6B's shapes (profile_step.py),
reads the weights at 1.0-1.5 TB/s there: at one sequence, the projections are 0.8 of the step's
1.27 ms of kernels, and o_proj's [1,024 x 2,048] ran at 0.33 TB/s. Here each program owns
BLOCK_N output columns and streams their rows of W along K (coalesced, pipelined), multiplying
them against all rows of x at once (tl.dot, the rows padded to 16): the weight is read once,
whatever the number of rows. A narrow layer cuts K in chunks too, so that enough programs stream
at once; a second kernel adds their fp32 sums up in a fixed order (the same result every run, as
the equality of greedy outputs across runs needs; atomics would not give that).

Measured (H200, one row, in CUDA graphs): o_proj 12.8 -> 4.6 us, down_proj 6.3 -> 4.9, the fused
QKV 4.0 -> 3.9, gate-up 5.0 -> 4.5; at 16 rows cuBLAS's gate-up is 0.4 us faster, the sum still
lower. Small layers stay far from the 4.8 TB/s the memory gives: a launch and its ramp cost about
2-3 us whatever the bytes.

Two launches fewer a layer, where a step's time is mostly launches: `skinny_silu_mul` multiplies a
fused gate-up weight's gate and up halves in the same program and writes silu(gate) * up (no
silu_and_mul kernel), and `defer_sum` leaves a split product's chunk sums to the add_rms_norm that
follows (triton_rmsnorm adds them up in the sum kernel's order). Single-stream decode of
Qwen3-0.6B's shape on an H200 (benchmarks/gpu_w256.py, A/B in one session): 855-862 -> 934-944 tok/s.

The reference is F.linear (layers.Linear's path everywhere else); products accumulate in fp32, in
another order than cuBLAS's, so the two agree to a unit or so in the last place of bf16.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from engine.models.layers import silu_and_mul as ref_silu_and_mul

MAX_ROWS = 16  # rows up to which this kernel runs (tl.dot's smallest M tile): a decode step's few sequences


@triton.jit
def _skinny_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr,  # x [M, K], w [N, K], bias [N] (if HAS_BIAS), out [M, N] or [SPLIT, M, N] fp32
    M, N, K, k_chunk, stride_x, stride_w, stride_o,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, PARTIAL: tl.constexpr, GLU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program (n, s): output columns n * BLOCK_N.., over K's s-th chunk of k_chunk (all of K when
    not PARTIAL); PARTIAL writes its fp32 sums at out[s], for _sum_splits to add up.

    GLU: w is a fused gate-up [2N, K]; the program also multiplies the up rows N + its columns and
    writes silu(gate) * up [M, N], rounded as the two unfused kernels round (the product to the
    dtype, then silu(gate) to the dtype before the multiply)."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = tl.program_id(1) * k_chunk
    k_end = tl.minimum(k_start + k_chunk, K)
    rows = tl.arange(0, BLOCK_M)
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rows[:, None] * stride_x + ks[None, :]
    w_ptrs = w_ptr + cols.to(tl.int64)[:, None] * stride_w + ks[None, :]
    row_ok = rows[:, None] < M
    col_ok = cols[:, None] < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        k_ok = (k + ks)[None, :] < k_end
        x = tl.load(x_ptrs + k, mask=row_ok & k_ok, other=0.0)
        w = tl.load(w_ptrs + k, mask=col_ok & k_ok, other=0.0)
        if IEEE:  # fp32 weights: full fp32 products, not tf32
            acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w), acc)
        if GLU:
            w = tl.load(w_ptrs + N * stride_w + k, mask=col_ok & k_ok, other=0.0)
            if IEEE:
                up = tl.dot(x, tl.trans(w), up, input_precision="ieee")
            else:
                up = tl.dot(x, tl.trans(w), up)
    if GLU:
        dtype = out_ptr.dtype.element_ty
        gate = acc.to(dtype).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        acc = act * up.to(dtype).to(tl.float32)
    out_mask = row_ok & (cols[None, :] < N)
    if PARTIAL:
        dst = out_ptr + tl.program_id(1) * M * N + rows[:, None] * N + cols[None, :]
        tl.store(dst, acc, mask=out_mask)
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rows[:, None] * stride_o + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _sum_splits_kernel(part_ptr, b_ptr, out_ptr, M, N, stride_o,
                       SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """out[m, n] = sum over s of part[s, m, n] (in order: the same sum every run) + bias[n]."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < M * N
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT):
        total += tl.load(part_ptr + s * M * N + idx, mask=ok, other=0.0)
    n = idx % N
    if HAS_BIAS:
        total += tl.load(b_ptr + n, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + (idx // N) * stride_o + n, total.to(out_ptr.dtype.element_ty), mask=ok)


class Tiling(NamedTuple):
    block_n: int  # output columns per program (16 at least: tl.dot's smallest N tile)
    block_k: int
    split: int  # K cut in this many chunks, summed by a second kernel (1: no second kernel)
    warps: int = 4
    stages: int = 4


PROGRAMS = 128  # about one per multiprocessor (an H100 has 132, an H200 too)


def tiling(n: int, k: int) -> Tiling:
    """About PROGRAMS programs, each streaming a tile of W: wide layers (a fused QKV or gate-up) in
    column tiles over all of K, narrow ones (o_proj, down_proj: N of 1,024 and K up to 3,072) in
    fewer columns cut along K. Chosen from a sweep on an H200 over Qwen3-0.6B's four shapes
    (benchmarks/profile_step.py), where it was within 10% of the sweep's best at one row."""
    block_n = 32 if n <= 4096 else 64
    split = max(1, min(8, round(PROGRAMS / triton.cdiv(n, block_n)), k // 256))
    return Tiling(block_n, 128, split)


class SplitSums(NamedTuple):
    """A skinny product left as the fp32 sums of its K chunks, for its consumer to add up in the same
    fixed order as _sum_splits (add_rms_norm does, in the pass it makes anyway: one launch fewer)."""

    parts: torch.Tensor  # [split, M, N] fp32
    bias: torch.Tensor | None  # [N], added after the sum
    dtype: torch.dtype  # of the product the sums stand for

    def total(self) -> torch.Tensor:
        """The product [M, N] in its dtype, as skinny_linear returns it."""
        split, m, n = self.parts.shape
        out = torch.empty((m, n), dtype=self.dtype, device=self.parts.device)
        _sum_splits_kernel[(triton.cdiv(m * n, 1024),)](
            self.parts, self.bias if self.bias is not None else self.parts, out, m, n, out.stride(0),
            SPLIT=split, HAS_BIAS=self.bias is not None, BLOCK=1024,
        )
        return out


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    m, k = x.shape
    assert 0 < m <= MAX_ROWS, f"{m} rows: the skinny kernel takes 1..{MAX_ROWS}"
    assert weight.shape[1] == k and x.stride(1) == 1 and weight.stride(1) == 1, "x and W need unit stride along K"


def _launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dest: torch.Tensor, n: int,
            chunk: int, split: int, tile: Tiling, block_n: int, glu: bool) -> None:
    m, k = x.shape
    _skinny_kernel[(triton.cdiv(n, block_n), split)](
        x, weight, bias if bias is not None else weight, dest, m, n, k, chunk, x.stride(0), weight.stride(0),
        dest.stride(-2), HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32, PARTIAL=split > 1, GLU=glu,
        BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=tile.block_k, num_warps=tile.warps,
        num_stages=tile.stages if x.element_size() == 2 else 2,  # fp32 tiles: twice the shared memory a stage
    )


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  tile: Tiling | None = None, defer_sum: bool = False) -> torch.Tensor | SplitSums:
    """x [M, K] (M <= MAX_ROWS, unit stride along K) @ weight.T [N, K] (+ bias) -> a new [M, N].

    defer_sum: where K is cut in chunks, return their SplitSums instead of adding them up here."""
    _check(x, weight)
    m, k = x.shape
    n = weight.shape[0]
    tile = tile or tiling(n, k)
    chunk = triton.cdiv(triton.cdiv(k, tile.split), tile.block_k) * tile.block_k
    split = triton.cdiv(k, chunk)
    if split == 1:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
        _launch(x, weight, bias, out, n, chunk, 1, tile, tile.block_n, glu=False)
        return out
    sums = SplitSums(torch.empty((split, m, n), dtype=torch.float32, device=x.device), bias, x.dtype)
    _launch(x, weight, None, sums.parts, n, chunk, split, tile, tile.block_n, glu=False)
    return sums if defer_sum else sums.total()


def skinny_silu_mul(x: torch.Tensor, weight: torch.Tensor, tile: Tiling | None = None) -> torch.Tensor | None:
    """silu(x @ gate.T) * (x @ up.T) -> a new [M, I], from a fused gate-up weight [2I, K] (gate rows,
    then up), in one launch: silu_and_mul(skinny_linear(x, weight)) without the [M, 2I] round trip.
    The tiles of skinny_linear's over [2I, K], each cut into its gate and its up half; None where
    those tiles cut K in chunks (silu needs whole sums): the caller runs the two kernels then."""
    _check(x, weight)
    m, k = x.shape
    assert weight.shape[0] % 2 == 0, f"weight {tuple(weight.shape)} is not a fused [2I, K]"
    inter = weight.shape[0] // 2
    tile = tile or tiling(2 * inter, k)
    if tile.split > 1 or tile.block_n < 32:
        return None
    out = torch.empty((m, inter), dtype=x.dtype, device=x.device)
    _launch(x, weight, None, out, inter, k, 1, tile, tile.block_n // 2, glu=True)
    return out


def ref_skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def ref_skinny_silu_mul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return ref_silu_and_mul(F.linear(x, weight))


__all__ = ["MAX_ROWS", "SplitSums", "Tiling", "ref_skinny_linear", "ref_skinny_silu_mul", "skinny_linear",
           "skinny_silu_mul", "tiling"]
