"""Weight-only quantized projections: int8 per output channel, or int4 in groups of 32 along the
input (asymmetric: a scale and a zero per group), through the matmul kernels PyTorch ships.

Decode reads every weight once per step, so its time is the weights' bytes over memory bandwidth:
int8 reads a quarter of fp32's bytes, int4 an eighth (plus a scale and zero per 32 weights). The
embedded model's projections are Q4_1 in its GGUF (groups of 32, w = d * q + m, q in 0..15): their
min/max requantization below finds the same grid again, so int4 keeps the weights it ships with.

Kernels (activations go in and come out as bf16; the layer casts back to the model's dtype):
- int8: aten._weight_int8pack_mm (CPU and CUDA), weight [N, K] int8, scales [N].
- w8a8, the LM head on the CPU: int8 weights as int8, and each row of x quantized to int8 as it
  comes (its own scale: a row's logits never depend on the rest of the batch), multiplied in
  integers by torch._int_mm (VNNI), scaled back in fp32: faster than int8pack's bf16 rows on the
  embedded model's head, most at 16 rows (benchmarks/cpu_products.py).
- int4: aten._weight_int4pack_mm_for_cpu on the CPU, aten._weight_int4pack_mm (tinygemm, CUDA
  sm80+) on the GPU; both want w = (q - 8) * scale + zero, scales and zeros as [K / G, N, 2].
`dequantize` is the torch reference that the tests hold the kernels to.

A prefill is another matter: hundreds of rows multiply every weight, so the product is bound by
arithmetic, not by the bytes of the weights, and the CPU int4 kernel redoes its dequantization
for every 4 rows. From DENSE_ROWS rows on, a CPU int4 product first dequantizes the weight to
bf16, one matrix at a time (a few MiB, still in cache for the product that follows), then
multiplies it at bf16's rate (oneDNN): the products of the 16 chat prompts' 636-token prefill of
the embedded model take about 0.5 s instead of 1.0 (benchmarks/cpu_products.py). Nothing more is
kept: the nibbles are read out of the int4pack layout itself (`unpack_cpu_int4`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

GROUP = 32  # int4 weights per scale and zero (Q4_1's block)
DENSE_ROWS = 256  # rows from which a CPU product dequantizes to bf16 first (a prefill's; see above)
MODES = ("int8", "int4")  # what a user picks; "w8a8" is the CPU's LM head (LlamaForCausalLM.quantize)


@dataclass
class QuantizedWeight:
    """One projection's weight [N, K], quantized: what the kernels read, and the grid for tests."""

    mode: str
    out_features: int
    in_features: int
    q: torch.Tensor  # int8 [N, K] (int8), or the integer grid 0..15 as uint8 [N, K] (int4, before packing)
    scales: torch.Tensor  # [N] bf16 (int8) or fp32 (w8a8), or [N, K / GROUP] fp32 (int4, kept only with keep_grid)
    zeros: torch.Tensor | None = None  # int4: [N, K / GROUP] fp32, the weight value at q = 0
    packed: torch.Tensor | None = None  # int4: the kernel's layout
    scales_and_zeros: torch.Tensor | None = None  # int4: [K / GROUP, N, 2] bf16 (tinygemm's zero: q = 8)

    @property
    def nbytes(self) -> int:
        """Bytes a matmul reads: the weights and their scales (and zeros)."""
        if self.mode in ("int8", "w8a8"):
            return self.q.numel() + self.scales.numel() * self.scales.element_size()
        return self.out_features * self.in_features // 2 + self.scales_and_zeros.numel() * 2


def fits(mode: str, in_features: int, device: torch.device) -> bool:
    """Whether a projection with this many inputs can use the kernel (else it stays unquantized)."""
    return mode != "int4" or in_features % GROUP == 0


def inner_k_tiles(in_features: int) -> int:
    """tinygemm's tiling of K for the CUDA int4 layout: 8, 4 or 2, K a multiple of 16 x it."""
    return next(t for t in (8, 4, 2) if in_features % (16 * t) == 0)


