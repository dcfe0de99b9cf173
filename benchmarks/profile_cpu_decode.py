"""Where a CPU decode token goes: single-request greedy decode of the embedded model, timed, then
under cProfile (the ops with the most time of their own).

    python benchmarks/profile_cpu_decode.py [--quantization int4|int8] [--tokens 64] [--compile]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine import LLM, SamplingParams  # noqa: E402
from engine.runner.model_loader import resolve_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quantization", choices=["int8", "int4"], default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--compile", action="store_true", help="decode steps through torch.compile (--compile)")
    args = ap.parse_args()
    llm = LLM(resolve_model("embedded"), device="cpu", quantization=args.quantization, num_blocks=64,
              compile_decode=args.compile)
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    prompt = engine.encode_chat([{"role": "user", "content": "Tell me about lighthouses."}])
    llm.generate([prompt], params)  # warm-up

    def decode() -> float:
        engine.add_request("profiled", prompt, params)
        stamps = []
        while engine.has_unfinished_requests():
            if engine.step().outputs:
                stamps.append(time.perf_counter())
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    rates = [decode(), decode()]
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"SmolLM2-135M-Instruct (embedded), {args.quantization or 'fp32'}{', compiled' if args.compile else ''}, one greedy request, {args.tokens} tokens")
    print(f"decode tok/s: {rates[0]:.1f}, {rates[1]:.1f}")
    profile = cProfile.Profile()
    profile.enable()
    decode()
    profile.disable()
    stats = pstats.Stats(profile)
    print(f"under cProfile, per token ({args.tokens}):")
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:12]  # by own time
    for (file, line, name), (_, calls, own, _, _) in rows:
        print(f"  {own / args.tokens * 1e3:6.2f} ms  {calls // args.tokens:5d} calls  {name} ({Path(file).name}:{line})")


if __name__ == "__main__":
    main()
