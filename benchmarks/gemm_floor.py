"""The F.linear floor of a generation workload on the CPU: its fp32 matmuls as torch's F.linear
runs them, nothing else.

An engine that runs a model in fp32 through F.linear (HF `generate` does) performs at least these
products per step: each Linear of each layer over the step's tokens, and the LM head over the rows
it samples. Timing them alone, with the model's own weights and shapes, bounds how fast any such
engine can go on this machine: output tokens / floor seconds is a ceiling on its tok/s. PagedChat
passes it because its decode steps take another route to the same products
(engine.models.blocked_matmul).
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from engine.models.layers import Linear


def _pass(weights: list[torch.Tensor], head: torch.Tensor, tokens: int, sampled: int) -> float:
    """Seconds for one forward's F.linear products: every weight over `tokens` rows, the head over `sampled`."""
    xs = {w.shape[1]: torch.randn(tokens, w.shape[1]) for w in weights}
    x_head = torch.randn(sampled, head.shape[1])
    start = time.perf_counter()
    for w in weights:
        F.linear(xs[w.shape[1]], w)
    F.linear(x_head, head)
    return time.perf_counter() - start


@torch.inference_mode()
def matmul_floor(model: torch.nn.Module, prompt_lens: list[int], new_tokens: int, repeats: int = 5) -> float:
    """Seconds of fp32 matmuls for: one prefill of all prompts (head over one row each), then
    new_tokens - 1 decode steps of len(prompt_lens) rows. Median of `repeats` timings of each pass."""
    lm = getattr(model, "lm_head", None)
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, Linear) and m is not lm]
    head = (lm.weight if lm is not None else model.model.embed_tokens.weight).detach()
    batch = len(prompt_lens)
    _pass(weights, head, batch, batch)  # warm-up
    prefill = statistics.median(_pass(weights, head, sum(prompt_lens), batch) for _ in range(repeats))
    decode = statistics.median(_pass(weights, head, batch, batch) for _ in range(repeats))
    return prefill + (new_tokens - 1) * decode
