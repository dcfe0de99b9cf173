"""The paged decode kernel's launch settings, swept on the GPU: achieved KV bandwidth per setting.

    python benchmarks/decode_sweep.py ["256 seqs"]    # optionally only the batches whose name has it

Qwen3-0.6B's attention shape (16 heads, 8 KV heads, head dim 128, bf16, blocks of 16 tokens, pages
shuffled over the pool). Batches: 256 sequences of W256-like contexts (uniform in [100, 1,536]), 32
sequences of the same, and one sequence of 1,024 (alone, and in a table 2,560 blocks wide as a
captured decode graph sees it). A decode step reads every context token's K and V
once; GB/s = those bytes / kernel time (do_bench, median). Each setting's output is checked against
the default's.
"""
from __future__ import annotations

import dataclasses
import itertools
import random
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.attention.triton_decode import decode_attention, default_block_n  # noqa: E402
from engine.runner.forward_metadata import ScheduledChunk  # noqa: E402
from engine.runner.step_inputs import build_metadata  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 16, 8, 128, 16


def case(specs: list[tuple[int, int]], seed: int = 0, width: int | None = None):
    """specs: (cached tokens, new tokens) a sequence (a decode: (context - 1, 1)) -> q, cache, meta,
    the sequences' pages shuffled over the pool; `width`: the tables as wide as a captured graph's."""
    rng = random.Random(seed)
    need = [triton.cdiv(p + n, BLOCK) for p, n in specs]
    ids = list(range(sum(need) + 8))
    rng.shuffle(ids)
    cache = torch.randn(2, len(ids), BLOCK, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    chunks = []
    for (p, n), k in zip(specs, need):
        table, ids = ids[:k], ids[k:]
        chunks.append(ScheduledChunk([0] * n, p, table, 1))
    meta = build_metadata(chunks, BLOCK, "cuda")
    if width is not None:  # as a CUDA graph captured for the longest context sees the tables
        wide = torch.zeros(len(specs), width, dtype=torch.int32, device="cuda")
        wide[:, :meta.block_tables.shape[1]] = meta.block_tables
        meta = dataclasses.replace(meta, block_tables=wide)
    q = torch.randn(sum(n for _, n in specs), HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    return q, cache, meta


def main() -> None:
    only = sys.argv[1] if len(sys.argv) > 1 else ""  # a batch name's substring: sweep only those
    rng = random.Random(0)
    batches = {
        "256 seqs, ctx 100-1536": [rng.randint(100, 1536) for _ in range(256)],
        "128 seqs, ctx 100-1536": [rng.randint(100, 1536) for _ in range(128)],
        "64 seqs, ctx 100-1536": [rng.randint(100, 1536) for _ in range(64)],
        "32 seqs, ctx 100-1536": [rng.randint(100, 1536) for _ in range(32)],
        "1 seq, ctx 1024": [1024],
        "1 seq, ctx 1024, graph-wide table": [1024],
    }
    settings = list(itertools.product((32, 64, 128), (2, 4, 8), (None, 2, 3, 4)))
    print(f"hardware: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}")
    print("| batch | BLOCK_N | warps | stages | us | GB/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, lens in batches.items():
        if only not in name:
            continue
        q, cache, meta = case([(n - 1, 1) for n in lens], width=2560 if "graph" in name else None)
        scale = HEAD_DIM ** -0.5
        ref = decode_attention(q, cache, meta, scale)
        nbytes = sum(lens) * KV_HEADS * HEAD_DIM * 2 * 2
        rows = []
        for block_n, warps, stages in settings:
            try:
                out = decode_attention(q, cache, meta, scale, block_n=block_n, num_warps=warps, num_stages=stages)
                err = (out.float() - ref.float()).abs().max().item()
                assert err < 2e-2, f"mismatch {err}"
                ms = triton.testing.do_bench(lambda: decode_attention(q, cache, meta, scale, block_n=block_n,
                                                                      num_warps=warps, num_stages=stages))
            except Exception as exc:  # noqa: BLE001 - a setting that does not compile (shared memory)
                print(f"| {name} | {block_n} | {warps} | {stages} | failed: {type(exc).__name__} | |")
                continue
            rows.append((ms, block_n, warps, stages))
        rows.sort()
        chosen = (default_block_n(len(lens)), 4, None)
        default = next(r for r in rows if r[1:] == chosen)
        for ms, block_n, warps, stages in rows[:5] + [default]:
            mark = " (default)" if (block_n, warps, stages) == chosen else ""
            print(f"| {name}{mark} | {block_n} | {warps} | {stages} | {ms * 1e3:.1f} | {nbytes / ms / 1e6:,.0f} |")


if __name__ == "__main__":
    main()