def quantize(weight: torch.Tensor, mode: str, keep_grid: bool = False) -> QuantizedWeight:
    """Quantize an [N, K] weight (any float dtype, any device) for `mode`, packed for its device.
    int4 keeps only what its kernel reads, unless `keep_grid` (tests: `dequantize` needs the grid)."""
    if mode not in (*MODES, "w8a8"):
        raise ValueError(f"quantization must be one of {', '.join(MODES)}, got {mode!r}")
    w = weight.detach().float()
    n, k = w.shape
    if mode in ("int8", "w8a8"):
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        q = (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
        # int8pack takes bf16 scales; w8a8 scales its int32 sums in fp32
        return QuantizedWeight(mode, n, k, q, scales.to(torch.bfloat16) if mode == "int8" else scales)
    groups = w.view(n, k // GROUP, GROUP)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scales = ((high - low) / 15).clamp(min=1e-12)
    q = ((groups - low[..., None]) / scales[..., None]).round().clamp(0, 15).to(torch.uint8).view(n, k)
    # tinygemm reads w = (q - 8) * scale + zero, so its zero is the value at q = 8
    sz = torch.stack([scales, low + 8 * scales], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    if w.device.type == "cuda":
        nibbles = (q[:, ::2] << 4 | q[:, 1::2]).contiguous()  # [N, K / 2], the even index in the high nibble
        packed = torch.ops.aten._convert_weight_to_int4pack(nibbles, inner_k_tiles(k))
    else:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
    if not keep_grid:  # 1.25 bytes a weight that nothing reads
        q, scales, low = q.new_empty(0), scales.new_empty(0), None
    return QuantizedWeight(mode, n, k, q, scales, low, packed, sz)


def dequantize(qw: QuantizedWeight) -> torch.Tensor:
    """The [N, K] fp32 weight the quantized one stands for (as the kernels see it: int4's scales and
    zeros rounded to bf16)."""
    if qw.mode in ("int8", "w8a8"):
        return qw.q.float() * qw.scales.float()[:, None]
    assert qw.q.numel(), "quantize(..., keep_grid=True) keeps the int4 grid that dequantize needs"
    sz = qw.scales_and_zeros.float()  # [K / G, N, 2]
    scales, zeros = sz[..., 0].t(), sz[..., 1].t()  # [N, K / G]
    grid = qw.q.float().view(qw.out_features, -1, GROUP) - 8
    return (grid * scales[..., None] + zeros[..., None]).view(qw.out_features, qw.in_features)


def unpack_cpu_int4(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor | None:
    """The int4 grid [K, N] (uint8, 0..15, W's transpose) out of the CPU kernel's layout, or None
    where that layout is not the one this reads (tried once, at the first call: `_cpu_layout_reads`).

    aten._convert_weight_to_int4pack_for_cpu packs N in blocks of 64 rows: byte [b, k, j] (of
    [N / 64, K, 32]) holds row 64b + j's weight k in its low nibble and row 64b + 32 + j's in its high."""
    if out_features % _CPU_BLOCK_N or not _cpu_layout_reads():
        return None
    return _unpack(packed, out_features, in_features)


_CPU_BLOCK_N = 64
_cpu_layout_known: bool | None = None


def _unpack(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    blocks = packed.view(out_features // _CPU_BLOCK_N, in_features, _CPU_BLOCK_N // 2)
    grid = torch.empty(in_features, out_features // _CPU_BLOCK_N, _CPU_BLOCK_N, dtype=torch.uint8)
    torch.bitwise_and(blocks, 15, out=grid[..., :_CPU_BLOCK_N // 2].permute(1, 0, 2))
    torch.bitwise_right_shift(blocks, 4, out=grid[..., _CPU_BLOCK_N // 2:].permute(1, 0, 2))
    return grid.view(in_features, out_features)


def _cpu_layout_reads() -> bool:
    """Whether _unpack reads this torch build's CPU int4 layout back (tried once, on a grid with
    every row and column distinct): a build that packs otherwise keeps the int4 kernel."""
    global _cpu_layout_known
    if _cpu_layout_known is None:
        n, k = 2 * _CPU_BLOCK_N, 2 * GROUP
        grid = ((torch.arange(n)[:, None] * 7 + torch.arange(k)[None, :] * 3) % 16).to(torch.uint8)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(grid.to(torch.int32), 1)
        _cpu_layout_known = packed.shape == (n, k // 2) and packed.dtype == torch.uint8 and \
            torch.equal(_unpack(packed, n, k).t(), grid)
    return _cpu_layout_known


def _dense_bf16(qw: QuantizedWeight) -> torch.Tensor | None:
    """W.T [K, N] in bf16, dequantized from the CPU int4 layout (as the kernel sees W), or None.

    int4 only. The weights rounded to bf16 move the log-likelihood of the text in assets/ by 0.06
    nats a token on average against the kernel (in either mode): small beside int4's own grid, but
    it flipped a greedy near-tie of int8's against full precision, and int8 is the mode meant to
    keep the full model's answers, so it keeps its kernel."""
    if qw.mode != "int4":
        return None
    grid = unpack_cpu_int4(qw.packed, qw.out_features, qw.in_features)
    if grid is None:
        return None
    sz = qw.scales_and_zeros  # [K / G, N, 2] bf16: w = (q - 8) * scale + zero
    scales, zeros = sz[..., 0].float(), sz[..., 1].float()
    dense = grid.view(-1, GROUP, qw.out_features).to(torch.float32).sub_(8).mul_(scales[:, None]).add_(zeros[:, None])
    return dense.view(qw.in_features, qw.out_features).to(torch.bfloat16)


def quantized_matmul(x: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    """x [M, K] @ W.T -> [M, N] in x's dtype, through the device's kernel (DENSE_ROWS and more on
    the CPU: dequantized to bf16 first)."""
    if qw.mode == "w8a8":
        xf = x.float()
        step = (xf.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)  # [M, 1]: one scale a row
        xq = (xf / step).round().to(torch.int8)
        return (torch._int_mm(xq, qw.q.t()).float() * step * qw.scales).to(x.dtype)
    xb = x.to(torch.bfloat16).contiguous()
    if x.shape[0] >= DENSE_ROWS and x.device.type == "cpu" and not torch.compiler.is_compiling():
        dense = _dense_bf16(qw)
        if dense is not None:
            return torch.mm(xb, dense).to(x.dtype)
    if qw.mode == "int8":
        y = torch.ops.aten._weight_int8pack_mm(xb, qw.q, qw.scales)
    elif x.device.type == "cuda":
        y = torch.ops.aten._weight_int4pack_mm(xb, qw.packed, GROUP, qw.scales_and_zeros)
    else:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, qw.packed, GROUP, qw.scales_and_zeros)
    return y.to(x.dtype)
