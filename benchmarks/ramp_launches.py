"""The host's time to launch each step of W256's ramp (every prompt prefilled, 8,192 tokens a step beside
the decodes already started), the share of it spent in the matmuls' calls (F.linear), and whether the
device was still busy with the step before when the launch began. A ramp step's kernels take about
17 ms on an H200: a launch longer than that, begun on an idle device, makes the ramp host-bound.

With --profile, torch.profiler over the third to the tenth launch: the CPU time of each aten::mm by its
shapes. That is how the session of 2026-11-29 found a matmul at a row count cuBLAS had not seen taking
3.4-5.4 ms of host time (StepInputs' row_sizes and token_sizes since).

    python benchmarks/ramp_launches.py [--profile]     # on the GPU machine
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gpu_w256 import workload  # noqa: E402
from benchmarks.synthetic_model import QWEN3_0_6B, make_model_dir  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402

SHOWN = 24  # launches listed: the ramp's 20 and the first wide decode steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true", help="aten::mm's host time by shape (torch.profiler)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    llm = LLM(str(make_model_dir("/tmp/qwen3-0.6b-random-byte-level", tokenizer="byte-level")), dtype="bfloat16",
              max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=2048)
    runner = llm.engine.runner
    prompts = workload(256, QWEN3_0_6B["vocab_size"])
    llm.generate(prompts[:8], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    gc.collect()
    gc.freeze()  # as app.py and gpu_w256.py do once started

    linear_calls = [0.0, 0]  # seconds and calls of F.linear within the launch being timed
    real_linear = F.linear

    def timed_linear(*a: Any, **k: Any) -> torch.Tensor:
        start = time.perf_counter()
        try:
            return real_linear(*a, **k)
        finally:
            linear_calls[0] += time.perf_counter() - start
            linear_calls[1] += 1

    launches: list[tuple[int, int, bool, float, float, int]] = []  # chunks, tokens, busy, ms, linear ms, calls
    launch = runner.launch
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                  torch.profiler.ProfilerActivity.CUDA], record_shapes=True)

    def timed_launch(chunks: list, *a: Any, **k: Any) -> Any:
        busy = not torch.cuda.current_stream().query()
        if args.profile and len(launches) == 2:
            profiler.__enter__()
        linear_calls[0], linear_calls[1] = 0.0, 0
        start = time.perf_counter()
        try:
            return launch(chunks, *a, **k)
        finally:
            ms = (time.perf_counter() - start) * 1e3
            launches.append((len(chunks), sum(len(c.token_ids) for c in chunks), busy, ms,
                             linear_calls[0] * 1e3, linear_calls[1]))
            if args.profile and len(launches) == 10:
                profiler.__exit__(None, None, None)

    F.linear = timed_linear
    runner.launch = timed_launch
    llm.reset_prefix_cache()  # cold: the prompts are prefilled
    start = time.perf_counter()
    llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True))
    total = (time.perf_counter() - start) * 1e3
    F.linear = real_linear
    ramp = next((i for i, (_, tokens, *_rest) in enumerate(launches) if tokens <= 256), len(launches))
    print(f"{torch.cuda.get_device_name()}: W256 with 24 new tokens in {total:.0f} ms; its ramp {ramp} steps, "
          f"launched in {sum(row[3] for row in launches[:ramp]):.0f} ms\n")
    print("| step | sequences | tokens | device busy at the launch | launch ms | F.linear ms | F.linear calls |")
    print("| ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for i, (seqs, tokens, busy, ms, linear_ms, calls) in enumerate(launches[:SHOWN]):
        print(f"| {i} | {seqs} | {tokens} | {'yes' if busy else 'no'} | {ms:.1f} | {linear_ms:.1f} | {calls} |")
    if args.profile:
        averages = profiler.key_averages(group_by_input_shape=True)
        print(averages.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=30,
                             max_shapes_column_width=70))


if __name__ == "__main__":
    main()
