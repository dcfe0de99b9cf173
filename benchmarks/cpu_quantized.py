"""CPU decode with quantized weights: our engine at fp32, int8 and int4 (and fp32 and int4 with their
decode steps compiled, --compile) against llama.cpp on the very same GGUF file, in the same run.

Workloads (greedy, EOS ignored, 2 threads):
- single: one chat request, 128 new tokens: decode tok/s as a lone visitor feels it;
- batch: the 16 chat prompts of assets/prompts.txt at once, 128 new tokens each: aggregate tok/s.
Quality beside speed: perplexity of assets/text/lighthouse.txt and how many of 64 greedy tokens
after its first 400 characters agree with fp32's.

llama.cpp is llama-cpp-python, built once by this benchmark (`pip install llama-cpp-python`
compiles llama.cpp for this CPU: minutes) into benchmarks/.llama-cpp (not by CI). Its batch row is
the 16 prompts one after another (llama-cpp-python serves one sequence at a time). Runs take turns
(--rounds), since this kind of machine's speed drifts over minutes.

    python benchmarks/cpu_quantized.py [--rounds 2] [--new-tokens 128] [--skip-llama-cpp] [--no-compile]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_throughput import cpu_name  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402
from engine.runner.embedded_model import embedded_gguf_path  # noqa: E402

LLAMA_DIR = ROOT / "benchmarks" / ".llama-cpp"
TEXT = (ROOT / "assets" / "text" / "lighthouse.txt").read_text()
QUESTION = [{"role": "user", "content": "Tell me about the history of lighthouses."}]


def llama_cpp():
    """llama_cpp, built here once (into LLAMA_DIR) if it is not importable."""
    try:
        import llama_cpp
        return llama_cpp
    except ImportError:
        pass
    if not (LLAMA_DIR / "llama_cpp").exists():
        print("building llama-cpp-python (once; minutes) ...", flush=True)
        # built for this CPU, AMX left out: a VM may list AMX in /proc/cpuinfo and still refuse its
        # instructions (llama.cpp died of SIGILL on such a 2-vCPU Xeon); a one-row decode, bound by
        # reading the weights, gains little from it
        no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        env = {**os.environ, "CMAKE_ARGS": f"-DCMAKE_C_FLAGS='{no_amx}' -DCMAKE_CXX_FLAGS='{no_amx}'"}
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir", "--target", str(LLAMA_DIR),
                        "--no-deps", "llama-cpp-python", "diskcache", "jinja2"], check=True, env=env)
    sys.path.insert(0, str(LLAMA_DIR))
    import llama_cpp
    return llama_cpp


def prompts(llm: LLM) -> list[list[int]]:
    lines = [x for x in (ROOT / "assets" / "prompts.txt").read_text().splitlines() if x.strip()][:16]
    return [llm.engine.encode_chat([{"role": "user", "content": q}]) for q in lines]


def ours(llm: LLM, batch: list[list[int]], new: int) -> tuple[float, float]:
    """(single-request tok/s, 16-prompt aggregate tok/s)."""
    params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    one = llm.engine.encode_chat(QUESTION)
    llm.generate([one], SamplingParams(temperature=0.0, max_tokens=4))  # warm
    start = time.perf_counter()
    llm.generate([one], params)
    single = new / (time.perf_counter() - start)
    llm.reset_prefix_cache()
    start = time.perf_counter()
    llm.generate(batch, params)
    return single, len(batch) * new / (time.perf_counter() - start)


def quality(llm: LLM) -> tuple[float, list[int]]:
    result = llm.generate([TEXT], SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
    nll = [-lp.token.logprob for lp in result.outputs[0].prompt_logprobs[1:]]
    greedy = llm.generate([TEXT[:400]], SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))[0]
    return float(torch.tensor(nll).mean().exp()), greedy.outputs[0].token_ids


def theirs(model, batch: list[list[int]], new: int) -> tuple[float, float]:
    def run(tokens: list[int]) -> None:
        model.reset()
        n = 0
        for _ in model.generate(tokens, temp=0.0, top_k=1, reset=True):
            n += 1
            if n >= new:
                break
    one = batch[0]
    run(one[:8])
    start = time.perf_counter()
    run(one)
    single = new / (time.perf_counter() - start)
    start = time.perf_counter()
    for p in batch:
        run(p)
    return single, len(batch) * new / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-llama-cpp", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="leave out the engines that compile their decode steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engines = {mode: LLM("embedded", quantization=None if mode == "fp32" else mode) for mode in ("fp32", "int8", "int4")}
    if not args.no_compile:  # decode steps through torch.compile (--compile): compiles here, a minute or two each
        for mode in ("fp32", "int4"):
            engines[f"{mode}, compiled"] = LLM("embedded", quantization=None if mode == "fp32" else mode,
                                               compile_decode=True)
    batch = prompts(engines["fp32"])
    quality_of = {mode: quality(llm) for mode, llm in engines.items()}
    gguf = None
    if not args.skip_llama_cpp:
        lib = llama_cpp()
        gguf = lib.Llama(str(embedded_gguf_path()), n_threads=args.threads, n_ctx=1024, verbose=False)
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in [*engines, "llama.cpp"]}
    for _ in range(args.rounds):
        for mode, llm in engines.items():
            rows[mode].append(ours(llm, batch, args.new_tokens))
        if gguf is not None:
            rows["llama.cpp"].append(theirs(gguf, batch, args.new_tokens))
    base_ppl, base_tokens = quality_of["fp32"]
    print(f"\nCPU: {cpu_name()}, {args.threads} threads, torch {torch.__version__}")
    print(f"Model: SmolLM2-135M-Instruct ({embedded_gguf_path().name}); greedy, EOS ignored, "
          f"{args.new_tokens} new tokens; best of {args.rounds} rounds\n")
    print(f"| engine | weights read per decode step | single request tok/s | 16 prompts tok/s | perplexity | greedy agreement |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, results in rows.items():
        if not results:
            continue
        single = max(r[0] for r in results)
        many = max(r[1] for r in results)
        if name in engines:
            wb = engines[name].engine.runner.model.weight_bytes_per_token() / 2**20
            ppl, tokens = quality_of[name]
            agree = next((i for i, (a, b) in enumerate(zip(tokens, base_tokens)) if a != b), len(tokens))
            print(f"| ours, {name} | {wb:.0f} MiB | {single:.1f} | {many:.1f} | {ppl:.2f} ({100 * (ppl / base_ppl - 1):+.1f}%) "
                  f"| first {agree} of {len(tokens)} |")
        else:
            print(f"| llama.cpp (llama-cpp-python {getattr(llama_cpp(), '__version__', '?')}), the same GGUF "
                  f"| 76 MiB (Q4_1 + Q8_0) | {single:.1f} | {many:.1f} (one at a time) | | |")
    best = {name: (max(r[0] for r in v), max(r[1] for r in v)) for name, v in rows.items() if v}
    for name in ("int4", "int4, compiled"):
        if name in best:
            line = f"{name} / fp32: single {best[name][0] / best['fp32'][0]:.2f}x, 16 prompts {best[name][1] / best['fp32'][1]:.2f}x"
            if "llama.cpp" in best:
                line += f"; / llama.cpp single {best[name][0] / best['llama.cpp'][0]:.2f}x"
            print(line)
    print(f"\nrounds: " + "; ".join(f"{k}: " + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in v) for k, v in rows.items() if v))


if __name__ == "__main__":
    main()
