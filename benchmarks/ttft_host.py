"""The host's share of a lone prompt's TTFT: the engine's steps for a 1,024-token prompt (max_tokens
1), timed part by part: the request's arrival, scheduling, the step's inputs, the launch, taking the
token (the prefix cache's registration of the prompt's blocks in it), accounting, detokenizing.
Medians over 200 prompts, the whole and per part (parts nest; a part that runs twice a prompt, as in
the detokenizing step, is counted per call).

On the CPU (default) the model's forward is stubbed out (a tiny random model whose logits are a
constant) and overlapped scheduling on, as on the GPU, so all that is left is the Python around a step. With --gpu it is the real thing, as
gpu_w256.py times it (random-weight Qwen3-0.6B shape, bf16, the same engine settings), and the TTFT
is also split on its critical path: the host before the step is on the device (arrival to the
launch's return), the wait for the token, and the host after it (the token to the step's return).

    python benchmarks/ttft_host.py            # this machine's CPU, the forward stubbed out
    python benchmarks/ttft_host.py --gpu      # on the GPU machine
"""
from __future__ import annotations

import argparse
import functools
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.synthetic_model import QWEN3_0_6B, make_model_dir  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402
from engine.runner.model_runner import PendingTokens  # noqa: E402

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, vocab_size=512, tie_word_embeddings=False, max_position_embeddings=4096)


def _median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="the real model on the GPU, nothing stubbed")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="then the same prompts under cProfile: top functions")
    parser.add_argument("--tokenizer", choices=["byte-level", "word"], default="byte-level",
                        help="the synthetic tokenizer: byte-level as Qwen3's (default, as gpu_w256.py), or word-level")
    args = parser.parse_args()
    if args.gpu:
        llm = LLM(str(make_model_dir(f"/tmp/qwen3-0.6b-random-{args.tokenizer}", tokenizer=args.tokenizer)),
                  dtype="bfloat16", max_num_seqs=256,
                  max_num_batched_tokens=8192, max_model_len=2048)
        vocab = QWEN3_0_6B["vocab_size"]
        llm.generate([list(range(5, 133))] * 8, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    else:
        torch.set_num_threads(1)
        # overlapped scheduling as on the GPU: the same steps in the same order
        os.environ["TRITON_INTERPRET"] = "1"  # the triton backend's step inputs, as on the GPU; no kernel runs
        llm = LLM(str(make_model_dir(f"/tmp/ttft-host-tiny-{args.tokenizer}", TINY, dtype=torch.float32, seed=1,
                                     tokenizer=args.tokenizer)), device="cpu",
                  max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=2048, async_scheduling=True,
                  attention_backend="triton")
        vocab = TINY["vocab_size"]
        logits = torch.zeros(1, vocab)
        llm.engine.runner._logits_of = lambda ids, pos, meta: logits.expand(meta.logits_indices.shape[0], -1)
    engine, runner = llm.engine, llm.engine.runner
    parts: dict[str, list[float]] = {}
    stamps: dict[str, float] = {}

    def timed(owner: Any, name: str, label: str, stamp: str | None = None) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.perf_counter()
                parts.setdefault(label, []).append(end - start)
                if stamp is not None:
                    stamps[stamp] = end
        setattr(owner, name, wrapper)

    for owner, name, label, stamp in [
            (engine, "add_request", "arrival", None), (engine.scheduler, "schedule", "schedule", None),
            (engine, "_prepare", "prepare", None), (runner, "launch", "launch", "launched"),
            (runner.inputs, "build", "  launch: the step's inputs", None),
            *([(runner.prefill_graphs, "run", "  launch: the graph's replay", "replayed")] if runner.prefill_graphs else []),
            (engine, "_take", "take the token", None), (PendingTokens, "result", "  take: wait", "ready"),
            (engine.scheduler, "update", "  take: scheduler update", None),
            (engine.scheduler, "resolve", "  take: scheduler resolve", None),
            (engine.block_manager, "cache_full_blocks", "    update/resolve: prefix-cache registration", None),
            (engine, "_account", "  take: accounting", None),
            (engine, "_detokenize_all", "detokenize", None), (engine, "_snapshot", "metrics snapshot", None)]:
        timed(owner, name, label, stamp)
    rng = random.Random(0)
    lone = [rng.randrange(vocab) for _ in range(1024)]
    spans: dict[str, list[float]] = {"before the device (arrival to the graph's replay)": [],
                                     "arrival to launched": [],
                                     "the wait (launched to the token on the host)": [],
                                     "after (the token to the last step's return)": []}

    def ttft(i: int) -> float:
        prompt = [(t + i) % vocab for t in lone]  # the request's ids and parameters exist before it arrives
        params = SamplingParams(temperature=0.0, max_tokens=1)
        start = time.perf_counter()
        engine.add_request(f"t{i}", prompt, params)
        while engine.has_unfinished_requests():
            engine.step()
        end = time.perf_counter()
        launched, ready = stamps["launched"], stamps["ready"]
        replayed = stamps.get("replayed", launched)
        for span, value in zip(spans.values(), (replayed - start, launched - start, ready - launched, end - ready)):
            span.append(value)
        return end - start

    for i in range(20):
        ttft(i)
    parts.clear()
    for span in spans.values():
        span.clear()
    n = args.prompts
    total = [ttft(20 + i) for i in range(n)]  # every prompt shifted apart: no prefix-cache hit (n < 246 on the CPU)
    where = torch.cuda.get_device_name() if args.gpu else "the CPU, forward stubbed"
    print(f"lone 1,024-token prompt's TTFT on {where}, median of {n}: {_median(total) * 1e3:.3f} ms "
          f"(min {min(total) * 1e3:.3f})")
    for label, times in spans.items():
        print(f"  {label}: {_median(times) * 1e3:.3f} ms")
    for label, times in parts.items():
        print(f"  {label}: {_median(times) * 1e3:.3f} ms median of {len(times)} calls")
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(n):
            ttft(20 + n + i)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
