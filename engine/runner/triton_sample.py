"""Sampling on the GPU without a sort: top-p (and min-p) by rejection, one Triton program per row.

The nucleus N of a row is the smallest set of most likely tokens whose mass reaches top_p: a token
c is in it exactly when the tokens more likely than c hold less than top_p. So draw c from the
row's distribution (Gumbel-max over its logits, noise hashed from the row's seed, the round and the
token id) and check that one sum; if c is outside N, every token of N is more likely than c, so
drop every token as likely as c or less (a pivot) and draw again. An accepted draw is a draw from
N renormalised: the distribution top-p asks for, with no sort. Each round is two passes over the
row (a draw, a sum) after one pass for the row's max and normaliser; the most likely token is
never dropped, so a round is accepted almost always within a few. A row that filters nothing (top_p
1, no min-p: temperature alone) takes round 0's draw in one pass. min-p drops tokens below
min_p x the top probability before the draws, which leaves the same set as filtering after top-p.
Top-k and temperature come before, in the logits given (-inf: filtered out).

`ref_sample` is the same algorithm in torch, vectorised over rows: the reference the tests hold the
kernel to (and a way to read it). The CPU engine keeps its own path (engine.runner.sampler).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# vocabulary entries per inner step, with 16 warps at 4096: one program a row, so each must keep many
# loads in flight (H200, 256 rows of 151,936: 0.50-0.60 ms a top-p draw, against 1.36-1.42 at 1024 and 4)
_BLOCK = 4096
MAX_ROUNDS = 32  # then the last round's draw is taken (a pivot chain this long never happens in practice)
_ROUND_MIX = 0xD1B54A32D192ED03  # mixes the round into the seed


@triton.jit
def _uniform(seed, idx):
    """(0, 1) float32 from a uint64 seed and int positions: splitmix64's finaliser."""
    x = seed + (idx + 1).to(tl.uint64) * 0x9E3779B97F4A7C15
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    x = x ^ (x >> 31)
    return (((x >> 40) & 0xFFFFFF).to(tl.float32) + 0.5) * (1.0 / 16777216.0)


@triton.jit
def _draw(base, vocab, round_seed, pivot, floor, BLOCK: tl.constexpr):
    """Gumbel-max over a row's logits above `pivot` and at or above `floor`: the index drawn (the
    first of equal maxima)."""
    offs = tl.arange(0, BLOCK)
    best = tl.full((), float("-inf"), tl.float32)
    best_i = tl.full((), 0, tl.int32)
    for start in range(0, vocab, BLOCK):
        idx = start + offs
        x = tl.load(base + idx, mask=idx < vocab, other=float("-inf"))
        g = x - tl.log(-tl.log(_uniform(round_seed, idx)))
        g = tl.where((idx < vocab) & (x > pivot) & (x >= floor), g, float("-inf"))
        block_best = tl.max(g, axis=0)
        block_i = (tl.argmax(g, axis=0) + start).to(tl.int32)
        better = block_best > best
        best_i = tl.where(better, block_i, best_i)
        best = tl.where(better, block_best, best)
    return best_i


