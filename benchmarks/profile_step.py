"""Where a step's time goes on the GPU machine: cProfile of single-stream decode and of a lone prefill.

    python benchmarks/profile_step.py [--model-dir /tmp/qwen3-0.6b-random]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.synthetic_model import make_model_dir  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default="/tmp/qwen3-0.6b-random")
    args = ap.parse_args()
    llm = LLM(str(make_model_dir(args.model_dir)), dtype="bfloat16", max_num_seqs=256, max_num_batched_tokens=8192,
              max_model_len=2048)
    engine = llm.engine
    print("blocks", engine.runner.num_blocks, "graphs", engine.runner.graphs is not None)
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    llm.generate([list(range(5, 133))], params)
    prof = cProfile.Profile()
    engine.add_request("single", list(range(7, 135)), params)
    engine.step()
    start = time.perf_counter()
    prof.enable()
    while engine.has_unfinished_requests():
        engine.step()
    prof.disable()
    print(f"single-stream step {(time.perf_counter() - start) / 63 * 1e3:.2f} ms (profiled)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    prof = cProfile.Profile()
    for i in range(3):
        engine.add_request(f"t{i}", [t + i for t in range(9, 1033)], SamplingParams(temperature=0.0, max_tokens=1))
        torch.cuda.synchronize()
        start = time.perf_counter()
        if i == 2:
            prof.enable()
        engine.step()
        prof.disable()
        print(f"lone 1024-token prefill step {(time.perf_counter() - start) * 1e3:.2f} ms")
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    batch_of_256(engine)


def batch_of_256(engine) -> None:
    """Decode steps of 256 sequences (W256's width): wall time per step against a bare graph replay."""
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    for i in range(256):
        engine.add_request(f"b{i}", [(t * 7 + i) % 150000 + 1 for t in range(600)], params)
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running + list(engine.scheduler.waiting)):
        engine.step()
    for _ in range(4):
        engine.step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(16):
        engine.step()
    wall = (time.perf_counter() - start) / 16
    replay = engine.runner.graphs.graphs[256].graph
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(16):
        replay.replay()
    torch.cuda.synchronize()
    device = (time.perf_counter() - start) / 16
    print(f"256-sequence decode step {wall * 1e3:.2f} ms wall; its graph replayed alone {device * 1e3:.2f} ms")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(12):
        engine.step()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
