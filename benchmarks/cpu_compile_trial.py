"""Would a compiled decode step remove the CPU's eager per-op overhead? A trial, not a path the engine
takes: the embedded model at int4, one greedy chat request, decoded eagerly and then with
`torch.compile` (inductor's C++) of the model's forward for pure-decode steps.

    python benchmarks/cpu_compile_trial.py [--cpp-wrapper] [--tokens 64]

Prints a table: hardware, model, eager and compiled tok/s (three decodes each), the compile time,
and whether the compiled tokens equal the eager ones.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine import LLM, SamplingParams  # noqa: E402
from engine.models import layers  # noqa: E402
from engine.runner.model_loader import resolve_model  # noqa: E402


def rotary_without_out(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """layers.apply_rotary without its out= writes into strided halves, which dynamo cannot trace."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpp-wrapper", action="store_true", help="inductor's C++ wrapper (slower to compile)")
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    llm = LLM(resolve_model("embedded"), device="cpu", quantization="int4", num_blocks=64)
    engine, model = llm.engine, llm.engine.runner.model
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    prompt = engine.encode_chat([{"role": "user", "content": "Tell me about lighthouses."}])

    def decode() -> tuple[float, list[int]]:
        engine.add_request("trial", prompt, params)
        stamps, tokens = [], []
        while engine.has_unfinished_requests():
            for out in engine.step().outputs:
                stamps.append(time.perf_counter())
                tokens += out.delta_token_ids
        return (len(stamps) - 1) / (stamps[-1] - stamps[0]), tokens

    decode()  # warm-up
    eager = [decode() for _ in range(3)]
    layers.apply_rotary = rotary_without_out
    import torch._inductor.config as inductor_config
    inductor_config.cpp_wrapper = args.cpp_wrapper
    plain = model.forward
    compiled = torch.compile(plain, dynamic=None)  # the context length turns dynamic at its first change
    model.forward = lambda ids, pos, caches, meta: (compiled if meta.is_pure_decode else plain)(ids, pos, caches, meta)
    start = time.perf_counter()
    decode()  # compiles (twice: static, then with the context length dynamic)
    compile_s = time.perf_counter() - start
    fast = [decode() for _ in range(3)]
    print(f"hardware: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"model: SmolLM2-135M-Instruct (embedded) at int4, LM head int8; one greedy request, {args.tokens} tokens")
    print()
    print("| | decode tok/s (3 runs) | compile | tokens equal eager's |")
    print("| --- | --- | ---: | --- |")
    print(f"| eager | {', '.join(f'{r:.1f}' for r, _ in eager)} | | |")
    wrapper = "C++ wrapper" if args.cpp_wrapper else "Python wrapper"
    print(f"| torch.compile ({wrapper}) | {', '.join(f'{r:.1f}' for r, _ in fast)} | {compile_s:.0f} s | "
          f"{all(t == eager[0][1] for _, t in fast)} |")


if __name__ == "__main__":
    main()
