"""Where the time to first token goes on the GPU: the TTFT of a lone 1,024-token prompt as
gpu_w256.py takes it (random-weight Qwen3-0.6B shape, bf16, same engine settings), 9 tries, then
three more under torch.profiler: the kernels by GPU time, the host's calls by CPU time, and a Chrome
trace (Perfetto opens it) in $OUT or /tmp, where the host's launch and the GPU's span can be read.

    python benchmarks/ttft_anatomy.py [TREE]    # TREE: a checkout to time instead of this one (A/B)
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

tree = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, tree)

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from benchmarks.gpu_w256 import workload  # noqa: E402
from benchmarks.synthetic_model import QWEN3_0_6B, make_model_dir  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402


def main() -> None:
    prompts = workload(256, QWEN3_0_6B["vocab_size"])
    llm = LLM(str(make_model_dir("/tmp/qwen3-0.6b-random")), dtype="bfloat16", max_num_seqs=256,
              max_num_batched_tokens=8192, max_model_len=2048)
    engine = llm.engine
    llm.generate(prompts[:8], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))  # warm-up
    lone = max(prompts, key=len)[:1024]

    def ttft(i: int) -> tuple[float, int]:
        start = time.perf_counter()
        engine.add_request(f"t{i}", [t + i for t in lone], SamplingParams(temperature=0.0, max_tokens=1))
        steps = 0
        while engine.has_unfinished_requests():
            engine.step()
            steps += 1
        return (time.perf_counter() - start) * 1e3, steps

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, code from {tree}")
    print("TTFT ms (/ engine steps):", [f"{ms:.2f}/{steps}" for ms, steps in (ttft(i) for i in range(9))])
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(3):
            ttft(100 + i)
    trace = Path(os.environ.get("OUT", "/tmp")) / "ttft_trace.json"
    prof.export_chrome_trace(str(trace))
    print(f"trace: {trace}")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
