"""The host's share of a wide decode step: 256 sequences decoding at once (W256's prompts, 256 new
tokens, greedy or top-p seeded), the steps with all 256 running timed whole and part by part
(scheduling, preparing, the step's inputs, the launch, taking the tokens, detokenizing, ...;
medians per step; parts nest).

On the CPU (default) the model's forward is stubbed out (a tiny random model whose logits come
from a fixed random table) with overlapped scheduling on, as on the GPU, so what is timed is the
Python around a step. With --gpu it is the real thing, as gpu_w256.py runs it (random-weight
Qwen3-0.6B shape, bf16, the same engine settings); there a step is host-bound when its wait is ~0.

    python benchmarks/decode_host.py            # this machine's CPU, the forward stubbed out
    python benchmarks/decode_host.py --gpu      # on the GPU machine
    python benchmarks/decode_host.py --profile  # then cProfile of the wide steps: top functions
    python benchmarks/decode_host.py --ramp     # the parts of the ramp's steps instead (totals a step)
"""
from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gpu_w256 import workload  # noqa: E402
from benchmarks.synthetic_model import QWEN3_0_6B, make_model_dir  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402
from engine.runner.model_runner import PendingTokens  # noqa: E402

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, vocab_size=4096, tie_word_embeddings=False, max_position_embeddings=4096)
WIDTH = 256


