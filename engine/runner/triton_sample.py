"""Sampling on the GPU without a sort: temperature, top-k, top-p and min-p, one Triton program per row.

The nucleus N of a row is the smallest set of most likely tokens whose mass reaches top_p: a token
c is in it exactly when the tokens more likely than c hold less than top_p. So draw c from the
row's distribution (Gumbel-max over its logits, noise hashed from the row's seed, the round and the
token id) and check that one sum; if c is outside N, every token of N is more likely than c, so
drop every token as likely as c or less (a pivot) and draw again. An accepted draw is a draw from
N renormalised: the distribution top-p asks for, with no sort. Each round is two passes over the
row (a draw, a sum) after one pass for the row's max and normaliser (online, one read); the most
likely token is never dropped, so a round is accepted almost always within a few. A row that
filters nothing but by top-k (top_p 1, no min-p) takes round 0's draw in one pass. min-p drops
tokens below min_p x the top probability before the draws, which leaves the same set as filtering
after top-p.

The kernel reads the logits as the LM head leaves them (bf16 on a GPU: one pass over [256, 151,936]
reads 78 MB, not the 156 MB of a widened copy) and divides each by its row's temperature as it
reads it; top-k comes in as each row's k-th largest logit (a topk of k values, not a filtered copy of
the row); and the sampler's check is made in the same passes: a row with a NaN or a +inf, or nothing
finite, gets the invalid token. So a sampled step is one kernel on the logits, where it was a
widening copy (115 us at 256 rows of Qwen3's 151,936 on an H200), a check (52 us), a division and the
draw (615 us for top-p 0.9; now 464, in bf16, with the lanes' reductions below).

`ref_sample` is the same algorithm in torch, vectorised over rows: the reference the tests hold the
kernel to (and a way to read it). The CPU engine keeps its own path (engine.runner.sampler).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.runner.triton_greedy import first_max, lane_max

# vocabulary entries per inner step, 16 warps at 2048 (4 entries a lane): one program a row, so each
# must keep many loads in flight. H200, 256 rows of 151,936, top-p 0.9 on bf16 logits: 464 us at
# 2048 and 16, 601 at 4096 and 16, 645 at 1024 and 8 (the passes are bound by the noise's arithmetic)
_BLOCK = 2048
MAX_ROUNDS = 32  # then the last round's draw is taken (a pivot chain this long never happens in practice)
_ROUND_MIX = 0xD1B54A32D192ED03  # mixes the round into the seed


@triton.jit
def _uniform(seed, idx):
    """(0, 1) float32 from a uint64 seed and int positions: splitmix64's finaliser, its top 23 bits.
    (24 bits plus a half rounded their largest value, 16777215.5, to 2**24 in float32: u = 1, a
    Gumbel score of +inf, a uniformly random token in about 1 row in 110 a step at 151,936 tokens.)"""
    x = seed + (idx + 1).to(tl.uint64) * 0x9E3779B97F4A7C15
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    x = x ^ (x >> 31)
    return (((x >> 41) & 0x7FFFFF).to(tl.float32) + 0.5) * (1.0 / 8388608.0)


@triton.jit
def _scaled(base, idx, vocab, temperature):
    """Logits at `idx` (any float dtype) as float32, divided by the temperature (correctly rounded, as
    torch divides); -inf past the row's end."""
    x = tl.load(base + idx, mask=idx < vocab, other=float("-inf")).to(tl.float32)
    return tl.math.div_rn(x, temperature)


@triton.jit
def _draw(base, vocab, temperature, round_seed, pivot, floor, BLOCK: tl.constexpr):
    """Gumbel-max over a row's logits above `pivot` and at or above `floor`: the index drawn (the
    first of equal maxima), its score (-inf: nothing to draw), and whether the row holds a NaN or a +inf.
    Each lane keeps its own best over the blocks, as the greedy kernel's (lane_max, first_max)."""
    offs = tl.arange(0, BLOCK)
    best = tl.full((BLOCK,), float("-inf"), tl.float32)
    best_i = tl.zeros((BLOCK,), tl.int32)
    bad = tl.zeros((BLOCK,), tl.int1)
    for start in range(0, vocab, BLOCK):
        idx = start + offs
        x = _scaled(base, idx, vocab, temperature)
        bad = bad | (x != x) | (x == float("inf"))
        g = x - tl.log(-tl.log(_uniform(round_seed, idx)))
        g = tl.where((idx < vocab) & (x > pivot) & (x >= floor), g, float("-inf"))
        best, best_i = lane_max(best, best_i, g, idx)
    top, first = first_max(best, best_i, vocab)
    return first, top, tl.max(bad.to(tl.int32), axis=0)


