"""The lone 1,024-token prompt's prefill graph on the GPU, timed without a profiler: the TTFT (as
gpu_w256.py takes it, 9 tries), the graph's GPU work (replayed on a busy stream), the host's time to
launch it and the launch-to-done wall time (CUDA events), and the same for the forward captured in
2, 3 and 4 graphs cut at layer boundaries: does a split let the GPU start before the host has
launched it all? (Random-weight Qwen3-0.6B shape, bf16, gpu_w256.py's engine settings.)

    python benchmarks/ttft_graph_split.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gpu_w256 import workload  # noqa: E402
from benchmarks.synthetic_model import QWEN3_0_6B, make_model_dir  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402
from engine.runner.step_inputs import Padding  # noqa: E402


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def timed(replay: Callable[[], None], reps: int = 20) -> str:
    host, wall, gpu = [], [], []
    for _ in range(reps):
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        e0.record()
        replay()
        t1 = time.perf_counter()
        e1.record()
        e1.synchronize()
        t2 = time.perf_counter()
        host.append((t1 - t0) * 1e3)
        wall.append((t2 - t0) * 1e3)
        gpu.append(e0.elapsed_time(e1))
    return f"launch on the host {median(host):.3f} ms, launch to done {median(wall):.3f} ms, events {median(gpu):.3f} ms"


def main() -> None:
    prompts = workload(256, QWEN3_0_6B["vocab_size"])
    llm = LLM(str(make_model_dir("/tmp/qwen3-0.6b-random")), dtype="bfloat16", max_num_seqs=256,
              max_num_batched_tokens=8192, max_model_len=2048)
    engine, runner = llm.engine, llm.engine.runner
    llm.generate(prompts[:8], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))  # warm-up
    lone = max(prompts, key=len)[:1024]

    def ttft(i: int) -> float:
        start = time.perf_counter()
        engine.add_request(f"t{i}", [t + i for t in lone], SamplingParams(temperature=0.0, max_tokens=1))
        while engine.has_unfinished_requests():
            engine.step()
        return (time.perf_counter() - start) * 1e3

    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    print("TTFT ms:", [round(ttft(i), 2) for i in range(9)])
    graphs = runner.prefill_graphs
    whole = graphs.graphs[(1024, True)]
    layers = runner.model.model.layers
    with torch.inference_mode():
        meta = runner.inputs.build([], pad=Padding(1, 1024, graphs.max_blocks, True)).meta

    def busy_gpu_work() -> float:  # the second of two back-to-back replays: no launch in its time
        torch.cuda.synchronize()
        whole.graph.replay()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        whole.graph.replay()
        e1.record()
        e1.synchronize()
        return e0.elapsed_time(e1)

    print(f"the graph's GPU work: {median([busy_gpu_work() for _ in range(10)]):.3f} ms")
    print("one graph:", timed(whole.graph.replay))
    reference = whole.logits.clone()
    for n in (2, 3, 4):
        pieces = [torch.cuda.CUDAGraph() for _ in range(n)]
        at = {"piece": 0}

        def cut(module: torch.nn.Module, args: tuple) -> None:  # ends a piece's capture before a layer
            pieces[at["piece"]].capture_end()
            at["piece"] += 1
            pieces[at["piece"]].capture_begin(pool=pieces[0].pool())

        hooks = [layers[len(layers) * k // n].register_forward_pre_hook(cut) for k in range(1, n)]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        torch.cuda.synchronize()
        with torch.inference_mode(), torch.cuda.stream(stream):
            pieces[0].capture_begin()
            logits = runner._logits_of(meta.input_ids, meta.positions, meta)
            pieces[-1].capture_end()
        torch.cuda.synchronize()
        for hook in hooks:
            hook.remove()

        def replay_all() -> None:
            for piece in pieces:
                piece.replay()

        replay_all()
        torch.cuda.synchronize()
        print(f"{n} graphs:", timed(replay_all), "| the same logits:", torch.equal(logits, reference))
    print("one graph again:", timed(whole.graph.replay))
    print("TTFT ms again:", [round(ttft(100 + i), 2) for i in range(9)])


if __name__ == "__main__":
    main()
