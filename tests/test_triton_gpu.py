"""The Triton attention kernels against their torch references at real sizes, on a CUDA GPU.

Qwen3-0.6B's attention shape (16 query heads, 8 kv heads, head_dim 128), block size 16, bf16,
contexts up to 4k tokens, batches up to 256; plus a decode step captured in a CUDA graph and replayed
with new lengths and tables. Self-contained; under a minute on an H100, most of it Triton compiling.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random

import pytest
import torch

from engine.runner.forward_metadata import ForwardMetadata, ScheduledChunk
from engine.runner.step_inputs import build_metadata

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") == "1",
                       reason="TRITON_INTERPRET is set: real sizes need the compiled kernels"),
]

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 16, 8, 128, 16
SCALE = HEAD_DIM ** -0.5
TOL = {torch.bfloat16: 2e-2, torch.float32: 1e-4}


@dataclasses.dataclass
class GpuCase:
    meta: ForwardMetadata
    cache: torch.Tensor  # [2, blocks, BLOCK, KV_HEADS, HEAD_DIM], random context, NaN past every context
    q: torch.Tensor  # [T, HEADS, HEAD_DIM]


def gpu_case(specs: list[tuple[int, int]], seed: int, dtype: torch.dtype = torch.bfloat16,
             shared_blocks: int = 0, table_width: int | None = None) -> GpuCase:
    """specs: (cached prefix, query length) per sequence. With shared_blocks, every sequence starts
    with the same physical blocks (each prefix must cover them); table_width pads the block tables
    wider, as a CUDA graph captured for a maximum length would see them."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    need = [math.ceil((p + n) / BLOCK) - shared_blocks for p, n in specs]
    num_blocks = shared_blocks + sum(need) + 4
    ids = list(range(num_blocks))
    rng.shuffle(ids)
    shared, ids = ids[:shared_blocks], ids[shared_blocks:]
    cache = torch.full((2, num_blocks, BLOCK, KV_HEADS, HEAD_DIM), float("nan"), dtype=dtype, device="cuda")
    chunks = []
    for (prefix, n), blocks in zip(specs, need):
        table, ids = shared + ids[:blocks], ids[blocks:]
        ctx = prefix + n
        own = torch.tensor(table[shared_blocks:], device="cuda")
        cache[:, own] = torch.randn(2, len(own), BLOCK, KV_HEADS, HEAD_DIM, device="cuda").to(dtype)
        if ctx % BLOCK:  # the rest of the last block stays poisoned
            cache[:, table[-1], ctx % BLOCK:] = float("nan")
        chunks.append(ScheduledChunk([0] * n, prefix, table, 1))
    if shared_blocks:
        cache[:, shared] = torch.randn(2, shared_blocks, BLOCK, KV_HEADS, HEAD_DIM, device="cuda").to(dtype)
    meta = build_metadata(chunks, BLOCK, "cuda")
    if table_width is not None:
        wide = torch.zeros(len(specs), table_width, dtype=torch.int32, device="cuda")
        wide[:, :meta.block_tables.shape[1]] = meta.block_tables
        meta = dataclasses.replace(meta, block_tables=wide)
    q = torch.randn(sum(n for _, n in specs), HEADS, HEAD_DIM, device="cuda").to(dtype)
    return GpuCase(meta, cache, q)


def reference(case: GpuCase) -> torch.Tensor:
    from engine.attention.triton_prefill import ref_prefill_attention

    return ref_prefill_attention(case.q.float(), case.cache.float(), case.meta, SCALE)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> None:
    assert not out.isnan().any(), "NaN in the output: an unwritten row or a poisoned slot was read"
    torch.testing.assert_close(out.float(), ref, atol=TOL[dtype], rtol=TOL[dtype])


