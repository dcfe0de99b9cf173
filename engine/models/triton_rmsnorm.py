"""RMSNorm in Triton: one program per row, optionally fused with the residual add before it, and
that add with the sum of a skinny product's K chunks before it (triton_skinny_matmul.SplitSums).

The references (and the CPU path) are layers.rms_norm and layers.add_rms_norm. The kernels follow
their numerics: fp32 math, and HF's rounding order, where the normalised value is rounded to the
input dtype before it is scaled by the weight (a no-op in fp32, where F.rms_norm does the same sum).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.models.layers import add_rms_norm as ref_add_rms_norm
from engine.models.layers import rms_norm as ref_rms_norm
from engine.models.triton_skinny_matmul import SplitSums

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _normalise(x, w_ptr, cols, mask, n, eps):
    """x [BLOCK] fp32, zero past n -> x * rsqrt(mean(x^2) + eps), rounded to w's dtype, times w (fp32)."""
    inv = tl.rsqrt(tl.sum(x * x, axis=0) / n + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    y = (x * inv).to(w_ptr.dtype.element_ty).to(tl.float32)  # HF's rounding before the weight
    return y * w.to(tl.float32)


@triton.jit
def _rms_norm_kernel(
    x_ptr, w_ptr, out_ptr,  # x, out [T, heads, n] (heads may be 1), unit stride over n; w [n]
    stride_xt, stride_xh, stride_ot, stride_oh,
    n, eps,
    BLOCK: tl.constexpr,  # n rounded up to a power of two
):
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(x_ptr + row * stride_xt + head * stride_xh + cols, mask=mask, other=0.0).to(tl.float32)
    y = _normalise(x, w_ptr, cols, mask, n, eps)
    tl.store(out_ptr + row * stride_ot + head * stride_oh + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_rms_norm_kernel(
    x_ptr, b_ptr, res_ptr, w_ptr, out_ptr,  # x [T, n] (or SPLIT parts [SPLIT, T, n] fp32), bias [n]; residual, out [T, n]
    stride_x, stride_r, stride_o, T, n, eps,
    SPLIT: tl.constexpr,  # 0: x is a tensor in the model dtype; else the sums of a split product, added up here
    HAS_BIAS: tl.constexpr,  # with SPLIT: the product's bias, added after the sums
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    dtype = res_ptr.dtype.element_ty
    if SPLIT == 0:
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    else:  # in _sum_splits' order, rounded as it rounds: the x that its launch would have written
        x = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in tl.static_range(SPLIT):
            x += tl.load(x_ptr + s * T * n + row * n + cols, mask=mask, other=0.0)
        if HAS_BIAS:
            x += tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        x = x.to(dtype).to(tl.float32)
    r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
    r = (r + x).to(dtype)  # the sum is stored, and normalised, in the model dtype
    tl.store(res_ptr + row * stride_r + cols, r, mask=mask)
    y = _normalise(r.to(tl.float32), w_ptr, cols, mask, n, eps)
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)  # x's row is all read


def _block_and_warps(n: int) -> tuple[int, int]:
    block = triton.next_power_of_2(n)
    return block, 4 if block <= 2048 else 8 if block <= 8192 else 16


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    assert x.dtype in DTYPES and weight.dtype == x.dtype, f"x {x.dtype}, weight {weight.dtype}: one float dtype"
    assert weight.shape == (x.shape[-1],) and weight.is_contiguous(), \
        f"weight {tuple(weight.shape)} must be a contiguous [{x.shape[-1]}]"
    assert x.stride(-1) == 1, "x needs a unit stride over its last dim"
    assert x.device == weight.device, "x and weight on different devices"


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x [T, n] or, per head, [T, heads, n] (may be a strided view) -> a new contiguous tensor."""
    assert x.dim() in (2, 3), f"x {tuple(x.shape)} is not [T, n] or [T, heads, n]"
    _check(x, weight)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    x3, out3 = (x, out) if x.dim() == 3 else (x.unsqueeze(1), out.unsqueeze(1))
    if x.shape[0] == 0:
        return out
    block, warps = _block_and_warps(x.shape[-1])
    _rms_norm_kernel[(x3.shape[0], x3.shape[1])](
        x3, weight, out3, x3.stride(0), x3.stride(1), out3.stride(0), out3.stride(1),
        x.shape[-1], eps, BLOCK=block, num_warps=warps,
    )
    return out


def add_rms_norm(x: torch.Tensor | SplitSums, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """residual += x; return rms_norm(residual), in one kernel over x, residual [T, n].

    Both are updated in place: residual holds the sum, x the normalised output (returned). x may be
    a skinny product's SplitSums: the kernel adds them up first, and the output is a new tensor.
    """
    split = 0
    if isinstance(x, SplitSums):
        split, parts, bias = x.parts.shape[0], x.parts, x.bias
        assert parts.is_contiguous() and x.dtype == residual.dtype, f"sums of {x.dtype}, residual {residual.dtype}"
        x = torch.empty(parts.shape[1:], dtype=x.dtype, device=parts.device)  # the output
    assert x.dim() == 2 and residual.shape == x.shape, f"x {tuple(x.shape)}, residual {tuple(residual.shape)}"
    _check(x, weight)
    assert residual.dtype == x.dtype and residual.stride(1) == 1 and residual.device == x.device, \
        "residual must match x's dtype and device, with a unit last stride"
    if x.shape[0] == 0:
        return x
    block, warps = _block_and_warps(x.shape[1])
    source, b = (x, weight) if not split else (parts, bias if bias is not None else weight)
    _add_rms_norm_kernel[(x.shape[0],)](
        source, b, residual, weight, x, x.stride(0), residual.stride(0), x.stride(0), x.shape[0], x.shape[1], eps,
        SPLIT=split, HAS_BIAS=bool(split) and bias is not None, BLOCK=block, num_warps=warps,
    )
    return x


__all__ = ["add_rms_norm", "ref_add_rms_norm", "ref_rms_norm", "rms_norm"]
