"""Where a 256-wide decode step's device time goes, kernel by kernel, at W256's contexts.

    python benchmarks/w256_kernels.py [--decode-steps 256] [--profile-steps 8]

W256's requests (as gpu_w256.py: 256 prompts of 100-1,024 random tokens, seed 0, greedy, EOS ignored)
arrive at once. First the ramp, every prompt prefilled (timed alone, then again under torch.profiler),
then --decode-steps steps, so the contexts are those of the middle of a W256 run. Then
--profile-steps steps run under torch.profiler (CUDA graphs on, as served) and the table gives each kernel's device time a step, with the bytes a step must move at the least (the
weights once, every context token's keys and values once) and the device's copy bandwidth, so the
kernels' sum reads as a share of the memory roofline. The decode attention kernel's own bandwidth
is printed beside it.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_w256 import copy_bandwidth, matmul_rate, workload  # noqa: E402
from benchmarks.synthetic_model import QWEN3_0_6B, make_model_dir  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402


def kernel_times(prof, steps: int) -> dict[str, tuple[float, float]]:
    """Each kernel's (launches, device us) a step, from a profile of `steps` steps."""
    per_kernel: dict[str, list[float]] = collections.defaultdict(list)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[ev.name].append(ev.device_time_total)
    return {k: (len(v) / steps, sum(v) / steps) for k, v in per_kernel.items()}


def print_table(kernels: dict[str, tuple[float, float]], top: int) -> float:
    total = sum(us for _, us in kernels.values())
    print("| kernel | launches a step | us a step | share |")
    print("| --- | ---: | ---: | ---: |")
    rows = sorted(kernels.items(), key=lambda kv: -kv[1][1])
    for name, (n, us) in rows[:top]:
        print(f"| {name[:90]} | {n:.0f} | {us:,.1f} | {us / total:.1%} |")
    rest = sum(us for _, (n, us) in rows[top:])
    if rest:
        print(f"| {len(rows) - top} more | | {rest:,.1f} | {rest / total:.1%} |")
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decode-steps", type=int, default=256)
    ap.add_argument("--profile-steps", type=int, default=8)
    ap.add_argument("--model-dir", default="/tmp/qwen3-0.6b-random-byte-level")
    args = ap.parse_args()
    model_dir = make_model_dir(args.model_dir, tokenizer="byte-level")
    prompts = workload(256, QWEN3_0_6B["vocab_size"])
    llm = LLM(str(model_dir), dtype="bfloat16", max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=2048)
    engine = llm.engine
    mc = engine.model_config
    params = sum(p.numel() for p in engine.runner.model.parameters())
    weight_bytes = 2 * params
    kv_per_token = mc.kv_bytes_per_token(2)
    llm.generate(prompts[:8], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))  # warm-up
    gc.collect()
    gc.freeze()
    bw = copy_bandwidth()
    print(f"hardware: {torch.cuda.get_device_name()}, torch {torch.__version__}; copy bandwidth {bw / 1e12:.2f} TB/s")
    total = args.decode_steps + args.profile_steps + 64
    sampling = SamplingParams(temperature=0.0, max_tokens=total, ignore_eos=True)

    # the ramp, unprofiled then profiled: every prompt prefilled (8,192 tokens a step), decodes mixed in
    for profiled in (False, True):
        llm.reset_prefix_cache()
        for i, p in enumerate(prompts):
            engine.add_request(f"r{int(profiled)}-{i}", p, sampling)
        torch.cuda.synchronize()
        steps, prefill = 0, 0
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA]) if profiled else contextlib.nullcontext() as prof:
            while True:
                out = engine.step()
                steps += 1
                prefill += out.metrics.num_prefill_tokens
                if out.metrics.num_prefill_tokens == 0 and prefill >= sum(len(p) for p in prompts):
                    break
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        if not profiled:
            ramp_wall, ramp_steps = wall, steps
            for i in range(len(prompts)):
                engine.abort(f"r0-{i}")
            while engine.has_unfinished_requests():
                engine.step()
    least = 2 * params * prefill / matmul_rate()
    print(f"\nthe ramp: {ramp_steps} steps, {prefill:,} prompt tokens, wall {ramp_wall * 1e3:.0f} ms unprofiled "
          f"({ramp_wall / ramp_steps * 1e3:.1f} ms a step); the prompts' matmuls at the measured bf16 rate "
          f"{least * 1e3:.0f} ms")
    ramp = kernel_times(prof, steps)
    device = print_table(ramp, 16)
    print(f"device time a step {device / 1e3:.2f} ms")

    # the middle of the run: all 256 decoding
    made = 1
    while made < args.decode_steps:
        engine.step()
        made += 1
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.profile_steps):
        engine.step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / args.profile_steps
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.profile_steps):
            engine.step()
        torch.cuda.synchronize()
    made += 2 * args.profile_steps  # about: every request started together
    context = sum(len(p) for p in prompts) + 256 * made
    kv_bytes = context * kv_per_token
    least = weight_bytes + kv_bytes
    decode = kernel_times(prof, args.profile_steps)
    print(f"\n256 sequences decoding, mean context {context / 256:,.0f} tokens; weights {weight_bytes / 1e9:.2f} GB, "
          f"keys and values {kv_bytes / 1e9:.2f} GB a step")
    device = print_table(decode, 24)
    print(f"a step: wall {wall * 1e3:.2f} ms (unprofiled), device {device / 1e3:.2f} ms, "
          f"the bytes at copy bandwidth {least / bw * 1e3:.2f} ms")
    attn = sum(us for k, (n, us) in decode.items() if "decode_split" in k or "decode_combine" in k)
    if attn:
        print(f"decode attention: {attn / 1e3:.2f} ms a step, {kv_bytes / (attn * 1e-6) / 1e12:.2f} TB/s of keys and values")


if __name__ == "__main__":
    main()
