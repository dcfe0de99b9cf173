"""The CPU's quantized products on the embedded model's shapes (SmolLM2-135M: 30 layers of qkv
[960 x 576], o [576 x 576], gate-up [3072 x 576], down [576 x 1536]; the LM head [49152 x 576]):
the int4 kernel at 1, 4 and 16 rows (decode steps); at 256 and 636 rows (prefills: 636 is the 16
chat prompts of cpu_quantized.py at once) the kernel against quantized_matmul's prefill path,
which dequantizes each matrix to bf16 first (DENSE_ROWS); and the LM head at int8 (int8pack, bf16
rows) against w8a8 (int8 rows, torch._int_mm); and the decode step's int4 products compiled as a
quantized engine's compiled steps are (compiled_decode.TUNED_PRODUCTS: the weights frozen, inductor
timing its C++ GEMM templates against the kernel) against the kernel itself, at 1, 16 and 32 rows.
Random weights of those shapes, streamed from memory as a step reads them (each layer its own),
best of 3 repeats.

    python benchmarks/cpu_products.py
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config as inductor_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.models import quantized_linear  # noqa: E402
from engine.models.quantized_linear import quantize, quantized_matmul  # noqa: E402
from engine.runner.compiled_decode import TUNED_PRODUCTS  # noqa: E402

LAYERS = 30
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
HEAD = (49152, 576)


def best_ms(fn, repeats: int = 3, calls: int = 10) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return min(times) * 1e3


def main() -> None:
    torch.manual_seed(0)
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    layers = [quantize(torch.randn(n, k) * 0.02, "int4") for _ in range(LAYERS) for n, k in SHAPES]
    print("\n| int4 products of a decode step (120) | 1 row | 4 rows | 16 rows |\n| --- | ---: | ---: | ---: |")
    cells = []
    for rows in (1, 4, 16):
        xs = {k: torch.randn(rows, k) for _, k in SHAPES}
        cells.append(best_ms(lambda: [quantized_matmul(xs[w.in_features], w) for w in layers]))
    print("| ms | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    print("\n| int4 products of a prefill step (120) | 256 rows ms | 636 rows ms |\n| --- | ---: | ---: |")
    dense_rows = quantized_linear.DENSE_ROWS
    for name, threshold in (("the int4 kernel", 10**9), ("dequantized to bf16 first (the engine's path)", dense_rows)):
        quantized_linear.DENSE_ROWS = threshold
        row = []
        for rows in (256, 636):
            xs = {k: torch.randn(rows, k) for _, k in SHAPES}
            row.append(best_ms(lambda: [quantized_matmul(xs[w.in_features], w) for w in layers], calls=1))
        print(f"| {name} | {row[0]:.0f} | {row[1]:.0f} |")
    quantized_linear.DENSE_ROWS = dense_rows
    weight = torch.randn(*HEAD) * 0.02
    heads = {mode: quantize(weight, mode) for mode in ("int8", "w8a8")}
    print("\n| LM head [49152 x 576] | 1 row ms | 16 rows ms |\n| --- | ---: | ---: |")
    for mode, head in heads.items():
        row = [best_ms(lambda: quantized_matmul(torch.randn(rows, HEAD[1]), head)) for rows in (1, 16)]
        print(f"| {mode} | {row[0]:.2f} | {row[1]:.2f} |")

    print("\n| int4 products of a decode step (120) | 1 row ms | 16 rows ms | 32 rows ms |\n| --- | ---: | ---: | ---: |")
    products = IntFourProducts(layers).eval()
    kernel, tuned = [], []
    for rows in (1, 16, 32):
        xs = {k: torch.randn(rows, k).to(torch.bfloat16) for _, k in SHAPES}
        # as the engine runs them: grad off (a guard: with it on, dynamo compiles again, unfrozen) and
        # the settings on around each call
        with torch.no_grad(), inductor_config.patch(TUNED_PRODUCTS):
            compiled = torch.compile(products, dynamic=False)
            kernel.append(best_ms(lambda: products(xs)))
            tuned.append(best_ms(lambda: compiled(xs)))
        torch._dynamo.reset()
    print("| the kernel (aten._weight_int4pack_mm_for_cpu) | " + " | ".join(f"{c:.1f}" for c in kernel) + " |")
    print("| compiled, frozen, timed (TUNED_PRODUCTS) | " + " | ".join(f"{c:.1f}" for c in tuned) + " |")


class IntFourProducts(torch.nn.Module):
    """The step's int4 products as a module whose packed weights are buffers (constants once frozen)."""

    def __init__(self, layers: list) -> None:
        super().__init__()
        self.in_features = [w.in_features for w in layers]
        for i, w in enumerate(layers):
            self.register_buffer(f"packed{i}", w.packed)
            self.register_buffer(f"scales{i}", w.scales_and_zeros)

    def forward(self, xs: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        return [torch.ops.aten._weight_int4pack_mm_for_cpu(xs[k], getattr(self, f"packed{i}"), quantized_linear.GROUP,
                                                           getattr(self, f"scales{i}"))
                for i, k in enumerate(self.in_features)]


if __name__ == "__main__":
    main()