# the per-row parameters' pointers are views whose alignment varies (a lone row's top_p is a
# view 4 bytes into [1, 3] parameters): specialising on it compiled a new variant mid-serving
# (and their strides: the parameters are read in place, columns of the staged [S, 3], no copy)
@triton.jit(do_not_specialize=["temp_ptr", "top_p_ptr", "min_p_ptr", "seed_ptr", "kth_ptr", "temp_stride",
                               "top_p_stride", "min_p_stride", "seed_stride"])
def _sample_kernel(logits_ptr, stride, vocab, temp_ptr, top_p_ptr, min_p_ptr, seed_ptr, kth_ptr, temp_stride,
                   top_p_stride, min_p_stride, seed_stride, out_ptr, invalid, HAS_KTH: tl.constexpr,
                   MAX_ROUNDS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    temperature = tl.load(temp_ptr + row * temp_stride)
    top_p = tl.load(top_p_ptr + row * top_p_stride)
    min_p = tl.load(min_p_ptr + row * min_p_stride)
    seed = tl.load(seed_ptr + row * seed_stride).to(tl.uint64)
    k_floor = tl.full((), float("-inf"), tl.float32)  # top-k: the k-th largest logit, scaled as the others
    if HAS_KTH:
        k_floor = tl.math.div_rn(tl.load(kth_ptr + row), temperature)
    offs = tl.arange(0, BLOCK)
    if (top_p >= 1.0) & (min_p <= 0.0):  # no top-p, no min-p: round 0's draw, in one pass
        token, best, bad = _draw(base, vocab, temperature, seed, float("-inf"), k_floor, BLOCK)
        ok = (bad == 0) & (best > float("-inf"))
    else:
        # one pass: the row's max m and the sum z of exp(x - m) over what top-k keeps (online, as
        # flash attention's softmax, each lane on its own, then the lanes combined), and whether it
        # holds a NaN or a +inf
        lane_m = tl.full((BLOCK,), float("-inf"), tl.float32)
        lane_z = tl.zeros((BLOCK,), tl.float32)
        lane_bad = tl.zeros((BLOCK,), tl.int1)
        for start in range(0, vocab, BLOCK):
            x = _scaled(base, start + offs, vocab, temperature)
            nan = x != x
            lane_bad = lane_bad | nan | (x == float("inf"))
            x = tl.where(nan, float("-inf"), x)
            m_new = tl.maximum(lane_m, x)
            grown = lane_z * tl.exp(lane_m - m_new) + tl.where(x >= k_floor, tl.exp(x - m_new), 0.0)
            lane_z = tl.where(m_new > float("-inf"), grown, lane_z)  # nothing finite yet: 0 (not NaN)
            lane_m = m_new
        m = tl.max(lane_m, axis=0)
        z = tl.sum(tl.where(lane_m > float("-inf"), lane_z * tl.exp(lane_m - m), 0.0), axis=0)
        ok = (tl.max(lane_bad.to(tl.int32), axis=0) == 0) & (m > float("-inf"))
        floor = tl.maximum(m + tl.log(min_p), k_floor)  # min-p: logits below are out (min_p 0: -inf, none)
        pivot = tl.full((), float("-inf"), tl.float32)  # logits at or below a rejected draw's are out
        token = tl.full((), 0, tl.int32)
        rounds = tl.full((), 0, tl.int32)
        done = (ok == 0).to(tl.int32)  # a row that cannot be sampled draws nothing
        while (done == 0) & (rounds < MAX_ROUNDS):
            round_seed = seed ^ (rounds.to(tl.uint64) * 0xD1B54A32D192ED03)  # the round mixed into the seed
            best_i, _, _ = _draw(base, vocab, temperature, round_seed, pivot, floor, BLOCK)
            chosen = tl.math.div_rn(tl.load(base + best_i).to(tl.float32), temperature)
            lane_above = tl.zeros((BLOCK,), tl.float32)
            for start in range(0, vocab, BLOCK):
                x = _scaled(base, start + offs, vocab, temperature)
                lane_above += tl.where(x > chosen, tl.exp(x - m), 0.0)
            above = tl.sum(lane_above, axis=0)
            token = best_i
            done = ((above < top_p * z) | (chosen >= m)).to(tl.int32)  # the likeliest is always in
            pivot = chosen
            rounds += 1
    tl.store(out_ptr + row, tl.where(ok, token.to(tl.int64), invalid))


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor,
           seeds: torch.Tensor, kth: torch.Tensor | None = None, invalid: int = -1) -> torch.Tensor:
    """logits [S, V] (float32, bfloat16 or float16; unit stride over V), temperature, top_p and min_p
    [S] float32, seeds [S] int64 (any stride), kth [S] float32 (top-k: each row's k-th largest logit,
    before the temperature, -inf for a row without; None: no row has one) -> [S] int64 tokens, each drawn
    from its row's logits / temperature, top-k, top-p and min-p filtered; `invalid` for a row with a
    NaN or a +inf, or nothing finite."""
    assert logits.dim() == 2 and logits.stride(1) == 1, "logits must be [S, V] with rows of unit stride"
    assert temperature.dtype == top_p.dtype == min_p.dtype == torch.float32 and seeds.dtype == torch.int64
    assert kth is None or (kth.dtype == torch.float32 and kth.is_contiguous())
    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    if rows == 0:
        return out
    block = min(_BLOCK, triton.next_power_of_2(vocab))
    _sample_kernel[(rows,)](logits, logits.stride(0), vocab, temperature, top_p, min_p, seeds,
                            temperature if kth is None else kth, temperature.stride(0), top_p.stride(0),
                            min_p.stride(0), seeds.stride(0), out, invalid, HAS_KTH=kth is not None,
                            MAX_ROUNDS=MAX_ROUNDS, BLOCK=block, num_warps=max(1, min(16, block // 128)))
    return out


def _ref_uniform(seeds: torch.Tensor, width: int) -> torch.Tensor:
    """_uniform in int64 torch ops (logical shifts as arithmetic shifts and masks): [R, width]."""
    j = torch.arange(1, width + 1, device=seeds.device, dtype=torch.int64)
    x = seeds[:, None] + j[None, :] * -7046029254386353131  # 0x9E3779B97F4A7C15
    x = (x ^ ((x >> 30) & ((1 << 34) - 1))) * -4658895280553007687  # 0xBF58476D1CE4E5B9
    x = (x ^ ((x >> 27) & ((1 << 37) - 1))) * -7723592293110705685  # 0x94D049BB133111EB
    x = x ^ ((x >> 31) & ((1 << 33) - 1))
    return (((x >> 41) & 0x7FFFFF).to(torch.float32) + 0.5) * (1.0 / 8388608.0)


def ref_sample(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor,
               seeds: torch.Tensor, kth: torch.Tensor | None = None, invalid: int = -1) -> torch.Tensor:
    """The kernel's algorithm in torch, all rows at once, round by round."""
    rows, vocab = logits.shape
    logits = logits.float() / temperature[:, None]
    bad = logits.isnan().any(dim=-1) | (logits == float("inf")).any(dim=-1)
    logits = logits.masked_fill(logits.isnan(), float("-inf"))
    if kth is not None:  # top-k: what is below the k-th largest is out
        logits = logits.masked_fill(logits < (kth / temperature)[:, None], float("-inf"))
    m = logits.amax(dim=-1, keepdim=True)
    ok = ~bad & (m[:, 0] > float("-inf"))
    e = (logits - m).exp()
    z = e.sum(dim=-1)
    floor = m + min_p[:, None].log()
    pivot = torch.full((rows, 1), float("-inf"), device=logits.device)
    token = torch.zeros(rows, dtype=torch.int64, device=logits.device)
    done = ~ok
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
    return torch.where(ok, token, invalid)
