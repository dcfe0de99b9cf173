"""The seeded rows' noise as one Triton kernel: element (r, j) of an [R, V] float32 uniform in
[0, 1) is a hash of (seeds[r], j) alone, splitmix64's finaliser in uint64 arithmetic.

The reference (and the CPU path) is sampler.hashed_uniform, which spells the same hash in int64
torch ops (logical shifts as arithmetic shifts and masks): a dozen passes over [R, V] int64, 2.5 ms
on W256-shaped logits on an H200, where this kernel makes one pass of float32 stores.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.sampler import hashed_uniform as ref_hashed_uniform

_BLOCK = 2048  # columns per program


@triton.jit
def _hashed_uniform_kernel(seeds_ptr, out_ptr, width, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    seed = tl.load(seeds_ptr + row).to(tl.uint64)
    x = seed + (cols + 1).to(tl.uint64) * 0x9E3779B97F4A7C15
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    x = x ^ (x >> 31)
    u = ((x >> 8) & 0xFFFFFF).to(tl.float32) * (1.0 / 16777216.0)
    tl.store(out_ptr + row * stride_o + cols, u, mask=mask)


def hashed_uniform(seeds: torch.Tensor, width: int) -> torch.Tensor:
    """seeds [R] int64 -> [R, width] float32, equal to sampler.hashed_uniform."""
    assert seeds.dim() == 1 and seeds.dtype == torch.int64, f"seeds {tuple(seeds.shape)} {seeds.dtype}"
    out = torch.empty((seeds.shape[0], width), dtype=torch.float32, device=seeds.device)
    if seeds.shape[0] == 0 or width == 0:
        return out
    block = min(_BLOCK, triton.next_power_of_2(width))
    _hashed_uniform_kernel[(seeds.shape[0], triton.cdiv(width, block))](
        seeds.contiguous(), out, width, out.stride(0), BLOCK=block,
    )
    return out


__all__ = ["hashed_uniform", "ref_hashed_uniform"]
