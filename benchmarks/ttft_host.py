"""The host's share of a lone prompt's TTFT: the engine's steps for a 1,024-token prompt (max_tokens
1) on the CPU with the model's forward stubbed out (a tiny random model whose logits are a
constant), so what is left is the Python around a step: the request's arrival, scheduling, the
step's inputs, taking the token (the prefix cache's registration of the prompt's blocks in it),
detokenizing. Medians over 200 prompts, the whole and per part (parts nest; a part that runs twice
a prompt, as in the detokenizing step, is counted per call).

    python benchmarks/ttft_host.py
"""
from __future__ import annotations

import functools
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.synthetic_model import make_model_dir  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402
from engine.runner.model_runner import PendingTokens  # noqa: E402

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, vocab_size=512, tie_word_embeddings=False, max_position_embeddings=4096)


def main() -> None:
    torch.set_num_threads(1)
    llm = LLM(str(make_model_dir("/tmp/ttft-host-tiny", TINY, dtype=torch.float32, seed=1)), device="cpu",
              max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=2048)
    engine, runner = llm.engine, llm.engine.runner
    logits = torch.zeros(1, TINY["vocab_size"])
    runner._logits_of = lambda ids, pos, meta: logits.expand(meta.logits_indices.shape[0], -1)
    parts: dict[str, list[float]] = {}

    def timed(owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                parts.setdefault(label, []).append(time.perf_counter() - start)
        setattr(owner, name, wrapper)

    for owner, name, label in [(engine, "add_request", "arrival"), (engine.scheduler, "schedule", "schedule"),
                               (engine, "_prepare", "prepare"), (runner, "launch", "launch"),
                               (runner.inputs, "build", "  launch: the step's inputs"),
                               (engine, "_take", "take the token"), (PendingTokens, "result", "  take: wait"),
                               (engine.scheduler, "update", "  take: scheduler update"),
                               (engine.block_manager, "cache_full_blocks", "    update: prefix-cache registration"),
                               (engine, "_account", "  take: accounting"),
                               (engine, "_detokenize_all", "detokenize"), (engine, "_snapshot", "metrics snapshot")]:
        timed(owner, name, label)
    rng = random.Random(0)
    lone = [rng.randrange(500) for _ in range(1024)]

    def ttft(i: int) -> float:
        start = time.perf_counter()
        engine.add_request(f"t{i}", [(t + i) % 500 for t in lone], SamplingParams(temperature=0.0, max_tokens=1))
        while engine.has_unfinished_requests():
            engine.step()
        return time.perf_counter() - start

    for i in range(20):
        ttft(i)
    parts.clear()
    n = 200
    total = sorted(ttft(1000 + i) for i in range(n))
    print(f"host time of a lone 1,024-token prompt's TTFT, median of {n}: {total[n // 2] * 1e3:.3f} ms")
    for label, times in parts.items():
        times = sorted(times)
        print(f"  {label}: {times[len(times) // 2] * 1e3:.3f} ms median of {len(times)} calls")


if __name__ == "__main__":
    main()
