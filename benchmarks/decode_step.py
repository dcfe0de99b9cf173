"""Time one decode step (forward + logits of the sampled rows) of our model through the paged cache.

    python -m benchmarks.decode_step [--model embedded] [--threads 2] [--batch 1 16] [--context 100]

Prints a table: hardware, model, dtype, threads, batch, context, median and best step time, and
the time of the step's matmuls alone (the floor that the rest of the step adds to).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.cpu_throughput import cpu_name
from engine.attention import get_backend
from engine.attention.backend import AttentionShape
from engine.runner.forward_metadata import ScheduledChunk
from engine.runner.step_inputs import build_metadata
from engine.runner.model_loader import load_model, resolve_model
from engine.models import LlamaForCausalLM
from engine.models.layers import Linear

BLOCK_SIZE = 16


def time_decode(model: LlamaForCausalLM, batch: int, context: int, steps: int) -> list[float]:
    """Prefill `batch` random prompts of `context` tokens, then time `steps` decode steps (seconds each)."""
    cfg = model.config
    blocks_per_seq = (context + steps + BLOCK_SIZE) // BLOCK_SIZE + 1
    caches = [torch.zeros(2, batch * blocks_per_seq, BLOCK_SIZE, cfg.num_kv_heads, cfg.head_dim)
              for _ in range(cfg.num_layers)]
    tables = [list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)) for i in range(batch)]
    prompts = torch.randint(0, cfg.vocab_size, (batch, context)).tolist()
    chunks = [ScheduledChunk(p, 0, t, 1) for p, t in zip(prompts, tables)]
    # planned once a step, for every layer, as the engine's StepInputs does
    backend = model.model.layers[0].self_attn.backend
    shape = AttentionShape(cfg.num_heads, cfg.num_kv_heads, batch * blocks_per_seq * BLOCK_SIZE, torch.device("cpu"))
    times = []
    with torch.inference_mode():
        for step in range(steps + 1):
            meta = build_metadata(chunks, BLOCK_SIZE, "cpu", backend, shape)
            start = time.perf_counter()
            hidden = model(meta.input_ids, meta.positions, caches, meta)
            next_ids = model.compute_logits(hidden[meta.logits_indices]).argmax(-1).tolist()
            if step:  # step 0 is the prefill
                times.append(time.perf_counter() - start)
            chunks = [ScheduledChunk([t], context + step, tab, 1) for t, tab in zip(next_ids, tables)]
    return times


def time_matmuls_only(model: LlamaForCausalLM, batch: int, steps: int) -> list[float]:
    """The floor under a decode step: only its matmuls (every projection, then the LM head), in order."""
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    head = model.model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    inputs = [torch.randn(batch, m.weight.shape[1]) for m in linears]
    times = []
    with torch.inference_mode():
        for _ in range(steps):
            start = time.perf_counter()
            for m, x in zip(linears, inputs):
                m(x)
            F.linear(inputs[0], head)
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--context", type=int, default=100)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(resolve_model(args.model), get_backend("torch", "cpu"), torch.float32, "cpu")
    print(f"hardware: {cpu_name()}, {torch.get_num_threads()} threads; "
          f"model: {args.model} fp32; torch attention backend; block size {BLOCK_SIZE}")
    print(f"{'batch':>5} {'context':>7} {'median ms':>9} {'best ms':>8} {'matmuls only, median ms':>24}")
    for batch in args.batch:
        times = time_decode(model, batch, args.context, args.steps)
        floor = time_matmuls_only(model, batch, args.steps)
        print(f"{batch:>5} {args.context:>7} {statistics.median(times) * 1e3:>9.1f} {min(times) * 1e3:>8.1f} "
              f"{statistics.median(floor) * 1e3:>24.1f}")


if __name__ == "__main__":
    main()
