"""The torch paged-attention backend against a naive dense attention, per sequence, in float64."""
from __future__ import annotations

import random

import pytest
import torch

from engine.attention import TorchAttentionBackend, get_backend
from engine.attention.backend import AttentionShape
from engine.runner.forward_metadata import ScheduledChunk
from engine.runner.step_inputs import build_metadata
from attention_cases import build_case, random_specs

NUM_KV_HEADS = 2
HEAD_DIM = 16


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [q_len, heads, d]; k, v [ctx, kv_heads, d], the whole context. Query j sits at position ctx - q_len + j."""
    q_len, heads, _ = q.shape
    ctx, kv_heads, _ = k.shape
    k = k.repeat_interleave(heads // kv_heads, dim=1)  # query head h reads kv head h // group
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale  # [heads, q_len, ctx]
    q_pos = torch.arange(ctx - q_len, ctx).unsqueeze(1)
    scores = scores.masked_fill(torch.arange(ctx).unsqueeze(0) > q_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def run_case(specs: list[tuple[int, int]], block_size: int, group: int, seed: int) -> None:
    """specs: (cached prefix length, query length) per sequence, all in one step.

    The cache starts full of NaN; each prefix is written at its slots beforehand (earlier steps),
    the new tokens' K/V go through store_kv. Block tables are random, non-contiguous blocks.
    """
    case = build_case(specs, block_size, group, seed, num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM)
    scale = HEAD_DIM ** -0.5
    out = TorchAttentionBackend().forward(case.q, case.new_k, case.new_v, case.cache, case.meta, scale)

    ref = torch.cat([naive_attention(q.double(), k.double(), v.double(), scale)
                     for q, k, v in zip(case.qs, case.full_k, case.full_v)])
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    flat, slots = case.flat_cache, case.meta.slot_mapping
    torch.testing.assert_close(flat[0, slots], case.new_k)
    torch.testing.assert_close(flat[1, slots], case.new_v)
    written = (~case.cache[0].isnan().any(-1).any(-1)).sum().item()
    assert written == sum(p + n for p, n in specs), "store_kv wrote outside the slot mapping"


@pytest.mark.parametrize("block_size", [4, 8, 16])
@pytest.mark.parametrize("group", [1, 3, 4])
@pytest.mark.parametrize("seed", range(3))
def test_mixed_batch_matches_dense_reference(block_size: int, group: int, seed: int) -> None:
    run_case(random_specs(random.Random(seed), num_seqs=7), block_size, group, seed)


@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("group", [1, 3])
def test_pure_decode_batch(block_size: int, group: int) -> None:
    rng = random.Random(block_size * 10 + group)
    run_case([(rng.randint(0, 50), 1) for _ in range(9)], block_size, group, seed=1)


@pytest.mark.parametrize("specs", [
    [(0, 1)],  # a one-token prompt
    [(0, 16)],  # exactly one block
    [(0, 33)],  # a block and a bit
    [(16, 16)],  # a chunk starting on a block boundary
    [(15, 2)],  # a chunk straddling a block boundary
    [(5, 1), (0, 7), (3, 1)],  # decodes around a prefill: non-consecutive decode rows
])
def test_edge_cases(specs: list[tuple[int, int]]) -> None:
    run_case(specs, block_size=16, group=3, seed=7)


def test_the_plan_travels_in_the_metadata() -> None:
    """Built with a backend, a step's metadata carries its plan, which every layer reads; for
    another cache (or metadata built without a backend) the backend plans at the call."""
    backend = TorchAttentionBackend()
    shape = AttentionShape(num_heads=4, num_kv_heads=2, num_slots=16, device=torch.device("cpu"))
    meta_a = build_metadata([ScheduledChunk([0, 0], 0, [0], 1)], 4, "cpu", backend, shape)
    meta_b = build_metadata([ScheduledChunk([0], 2, [0], 1)], 4, "cpu", backend, shape)
    assert meta_a.plan.decode is None and len(meta_a.plan.prefills) == 1
    assert meta_b.plan.decode is not None and not meta_b.plan.prefills
    q, cache = torch.zeros(1, 4, 8), torch.zeros(2, 4, 4, 2, 8)  # 16 slots
    assert backend.step_plan(meta_b, q, cache) is meta_b.plan
    assert backend.step_plan(meta_b, q, torch.zeros(2, 8, 4, 2, 8)) is not meta_b.plan
    assert build_metadata([ScheduledChunk([0], 2, [0], 1)], 4, "cpu").plan is None


def test_get_backend() -> None:
    """The Triton backend's choice is tested with its kernels, in test_triton_kernels.py."""
    assert isinstance(get_backend("torch", "cpu"), TorchAttentionBackend)
    assert isinstance(get_backend("auto", "cpu"), TorchAttentionBackend)
    with pytest.raises(ValueError, match="unknown attention backend"):
        get_backend("flash", "cpu")


@pytest.mark.parametrize("group", [1, 3])
def test_compiled_unstored_decode_matches_the_dense_reference(group: int) -> None:
    """Under torch.compile a pure-decode step's attention is products and sums over the cache rows
    (_attend_decode_fused), the newest keys and values standing in at each last position: it gives
    the naive attention over the whole context, ragged contexts, padding past them untouched (NaN)."""
    specs = [(40, 1), (0, 1), (17, 1), (63, 1)]
    case = build_case(specs, 16, group, seed=group, num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM)
    backend, scale = TorchAttentionBackend(), HEAD_DIM ** -0.5
    before = case.cache.clone()
    attend = torch.compile(lambda q, k, v, cache: backend.attend_unstored(q, k, v, cache, case.meta, scale),
                           fullgraph=True)
    out = attend(case.q, case.new_k, case.new_v, case.cache)
    ref = torch.cat([naive_attention(q.double(), k.double(), v.double(), scale)
                     for q, k, v in zip(case.qs, case.full_k, case.full_v)])
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(case.cache, before, equal_nan=True)  # read only
