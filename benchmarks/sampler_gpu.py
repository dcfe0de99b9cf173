"""Where a sampled decode step's sampling time goes on the GPU: each sampler stage alone and whole
batches, on logits shaped like W256's (256 rows x Qwen3's 151,936-token vocabulary), CUDA events;
whole batches on float32 logits and on bf16 ones (as the engine's LM head leaves them).

    python benchmarks/sampler_gpu.py [--rows 256] [--vocab 151936]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.runner.sampler import SampleRow, Sampler, _nucleus, apply_top_k, kth_largest  # noqa: E402
from engine.runner.triton_sample import sample as sort_free_sample  # noqa: E402
from engine.core.sampling_params import SamplingParams  # noqa: E402


def timed(f, n: int = 20) -> float:
    f()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        f()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=151936)
    args = ap.parse_args()
    s, v = args.rows, args.vocab
    logits = torch.randn(s, v, device="cuda")
    peaked = logits * 8  # a real model's logits are far from flat: top-p keeps few tokens
    sampler = Sampler(0)
    ps = torch.full((s, 1), 0.9, device="cuda")
    seeds = torch.arange(s, device="cuda", dtype=torch.int64)
    ones, zeros = ps[:, 0] * 0 + 1, ps[:, 0] * 0
    half = logits.to(torch.bfloat16)
    stages = {
        "argmax (greedy)": lambda: logits.argmax(-1),
        "softmax": lambda: logits.softmax(-1),
        "uniform noise, one generator": lambda: torch.empty_like(logits).uniform_(),
        "sort-free top-p 0.9 draw, the kernel (flat logits)": lambda: sort_free_sample(logits, ones, ps[:, 0], zeros, seeds),
        "sort-free top-p 0.9 draw, the kernel (peaked logits)": lambda: sort_free_sample(peaked, ones, ps[:, 0], zeros, seeds),
        "sort-free top-p 0.9 draw, the kernel (flat logits, bf16)": lambda: sort_free_sample(half, ones, ps[:, 0], zeros, seeds),
        "sort-free temperature draw, the kernel (bf16)": lambda: sort_free_sample(half, ones, ones, zeros, seeds),
        "top-k 50: the k-th largest (bf16)": lambda: kth_largest(half, [50] * s),
        "top-k 50 filter": lambda: apply_top_k(logits.clone(), [50] * s),
        "top-p 0.9, full sort (flat logits)": lambda: _nucleus(logits, ps, v),
        "top-p 0.9, full sort (peaked logits)": lambda: _nucleus(peaked, ps, v),
        "top-p 0.9, 1024 candidates (peaked)": lambda: _nucleus(peaked, ps, 1024),
    }
    whole = {
        "greedy": SamplingParams(temperature=0.0),
        "temperature 0.7": SamplingParams(temperature=0.7),
        "temperature 0.7, top-k 50": SamplingParams(temperature=0.7, top_k=50),
        "temperature 0.7, top-p 0.9": SamplingParams(temperature=0.7, top_p=0.9),
        "temperature 0.7, top-p 0.9, seeded": SamplingParams(temperature=0.7, top_p=0.9, seed=1),
    }
    print(f"hardware: {torch.cuda.get_device_name()}, torch {torch.__version__}; logits [{s}, {v}] fp32\n")
    print("| stage | ms |\n|---|---:|")
    for name, f in stages.items():
        print(f"| {name} | {timed(f):.3f} |")
    print("\n| whole sampler, every row | ms, float32 logits | ms, bf16 logits |\n|---|---:|---:|")
    for name, p in whole.items():
        batch = [SampleRow(p, [1, 2, 3], step=i) for i in range(s)]
        print(f"| {name} | {timed(lambda: sampler.sample(logits, batch)):.3f} "
              f"| {timed(lambda: sampler.sample(half, batch)):.3f} |")


if __name__ == "__main__":
    main()
