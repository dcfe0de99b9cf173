"""CPU throughput: our engine against HF transformers `generate`, same prompts, same run.

Workload: 16 chat prompts on different topics (assets/prompts.txt), 128 new tokens each, EOS ignored,
greedy, fp32, 2 threads. HF runs the 16 prompts as one left-padded batch, and one prompt alone.
The last row times the workload's fp32 matrix products alone as F.linear runs them: a ceiling on
what an engine built on F.linear (HF) can reach here. Ours passes it on blocked weights
(engine/models/blocked_matmul.py).

    python benchmarks/cpu_throughput.py [--model embedded] [--threads 2] [--new-tokens 128]
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import sys

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gemm_floor import matmul_floor  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def ours(llm: LLM, prompts: list[list[int]], new_tokens: int) -> tuple[float, float]:
    """(aggregate tok/s over all prompts at once, single-request decode tok/s)."""
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))  # warm-up
    start = time.perf_counter()
    results = llm.generate(prompts, params)
    batch = sum(len(r.outputs[0].token_ids) for r in results) / (time.perf_counter() - start)
    engine = llm.engine
    engine.add_request("single", prompts[0], params)
    stamps = []
    while engine.has_unfinished_requests():
        if engine.step().outputs:
            stamps.append(time.perf_counter())
    single = (len(stamps) - 1) / (stamps[-1] - stamps[0])  # decode only: first token excluded
    return batch, single


def hf(model_dir: str, prompts: list[list[int]], new_tokens: int, pad_id: int) -> tuple[float, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    kw = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad_id)
    with torch.inference_mode():
        model.generate(ids[:2], attention_mask=mask[:2], **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, **kw)
        batch = (out.shape[1] - width) * len(prompts) / (time.perf_counter() - start)
        one = torch.tensor([prompts[0]])
        start = time.perf_counter()
        model.generate(one, attention_mask=torch.ones_like(one), **{**kw, "max_new_tokens": 1, "min_new_tokens": 1})
        first = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(one, attention_mask=torch.ones_like(one), **kw)
        single = (out.shape[1] - one.shape[1] - 1) / (time.perf_counter() - start - first)
    return batch, single


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    llm = LLM(args.model, dtype="float32", device="cpu", num_blocks=512)
    questions = (ROOT / "assets" / "prompts.txt").read_text().splitlines()[:args.prompts]
    prompts = [llm.engine.encode_chat([{"role": "user", "content": q}]) for q in questions]
    our_batch, our_single = ours(llm, prompts, args.new_tokens)
    pad = llm.tokenizer.pad_token_id if llm.tokenizer.pad_token_id is not None else 0
    hf_batch, hf_single = hf(llm.engine.model_path, prompts, args.new_tokens, pad)
    floor = len(prompts) * args.new_tokens / matmul_floor(llm.engine.runner.model, list(map(len, prompts)),
                                                          args.new_tokens)
    import transformers

    print(f"hardware: {cpu_name()}, {args.threads} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    print(f"model: {args.model} ({llm.engine.model_path}), fp32")
    print(f"workload: {len(prompts)} chat prompts ({min(map(len, prompts))}-{max(map(len, prompts))} tokens), "
          f"{args.new_tokens} new tokens each, EOS ignored, greedy")
    print()
    print("| engine | 16 prompts at once, tok/s | single request decode, tok/s |")
    print("| --- | ---: | ---: |")
    print(f"| PagedChat (continuous batching, paged KV) | {our_batch:.1f} | {our_single:.1f} |")
    print(f"| HF transformers generate (padded batch / alone) | {hf_batch:.1f} | {hf_single:.1f} |")
    print(f"| ratio | {our_batch / hf_batch:.2f}x | {our_single / hf_single:.2f}x |")
    print(f"| ceiling of any engine on F.linear: its fp32 products alone (benchmarks/gemm_floor.py) | "
          f"{floor:.1f} ({floor / hf_batch:.2f}x HF) | |")


if __name__ == "__main__":
    main()
