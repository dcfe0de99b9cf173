"""The paged prefill kernel's tilings, swept on the GPU: achieved attention TFLOPS per setting.

    python benchmarks/prefill_sweep.py [lone]    # optionally only the steps whose name has it

Qwen3-0.6B's attention shape (16 heads, 8 KV heads, head dim 128, bf16, blocks of 16 tokens, pages
shuffled over the pool). Steps: a W256 ramp step (fresh prompts of W256's lengths, 7,936 prompt
tokens, beside 256 decode rows of contexts 100-1,024: what the engine runs while 256 requests
arrive), a lone 1,024-token prompt, and two 2,048-token chunks after 2,048 cached tokens each.
TFLOPS counts the causal score and value products a step needs (4 x d x heads a visible pair). Each
setting's output is checked against the default's.
"""
from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.decode_sweep import HEAD_DIM, HEADS, KV_HEADS, case  # noqa: E402
from benchmarks.gpu_w256 import workload  # noqa: E402
from engine.attention.triton_prefill import plan_tiles, prefill_attention, tile_shape  # noqa: E402


def visible_pairs(specs: list[tuple[int, int]]) -> int:
    """The (query, key) pairs causal attention computes for (cached, new) token counts."""
    return sum(n * p + n * (n + 1) // 2 for p, n in specs)


def main(only: str = "") -> None:
    """Sweep the steps whose name has `only` (all by default)."""
    rng = random.Random(0)
    prompts, total = [], 0
    for p in workload(256, 151936):
        if total + len(p) > 7936:
            break
        prompts.append((0, len(p)))
        total += len(p)
    ramp = prompts + [(rng.randint(100, 1024), 1) for _ in range(256)]
    steps = {
        f"ramp: {len(prompts)} prompts ({total:,} tokens) + 256 decodes": ramp,
        "a lone 1,024-token prompt": [(0, 1024)],
        "2 chunks of 2,048 after 2,048 cached": [(2048, 2048), (2048, 2048)],
    }
    settings = list(itertools.product((64, 128), (64, 128), (4, 8), (2, 3)))
    print(f"hardware: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}")
    print("| step | BLOCK_M | BLOCK_N | warps | stages | us | TFLOPS |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    scale = HEAD_DIM ** -0.5
    for name, specs in steps.items():
        if only not in name:
            continue
        q, cache, meta = case(specs)
        flops = 4 * visible_pairs(specs) * HEAD_DIM * HEADS
        default_tiles = plan_tiles(meta, tile_shape(HEADS // KV_HEADS)[0])
        ref = prefill_attention(q, cache, meta, scale, tiles=default_tiles)
        default = triton.testing.do_bench(lambda: prefill_attention(q, cache, meta, scale, tiles=default_tiles))
        rows = []
        for block_m, block_n, warps, stages in settings:
            tiles = plan_tiles(meta, tile_shape(HEADS // KV_HEADS, block_m)[0])
            run = lambda: prefill_attention(q, cache, meta, scale, tiles=tiles, block_m=block_m,  # noqa: E731
                                            block_n=block_n, num_warps=warps, num_stages=stages)
            try:
                err = (run().float() - ref.float()).abs().max().item()
                assert err < 2e-2, f"mismatch {err}"
                ms = triton.testing.do_bench(run)
            except Exception as exc:  # noqa: BLE001 - a setting that does not compile (shared memory)
                print(f"| {name} | {block_m} | {block_n} | {warps} | {stages} | failed: {type(exc).__name__} | |")
                continue
            rows.append((ms, block_m, block_n, warps, stages))
        rows.sort()
        print(f"| {name} (default) | | | | | {default * 1e3:.1f} | {flops / default / 1e9:.0f} |")
        for ms, block_m, block_n, warps, stages in rows[:6]:
            print(f"| {name} | {block_m} | {block_n} | {warps} | {stages} | {ms * 1e3:.1f} | {flops / ms / 1e9:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