def test_store_kv_at_real_size() -> None:
    from engine.attention.triton_store_kv import ref_store_kv, store_kv

    case = gpu_case([(0, 1500), (700, 300), *[(ctx, 1) for ctx in range(100, 4000, 40)]], seed=0)
    qkv = torch.randn(case.meta.num_tokens, HEADS + 2 * KV_HEADS, HEAD_DIM, device="cuda").bfloat16()
    k, v = qkv[:, HEADS:HEADS + KV_HEADS], qkv[:, HEADS + KV_HEADS:]  # strided views, as the model gives them
    ours, ref = case.cache.clone(), case.cache.clone()
    store_kv(k, v, ours, case.meta)
    ref_store_kv(k.contiguous(), v.contiguous(), ref, case.meta)
    torch.testing.assert_close(ours, ref, atol=0, rtol=0, equal_nan=True)


@pytest.mark.parametrize("batch, max_len", [(1, 4096), (7, 4000), (64, 2048), (256, 1024)])
def test_decode_at_real_size(batch: int, max_len: int) -> None:
    from engine.attention.triton_decode import decode_attention

    rng = random.Random(batch)
    specs = [(rng.randint(0, max_len - 1), 1) for _ in range(batch)]
    case = gpu_case(specs, seed=batch, table_width=4096 // BLOCK)
    ref = reference(case)
    assert_close(decode_attention(case.q, case.cache, case.meta, SCALE), ref)  # splits from the shapes
    assert_close(decode_attention(case.q, case.cache, case.meta, SCALE, num_splits=1), ref)


def test_decode_shared_prefix_and_fp32() -> None:
    from engine.attention.triton_decode import decode_attention

    specs = [(1000 + 37 * i, 1) for i in range(12)]
    bf16 = gpu_case(specs, seed=1, shared_blocks=60)
    assert_close(decode_attention(bf16.q, bf16.cache, bf16.meta, SCALE), reference(bf16))
    fp32 = gpu_case(specs, seed=2, dtype=torch.float32)
    assert_close(decode_attention(fp32.q, fp32.cache, fp32.meta, SCALE), reference(fp32), torch.float32)


@pytest.mark.parametrize("name, specs", [
    ("lone 4k prompt", [(0, 4096)]),
    ("chunk after a 2k prefix", [(2000, 1000), (0, 517)]),
    ("mixed with 200 decodes", [(0, 700), (1500, 333), *[(d, 1) for d in range(50, 4000, 20)]]),
])
def test_prefill_at_real_size(name: str, specs: list[tuple[int, int]]) -> None:
    from engine.attention.triton_prefill import prefill_attention

    case = gpu_case(specs, seed=len(specs))
    assert_close(prefill_attention(case.q, case.cache, case.meta, SCALE), reference(case))


def test_prefill_shared_prefix_and_fp32() -> None:
    from engine.attention.triton_prefill import prefill_attention

    specs = [(512, 100), (600, 250), (700, 1)]
    bf16 = gpu_case(specs, seed=3, shared_blocks=32)
    assert_close(prefill_attention(bf16.q, bf16.cache, bf16.meta, SCALE), reference(bf16))
    fp32 = gpu_case(specs, seed=4, dtype=torch.float32)
    assert_close(prefill_attention(fp32.q, fp32.cache, fp32.meta, SCALE), reference(fp32), torch.float32)


def test_decode_step_replays_in_a_cuda_graph() -> None:
    """Capture one pure-decode step, then replay it with new lengths, tables and queries in place."""
    from engine.attention.triton_backend import TritonAttentionBackend

    rng = random.Random(5)
    case = gpu_case([(rng.randint(0, 1500), 1) for _ in range(32)], seed=5, table_width=2048 // BLOCK)
    backend, meta = TritonAttentionBackend(), case.meta
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and plan outside the capture
        backend.attend(case.q, case.cache, meta, SCALE)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = backend.attend(case.q, case.cache, meta, SCALE)
    graph.replay()
    assert_close(out, reference(case))

    # the next step: sequences swap tables, contexts shrink (never past a table's written part), new queries
    order = list(reversed(range(32)))
    lens = [max(1, meta.context_lens_cpu[j] - rng.randint(0, 300)) for j in order]
    meta.block_tables.copy_(meta.block_tables[order].clone())
    meta.context_lens.copy_(torch.tensor(lens, dtype=torch.int32))
    case.q.copy_(torch.randn_like(case.q))
    graph.replay()
    assert_close(out, reference(GpuCase(dataclasses.replace(meta, context_lens_cpu=lens), case.cache, case.q)))