# the per-row parameters' pointers are views whose alignment varies (a lone row's top_p is a
# view 4 bytes into [1, 3] parameters): specialising on it compiled a new variant mid-serving
# (and their strides: the parameters are read in place, columns of the staged [S, 3], no copy)
@triton.jit(do_not_specialize=["top_p_ptr", "min_p_ptr", "seed_ptr", "top_p_stride", "min_p_stride", "seed_stride"])
def _sample_kernel(logits_ptr, stride, vocab, top_p_ptr, min_p_ptr, seed_ptr, top_p_stride, min_p_stride,
                   seed_stride, out_ptr, MAX_ROUNDS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    top_p = tl.load(top_p_ptr + row * top_p_stride)
    min_p = tl.load(min_p_ptr + row * min_p_stride)
    seed = tl.load(seed_ptr + row * seed_stride).to(tl.uint64)
    offs = tl.arange(0, BLOCK)
    if (top_p >= 1.0) & (min_p <= 0.0):  # nothing filtered: round 0's draw, in one pass (temperature alone)
        token = _draw(base, vocab, seed, float("-inf"), float("-inf"), BLOCK)
    else:
        # the row's max and the sum of exp(x - max)
        m = tl.full((), float("-inf"), tl.float32)
        for start in range(0, vocab, BLOCK):
            x = tl.load(base + start + offs, mask=start + offs < vocab, other=float("-inf"))
            m = tl.maximum(m, tl.max(x, axis=0))
        z = tl.full((), 0.0, tl.float32)
        for start in range(0, vocab, BLOCK):
            x = tl.load(base + start + offs, mask=start + offs < vocab, other=float("-inf"))
            z += tl.sum(tl.exp(x - m), axis=0)
        floor = m + tl.log(min_p)  # min-p: logits below are out (min_p 0: -inf, none)
        pivot = tl.full((), float("-inf"), tl.float32)  # logits at or below a rejected draw's are out
        token = tl.full((), 0, tl.int32)
        rounds = tl.full((), 0, tl.int32)
        done = tl.full((), 0, tl.int32)
        while (done == 0) & (rounds < MAX_ROUNDS):
            round_seed = seed ^ (rounds.to(tl.uint64) * 0xD1B54A32D192ED03)  # the round mixed into the seed
            best_i = _draw(base, vocab, round_seed, pivot, floor, BLOCK)
            chosen = tl.load(base + best_i)
            above = tl.full((), 0.0, tl.float32)
            for start in range(0, vocab, BLOCK):
                x = tl.load(base + start + offs, mask=start + offs < vocab, other=float("-inf"))
                above += tl.sum(tl.where(x > chosen, tl.exp(x - m), 0.0), axis=0)
            token = best_i
            done = ((above < top_p * z) | (chosen >= m)).to(tl.int32)  # the likeliest is always in
            pivot = chosen
            rounds += 1
    tl.store(out_ptr + row, token.to(tl.int64))


def sample(logits: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """logits [S, V] fp32 (temperature and top-k applied), top_p and min_p [S] fp32, seeds [S]
    int64 (any stride) -> [S] int64 tokens, each drawn from its row's top-p and min-p filtered distribution."""
    assert logits.dim() == 2 and logits.dtype == torch.float32 and logits.stride(1) == 1
    assert top_p.dtype == min_p.dtype == torch.float32 and seeds.dtype == torch.int64
    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    if rows == 0:
        return out
    block = min(_BLOCK, triton.next_power_of_2(vocab))
    _sample_kernel[(rows,)](logits, logits.stride(0), vocab, top_p, min_p, seeds, top_p.stride(0), min_p.stride(0),
                            seeds.stride(0), out, MAX_ROUNDS=MAX_ROUNDS, BLOCK=block,
                            num_warps=max(1, min(16, block // 256)))
    return out


def _ref_uniform(seeds: torch.Tensor, width: int) -> torch.Tensor:
    """_uniform in int64 torch ops (logical shifts as arithmetic shifts and masks): [R, width]."""
    j = torch.arange(1, width + 1, device=seeds.device, dtype=torch.int64)
    x = seeds[:, None] + j[None, :] * -7046029254386353131  # 0x9E3779B97F4A7C15
    x = (x ^ ((x >> 30) & ((1 << 34) - 1))) * -4658895280553007687  # 0xBF58476D1CE4E5B9
    x = (x ^ ((x >> 27) & ((1 << 37) - 1))) * -7723592293110705685  # 0x94D049BB133111EB
    x = x ^ ((x >> 31) & ((1 << 33) - 1))
    return (((x >> 40) & 0xFFFFFF).to(torch.float32) + 0.5) * (1.0 / 16777216.0)


def ref_sample(logits: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """The kernel's algorithm in torch, all rows at once, round by round."""
    rows, vocab = logits.shape
    m = logits.amax(dim=-1, keepdim=True)
    e = (logits - m).exp()
    z = e.sum(dim=-1)
    floor = m + min_p[:, None].log()
    pivot = torch.full((rows, 1), float("-inf"), device=logits.device)
    token = torch.zeros(rows, dtype=torch.int64, device=logits.device)
    done = torch.zeros(rows, dtype=torch.bool, device=logits.device)
    for r in range(MAX_ROUNDS):
        mix = (r * _ROUND_MIX) % 2**64  # uint64 product, then as int64 bits
        round_seeds = seeds ^ (mix - 2**64 if mix >= 2**63 else mix)
        g = logits - (-_ref_uniform(round_seeds, vocab).log()).log()
        g = g.masked_fill((logits <= pivot) | (logits < floor), float("-inf"))
        best = g.argmax(dim=-1)
        chosen = logits.gather(1, best[:, None])
        accept = ((e * (logits > chosen)).sum(dim=-1) < top_p * z) | (chosen[:, 0] >= m[:, 0])
        accept |= (top_p >= 1) & (min_p <= 0)  # nothing filtered: the first draw stands
        token = torch.where(done, token, best)
        pivot = torch.where(done[:, None], pivot, chosen)
        done = done | accept
        if bool(done.all()):
            break
    return token