def _median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2] if times else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="the real model on the GPU, nothing stubbed")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--tokenizer", choices=["byte-level", "word"], default="byte-level",
                        help="the synthetic tokenizer: byte-level as Qwen3's (default), or word-level")
    parser.add_argument("--steps", action="store_true", help="list the ramp's and the tail's steps")
    parser.add_argument("--profile", action="store_true", help="then the same workload under cProfile")
    parser.add_argument("--ramp", action="store_true",
                        help="time the parts of the ramp's steps (prompts prefilled, decodes mixed in) instead of the "
                             "wide ones: on the GPU, whether the host waits for the device there (take: wait)")
    args = parser.parse_args()
    if args.gpu:
        llm = LLM(str(make_model_dir(f"/tmp/qwen3-0.6b-random-{args.tokenizer}", tokenizer=args.tokenizer)), dtype="bfloat16", max_num_seqs=WIDTH,
                  max_num_batched_tokens=8192, max_model_len=2048)
        vocab = QWEN3_0_6B["vocab_size"]
    else:
        torch.set_num_threads(1)
        os.environ["TRITON_INTERPRET"] = "1"  # the triton backend's step inputs, as on the GPU; no kernel runs
        llm = LLM(str(make_model_dir(f"/tmp/decode-host-tiny-{args.tokenizer}", TINY, dtype=torch.float32, seed=1,
                                      tokenizer=args.tokenizer)), device="cpu",
                  max_num_seqs=WIDTH, max_num_batched_tokens=8192, max_model_len=2048, async_scheduling=True, attention_backend="triton",
                  num_blocks=WIDTH * 96)
        vocab = TINY["vocab_size"]
        table = torch.randn(64, WIDTH, vocab, generator=torch.Generator().manual_seed(0))
        calls = [0]

        def logits_of(ids: Any, pos: Any, meta: Any) -> torch.Tensor:
            calls[0] += 1
            rows = meta.logits_indices.shape[0]
            return table[calls[0] % 64, :rows] if rows <= WIDTH else torch.randn(rows, vocab)
        llm.engine.runner._logits_of = logits_of
    engine, runner = llm.engine, llm.engine.runner
    prompts = workload(WIDTH, vocab)
    llm.generate(prompts[:8], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    gc.collect()
    gc.freeze()  # as app.py does once started
    parts: dict[str, list[float]] = {}
    on = [False]
    timed_steps = [0]

    def timed(owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                if on[0]:
                    parts.setdefault(label, []).append(time.perf_counter() - start)
        setattr(owner, name, wrapper)

    for owner, name, label in [
            (engine.scheduler, "schedule", "schedule"), (engine, "_prepare", "prepare"), (runner, "launch", "launch"),
            (runner.inputs, "build", "  launch: the step's inputs"), (runner.sampler, "sample", "  launch: sample"),
            (engine, "_take", "take"), (PendingTokens, "result", "  take: wait"),
            (engine.scheduler, "resolve", "  take: scheduler resolve"), (engine, "_account", "  take: accounting"),
            (engine, "_detokenize_all", "detokenize"), (engine.scheduler, "advance", "advance"),
            (engine, "_snapshot", "metrics snapshot")]:
        timed(owner, name, label)
    if engine._recorder:
        timed(engine._recorder, "scheduled", "feed: scheduled")
        timed(engine._recorder, "close_step", "feed: close_step")

    pauses: list[tuple[int, float]] = []  # the garbage collector's: (generation, seconds)
    gc_start = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - gc_start[0]))
    gc.callbacks.append(on_gc)

    def run(tag: str, params: SamplingParams) -> list[float]:
        """The wide steps' times; prints the whole run's phases: the ramp (prompts prefilled, up to the
        first step with all WIDTH decoding), the wide steps, and the tail."""
        llm.reset_prefix_cache()  # cold: the prompts are prefilled each run
        pauses.clear()
        begin = time.perf_counter()
        for i, p in enumerate(prompts):
            engine.add_request(f"{tag}{i}", p, params)
        steps, ramp, ramp_log, tail_log = [], None, [], []
        timed_steps[0] = 0
        while engine.has_unfinished_requests():
            wide = (len(engine.scheduler.running) == WIDTH and not engine.scheduler.waiting
                    and engine.metrics.steps > 0 and all(s.num_uncomputed_tokens <= 1 for s in engine.scheduler.running))
            start = time.perf_counter()
            if wide and ramp is None:
                ramp = start - begin
            on[0] = ramp is None if args.ramp else wide  # whose parts are timed
            timed_steps[0] += on[0]
            snap = engine.step().metrics
            on[0] = False
            if wide:
                steps.append(time.perf_counter() - start)
            else:  # (sequences, prompt tokens, ms) of each step outside the wide ones
                (ramp_log if ramp is None else tail_log).append(
                    f"{snap.batch_size}/{snap.num_prefill_tokens}/{(time.perf_counter() - start) * 1e3:.1f}")
        on[0] = False
        total = time.perf_counter() - begin
        print(f"{tag}: {total * 1e3:.0f} ms in all: ramp {len(ramp_log)} steps {(ramp or 0) * 1e3:.0f} ms "
              f"({sum(map(len, prompts)):,} prompt tokens), {len(steps)} wide steps {sum(steps) * 1e3:.0f} ms, "
              f"tail {len(tail_log)} steps {(total - (ramp or 0) - sum(steps)) * 1e3:.0f} ms")
        full = [t for g, t in pauses if g == 2]
        print(f"  garbage collections: {len(pauses)}, {sum(t for _, t in pauses) * 1e3:.0f} ms; of the oldest "
              f"generation {len(full)}, longest {max(full, default=0) * 1e3:.1f} ms; tracked objects {len(gc.get_objects()):,}")
        if args.steps:
            print(f"  ramp steps (sequences/prompt tokens/ms): {' '.join(ramp_log)}")
            print(f"  tail steps: {' '.join(tail_log)}")
        return steps

    where = (torch.cuda.get_device_name() if args.gpu else "the CPU, forward stubbed") + f", {args.tokenizer} tokenizer"
    for name, params in [("greedy", SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)),
                         ("top-p seeded", SamplingParams(temperature=0.7, top_p=0.9, seed=1,
                                                         max_tokens=args.new_tokens, ignore_eos=True))]:
        parts.clear()
        steps = run(name, params)
        print(f"{name} on {where}: {len(steps)} steps {WIDTH} wide, median {_median(steps) * 1e3:.3f} ms")
        if args.ramp:
            print(f"  the ramp's {timed_steps[0]} steps, each part's total a step:")
            for label, times in parts.items():
                print(f"  {label}: {sum(times) / max(1, timed_steps[0]) * 1e3:.3f} ms a step ({len(times)} calls)")
            continue
        for label, times in parts.items():
            print(f"  {label}: {_median(times) * 1e3:.3f} ms x {len(times) / max(1, len(steps)):.1f} a step")
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        run("profile", SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True))
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(35)


if __name__ == "__main__":
    main()
