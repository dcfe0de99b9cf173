"""SiLU-and-mul in Triton: [T, 2I] (gate, then up) -> silu(gate) * up [T, I] in one kernel.

The reference (and the CPU path) is layers.silu_and_mul; like it, silu(gate) is rounded to the
dtype before the product, and both are computed in fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.models.layers import silu_and_mul as ref_silu_and_mul

_BLOCK = 1024  # columns per program


@triton.jit
def _silu_mul_kernel(
    x_ptr, out_ptr,  # x [T, 2I], out [T, I], unit stride over columns
    stride_x, stride_o, inter,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (act * up).to(dtype), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2 * I] -> silu(x[:, :I]) * x[:, I:], a new [T, I] tensor."""
    assert x.dim() == 2 and x.shape[1] % 2 == 0, f"x {tuple(x.shape)} is not [T, 2 * I]"
    assert x.stride(1) == 1, "x needs a unit stride over columns"
    assert x.dtype in (torch.float32, torch.bfloat16, torch.float16), f"unsupported dtype {x.dtype}"
    inter = x.shape[1] // 2
    out = torch.empty((x.shape[0], inter), dtype=x.dtype, device=x.device)
    if x.shape[0] == 0:
        return out
    block = min(_BLOCK, triton.next_power_of_2(inter))
    _silu_mul_kernel[(x.shape[0], triton.cdiv(inter, block))](
        x, out, x.stride(0), out.stride(0), inter, BLOCK=block,
    )
    return out


__all__ = ["ref_silu_and_mul", "silu_and_mul"]
