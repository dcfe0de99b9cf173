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
    skinny_vs_cublas(engine.runner.model)
    from benchmarks.prefill_sweep import main as prefill_sweep  # the lone prompt's attention, by tiling
    prefill_sweep("lone")
    single_stream_device(engine, params)
    ttft_steps(engine)
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
    engine.add_request("t3", [t + 3 for t in range(9, 1033)], SamplingParams(temperature=0.0, max_tokens=1))
    kernels(lambda: engine.step(), 1, "lone 1024-token prefill step")
    batch_of_256(engine)


def per_call(fn, calls: int) -> float:
    """Seconds per call of fn, the device's queue drained before and after."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


def kernels(fn, steps: int, label: str) -> None:
    """Run fn `steps` times under torch.profiler: the device's kernel time per step against the wall time,
    and the kernels that take it."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / steps
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    device = sum(e.self_device_time_total for e in events) / steps / 1e3
    count = sum(e.count for e in events) / steps
    print(f"{label}: wall {wall * 1e3:.3f} ms (profiled), kernels {device:.3f} ms, {count:.0f} kernels per step")
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=22, max_name_column_width=60))


def skinny_vs_cublas(model) -> None:
    """Each projection shape of the model at 1, 4 and 16 rows: cuBLAS (F.linear), the Triton skinny
    kernel at its own tiling, and the best of a sweep of tilings, timed in CUDA graphs."""
    import itertools

    import torch.nn.functional as F
    from triton.testing import do_bench_cudagraph

    from engine.models.layers import Linear
    from engine.models.triton_skinny_matmul import Tiling, skinny_linear, tiling

    shapes = sorted({tuple(m.weight.shape) for m in model.modules() if isinstance(m, Linear) and m.weight.numel()})
    sweep = [Tiling(bn, bk, sp, w, st) for bn, bk, sp, w, st in itertools.product(
        (16, 32, 64), (128, 256, 512), (1, 2, 4, 8), (4,), (3, 5)) if bn * bk <= 16384]
    print(f"{'N x K':>14} {'rows':>4} {'cuBLAS us':>9} {'TB/s':>5} {'ours us':>8} {'TB/s':>5} {'best us':>8} {'TB/s':>5}  best tiling")
    for n, k in shapes:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        for rows in (1, 4, 16):
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            t_cublas = do_bench_cudagraph(lambda: F.linear(x, w), rep=30) * 1e3
            t_ours = do_bench_cudagraph(lambda: skinny_linear(x, w, None, tiling(n, k)), rep=30) * 1e3
            best = (float("inf"), None)
            if rows != 4:
                for tile in sweep:
                    try:
                        t = do_bench_cudagraph(lambda tile=tile: skinny_linear(x, w, None, tile), rep=15) * 1e3
                    except Exception:  # noqa: BLE001 (a tiling past the shared memory)
                        continue
                    best = min(best, (t, tile), key=lambda b: b[0])
            rate = lambda t: w.numel() * 2 / (t * 1e-6) / 1e12  # noqa: E731
            print(f"{n:>6} x {k:<6} {rows:>4} {t_cublas:>9.2f} {rate(t_cublas):>5.2f} {t_ours:>8.2f} "
                  f"{rate(t_ours):>5.2f} {best[0]:>8.2f} {rate(best[0]):>5.2f}  {best[1]}")


def ttft_steps(engine) -> None:
    """TTFT of a lone 1,024-token prompt as gpu_w256.py takes it, each step() call inside it, whether
    its prefill replayed a captured graph, and (last round) where the host's time goes."""
    graphs = engine.runner.prefill_graphs
    replays = []
    if graphs is not None:
        run = graphs.run
        graphs.run = lambda chunks, meta: replays.append(len(chunks[0].token_ids)) or run(chunks, meta)
    for i in range(5):
        stamps = []
        prof = cProfile.Profile()
        if i == 4:
            prof.enable()
        start = time.perf_counter()
        engine.add_request(f"ttft{i}", [(t * 13 + i) % 150000 + 1 for t in range(1024)],
                           SamplingParams(temperature=0.0, max_tokens=1))
        while engine.has_unfinished_requests():
            t0 = time.perf_counter()
            out = engine.step()
            stamps.append(f"{(time.perf_counter() - t0) * 1e3:.2f}{'*' if out.outputs else ''}")
        prof.disable()
        print(f"TTFT {(time.perf_counter() - start) * 1e3:.2f} ms; step() calls (ms, * = with output): {stamps}; "
              f"prefill graph replays so far {replays}")
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    if graphs is not None:
        del graphs.run  # the class's method again


def single_stream_device(engine, params) -> None:
    """A lone sequence's decode step: wall time, its batch-1 graph replayed alone, and its kernels."""
    engine.add_request("single-dev", list(range(11, 139)), SamplingParams(temperature=0.0, max_tokens=400,
                                                                          ignore_eos=True))
    for _ in range(8):
        engine.step()
    print(f"single-stream step {per_call(engine.step, 64) * 1e3:.3f} ms wall")
    graphs = engine.runner.graphs.graphs
    print(f"batch-{min(graphs)} graph replayed alone {per_call(graphs[min(graphs)].graph.replay, 200) * 1e3:.3f} ms")
    kernels(lambda: engine.step(), 32, "single-stream step")
    engine.abort("single-dev")
    while engine.has_unfinished_requests():
        engine.step()


def batch_of_256(engine) -> None:
    """Decode steps of 256 sequences (W256's width): wall time per step against a bare graph replay."""
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    for i in range(256):
        engine.add_request(f"b{i}", [(t * 7 + i) % 150000 + 1 for t in range(600)], params)
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running + list(engine.scheduler.waiting)):
        engine.step()
    for _ in range(4):
        engine.step()
    wall = per_call(engine.step, 16)
    device = per_call(engine.runner.graphs.graphs[256].graph.replay, 16)
    print(f"256-sequence decode step {wall * 1e3:.2f} ms wall; its graph replayed alone {device * 1e3:.2f} ms")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(12):
        engine.step()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
