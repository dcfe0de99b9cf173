"""Greedy sampling on the GPU in one pass: each row's argmax and its sanity check, read in the model's dtype.

A step whose rows are all greedy needs, per row, the index of the largest logit (the first of equal
maxima, as torch.argmax) and whether the row can be sampled at all: no NaN, no +inf, not every entry
-inf (the sampler's check; such a row gets INVALID_TOKEN). In torch that is a widening copy of the
logits to float32, an amax and an argmax: three passes over [S, V] (at 256 rows of Qwen3's 151,936,
0.22 ms of a 7.8 ms step on an H200). Here one program a row reads the head's bf16 output once. The
LM head's bf16 output widened to float32 holds the same values, so the tokens are those of the widened
path.

engine.runner.sampler.ref_greedy is the torch version, the sampler's CPU path and the reference the
tests hold the kernel to.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 2048  # entries per inner step, 16 warps: one program a row keeps many loads in flight (H200, 256
# rows of 151,936 bf16: 28 us, against 31 at 4096 and 16 warps, 46 at 2048 and 8)


@triton.jit
def lane_max(best, best_i, x, idx):
    """Each lane's running maximum of x and the first index it was at: strictly greater (a lane's later
    equal value is not its first; NaN never wins). Kept per lane over the blocks, the lanes compared
    once at the end (first_max): a reduction across the program at every block, a barrier each, made
    a pass latency-bound."""
    better = x > best
    return tl.where(better, x, best), tl.where(better, idx, best_i)


@triton.jit
def first_max(best, best_i, vocab):
    """The lanes' maximum and the first index holding it (as torch.argmax: the first of equal maxima)."""
    top = tl.max(best, axis=0)
    return top, tl.min(tl.where(best == top, best_i, vocab), axis=0)


@triton.jit
def _greedy_kernel(logits_ptr, stride, vocab, out_ptr, invalid, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    offs = tl.arange(0, BLOCK)
    best = tl.full((BLOCK,), float("-inf"), tl.float32)
    best_i = tl.zeros((BLOCK,), tl.int32)
    bad = tl.zeros((BLOCK,), tl.int1)
    for start in range(0, vocab, BLOCK):
        idx = start + offs
        x = tl.load(base + idx, mask=idx < vocab, other=float("-inf")).to(tl.float32)
        bad = bad | (x != x) | (x == float("inf"))
        best, best_i = lane_max(best, best_i, x, idx)
    top, first = first_max(best, best_i, vocab)
    ok = (tl.max(bad.to(tl.int32), axis=0) == 0) & (top > float("-inf"))
    tl.store(out_ptr + row, tl.where(ok, first.to(tl.int64), invalid))


def greedy(logits: torch.Tensor, invalid: int) -> torch.Tensor:
    """logits [S, V] (float32, bfloat16 or float16; unit stride over V) -> [S] int64: each row's
    argmax, or `invalid` for a row with a NaN or +inf entry or no finite one."""
    assert logits.dim() == 2 and logits.stride(1) == 1, "logits must be [S, V] with rows of unit stride"
    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    if rows == 0:
        return out
    block = min(_BLOCK, triton.next_power_of_2(vocab))
    _greedy_kernel[(rows,)](logits, logits.stride(0), vocab, out, invalid, BLOCK=block,
                            num_warps=max(1, min(16, block // 128)))
    return out

