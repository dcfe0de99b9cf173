"""x @ W.T for a few rows on the CPU, through a copy of W cut into column panels.

For the few rows of a decode step (one per sequence), torch's F.linear on an [N, K] weight runs at
a fraction of the machine's memory bandwidth (MKL's small-M path; measured on a 2-core EPYC: 46
GFLOP/s for SmolLM2's 49152 x 576 LM head at 16 rows). The same product over panels of BLOCK output
columns stored contiguously, [N / BLOCK, K, BLOCK], is a batched matmul whose every panel streams
once: 1.4-2x faster for up to ~64 rows. The two differ by fp32 rounding (relative ~1e-5): MKL picks
its kernels by CPU and by shape (on a 2-core EPYC the results were bit for bit F.linear's from 16
rows; on a 2-core Xeon, not at 64 rows of K = 1536). Beyond MAX_ROWS (prefill) F.linear on the
original layout is faster again, so a packed layer keeps both (the weights' memory
twice: about 0.5 GB more for SmolLM2-135M in fp32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

BLOCK = 32  # output columns per panel (a 2-core EPYC sweep: 32 beat 16, 64 and 128)
MAX_ROWS = 64  # rows up to which the panels win


def block_weight(weight: torch.Tensor) -> torch.Tensor:
    """[N, K] -> [ceil(N / BLOCK), K, BLOCK], output columns past N zero."""
    n, k = weight.shape
    pad = -n % BLOCK
    if pad:
        weight = torch.cat([weight, weight.new_zeros(pad, k)])
    return weight.view(-1, BLOCK, k).transpose(1, 2).contiguous()


def blocked_linear(x: torch.Tensor, blocked: torch.Tensor, out_features: int) -> torch.Tensor:
    """x [M, K] @ W.T -> [M, out_features], W given as block_weight(W)."""
    y = torch.matmul(x, blocked)  # [N / BLOCK, M, BLOCK]
    y = y.transpose(0, 1).reshape(x.shape[0], -1)
    return y if y.shape[1] == out_features else y[:, :out_features].contiguous()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           blocked: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ weight.T (+ bias): through `blocked` (block_weight(weight)) for 1..MAX_ROWS rows
    of a 2-D x, else F.linear (an empty step, a prefill)."""
    if blocked is not None and x.dim() == 2 and 0 < x.shape[0] <= MAX_ROWS:
        y = blocked_linear(x, blocked, weight.shape[0])
        return y if bias is None else y.add_(bias)
    return F.linear(x, weight, bias)
