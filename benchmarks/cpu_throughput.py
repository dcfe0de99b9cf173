"""CPU throughput: our engine against HF transformers `generate`, same prompts, same run.

Workload: 16 chat prompts on different topics (assets/prompts.txt), 128 new tokens each, EOS ignored,
greedy, fp32, 2 threads. HF runs the 16 prompts as one left-padded batch, and one prompt alone.
The batch runs of the two engines take turns (--rounds), since this kind of machine's speed drifts
by 15% or more over minutes: each round's ratio compares two runs made back to back.
The last row times the workload's fp32 matrix products alone as F.linear runs them: a ceiling on
what an engine built on F.linear (HF) can reach here. Ours passes it on blocked weights
(engine/models/blocked_matmul.py).

    python benchmarks/cpu_throughput.py [--model embedded] [--threads 2] [--new-tokens 128] [--rounds 3]
"""
from __future__ import annotations

import argparse
import platform
import statistics
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


def ours_batch(llm: LLM, prompts: list[list[int]], new_tokens: int, other_chat: list[int]) -> float:
    """Aggregate tok/s of all prompts submitted at once.

    The prefix cache is emptied first (an earlier round's prompts, cached, would skip most of the
    prefill), then holds only the chat template's system prompt, from a request with another
    question: a chat server's steady state, where every conversation starts with that prompt.
    """
    llm.reset_prefix_cache()
    llm.generate([other_chat], SamplingParams(temperature=0.0, max_tokens=1))
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    start = time.perf_counter()
    results = llm.generate(prompts, params)
    return sum(len(r.outputs[0].token_ids) for r in results) / (time.perf_counter() - start)


def ours_single(llm: LLM, prompt: list[int], new_tokens: int) -> float:
    """Decode tok/s of one request alone (its first token excluded)."""
    engine = llm.engine
    engine.add_request("single", prompt, SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True))
    stamps = []
    while engine.has_unfinished_requests():
        if engine.step().outputs:
            stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


class HF:
    """HF transformers `generate` on the same weights: the prompts as one left-padded batch, or one alone."""

    def __init__(self, model_dir: str, prompts: list[list[int]], new_tokens: int, pad_id: int) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.width = max(len(p) for p in prompts)
        self.ids = torch.tensor([[pad_id] * (self.width - len(p)) + p for p in prompts])
        self.mask = torch.tensor([[0] * (self.width - len(p)) + [1] * len(p) for p in prompts])
        self.one = torch.tensor([prompts[0]])
        self.kw = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad_id)
        self._generate(self.ids[:2], self.mask[:2], 4)  # warm-up

    @torch.inference_mode()
    def _generate(self, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int | None = None) -> torch.Tensor:
        kw = self.kw if new_tokens is None else {**self.kw, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
        return self.model.generate(ids, attention_mask=mask, **kw)

    def batch(self) -> float:
        start = time.perf_counter()
        out = self._generate(self.ids, self.mask)
        return (out.shape[1] - self.width) * self.ids.shape[0] / (time.perf_counter() - start)

    def single(self) -> float:
        """Decode tok/s alone: a 1-token generate's time (prefill and first token) taken off."""
        mask = torch.ones_like(self.one)
        start = time.perf_counter()
        self._generate(self.one, mask, 1)
        first = time.perf_counter() - start
        start = time.perf_counter()
        out = self._generate(self.one, mask)
        return (out.shape[1] - self.one.shape[1] - 1) / (time.perf_counter() - start - first)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both engines' batch run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    llm = LLM(args.model, dtype="float32", device="cpu", num_blocks=512)
    questions = (ROOT / "assets" / "prompts.txt").read_text().splitlines()[:args.prompts]
    prompts = [llm.engine.encode_chat([{"role": "user", "content": q}]) for q in questions]
    pad = llm.tokenizer.pad_token_id if llm.tokenizer.pad_token_id is not None else 0
    hf = HF(llm.engine.model_path, prompts, args.new_tokens, pad)
    llm.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))  # warm-up
    other = llm.engine.encode_chat([{"role": "user", "content": "Hello! Who are you?"}])
    # The machine's speed drifts over minutes: the two engines take turns, and each round's ratio
    # compares runs made back to back (the order flips every round, so a steady drift cancels).
    rounds = []
    for r in range(args.rounds):
        if r % 2 == 0:
            mine = ours_batch(llm, prompts, args.new_tokens, other)
            theirs = hf.batch()
        else:
            theirs = hf.batch()
            mine = ours_batch(llm, prompts, args.new_tokens, other)
        rounds.append((mine, theirs))
    our_single, hf_single = ours_single(llm, prompts[0], args.new_tokens), hf.single()
    floor = len(prompts) * args.new_tokens / matmul_floor(llm.engine.runner.model, list(map(len, prompts)),
                                                          args.new_tokens)
    import transformers

    print(f"hardware: {cpu_name()}, {args.threads} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    print(f"model: {args.model} ({llm.engine.model_path}), fp32")
    print(f"workload: {len(prompts)} chat prompts ({min(map(len, prompts))}-{max(map(len, prompts))} tokens), "
          f"{args.new_tokens} new tokens each, EOS ignored, greedy; {args.rounds} interleaved rounds")
    print("PagedChat's prefix cache holds the chat template's system prompt at the start of each round "
          "(from a request with another question), nothing else")
    print()
    print(f"| {len(prompts)} prompts at once | PagedChat (continuous batching, paged KV), tok/s | "
          "HF transformers generate (padded batch), tok/s | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for r, (mine, theirs) in enumerate(rounds, 1):
        print(f"| round {r} | {mine:.1f} | {theirs:.1f} | {mine / theirs:.2f}x |")
    ratios = sorted(m / t for m, t in rounds)
    best_mine, best_theirs = max(m for m, _ in rounds), max(t for _, t in rounds)
    print(f"| best of each | {best_mine:.1f} | {best_theirs:.1f} | {best_mine / best_theirs:.2f}x |")
    print(f"| median round ratio | | | {statistics.median(ratios):.2f}x |")
    print(f"| ceiling of any engine on F.linear: its fp32 products alone (benchmarks/gemm_floor.py) | | "
          f"{floor:.1f} | {floor / best_theirs:.2f}x |")
    print()
    print("| single request decode | PagedChat, tok/s | HF generate alone, tok/s | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| | {our_single:.1f} | {hf_single:.1f} | {our_single / hf_single:.2f}x |")


if __name__ == "__main__":
    main()
