"""The building blocks of a Llama-family decoder in plain torch: linear, RMSNorm, rotary embedding, SiLU-and-mul.

Parameters are created with torch.empty (no random init): every one is overwritten by load_weights,
and skipping the init saves seconds on a large model. Build under `torch.device(...)` and a default
dtype to place them (see engine.models.build_model).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.blocked_matmul import block_weight, linear
from engine.models.quantized_linear import QuantizedWeight, fits, quantize, quantized_matmul


class Linear(nn.Module):
    """y = x @ weight.T (+ bias), weight [out_features, in_features] as in nn.Linear and HF checkpoints.

    After pack() (the CPU path), products of a few rows go through a blocked copy of the
    weight (engine.models.blocked_matmul): the same values, faster. After quantize(), through an
    int8 or int4 copy (engine.models.quantized_linear), and the full-precision weight is dropped.
    After use_skinny() (CUDA), products of a few rows go through a Triton kernel that reads the
    weight at the memory's pace (engine.models.triton_skinny_matmul).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.blocked: torch.Tensor | None = None
        self.quantized: QuantizedWeight | None = None
        self.skinny_rows = 0  # rows up to which skinny_linear runs; 0: never
        self.skinny_linear: Any = None
        self.skinny_silu_mul: Any = None

    def use_skinny(self) -> None:
        from engine.models import triton_skinny_matmul  # imports triton: only where the kernel runs

        self.skinny_rows, self.skinny_linear = triton_skinny_matmul.MAX_ROWS, triton_skinny_matmul.skinny_linear
        self.skinny_silu_mul = triton_skinny_matmul.skinny_silu_mul

    @torch.no_grad()
    def pack(self) -> None:
        if self.quantized is None:
            self.blocked = block_weight(self.weight)

    @torch.no_grad()
    def quantize(self, mode: str) -> bool:
        """Weight-only `mode` quantization (int8 | int4); False if the kernel cannot take this shape."""
        if not fits(mode, self.weight.shape[1], self.weight.device):
            return False
        self.quantized = quantize(self.weight, mode)
        self.weight = nn.Parameter(self.weight.new_empty(0), requires_grad=False)  # its memory goes back
        self.blocked = None
        return True

    def forward(self, x: torch.Tensor, defer_sum: bool = False) -> Any:
        """x [..., in] -> [..., out]. defer_sum: the skinny kernel may return its K chunks' sums
        (triton_skinny_matmul.SplitSums) for a fused add_rms_norm to add up; otherwise a tensor."""
        if self.quantized is not None:
            y = quantized_matmul(x.reshape(-1, x.shape[-1]), self.quantized).view(*x.shape[:-1], -1)
            return y if self.bias is None else y.add_(self.bias)
        if self._skinny(x):
            return self.skinny_linear(x, self.weight, self.bias, defer_sum=defer_sum)
        return linear(x, self.weight, self.bias, self.blocked)

    def silu_mul(self, x: torch.Tensor, act: Any) -> torch.Tensor:
        """act(self(x)) for a fused gate-up projection (act: silu_and_mul); in one launch with the
        skinny kernel where it can (no [T, 2I] round trip)."""
        if self.quantized is None and self.bias is None and self._skinny(x):
            out = self.skinny_silu_mul(x, self.weight)
            if out is not None:
                return out
        return act(self(x))

    def _skinny(self, x: torch.Tensor) -> bool:
        return x.dim() == 2 and 0 < x.shape[0] <= self.skinny_rows and x.stride(1) == 1


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dim, computed in fp32 like HF's LlamaRMSNorm."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    # HF rounds the normalised value to the input dtype before scaling by the weight
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """residual += x (in place, in the model dtype), then rms_norm(residual)."""
    return rms_norm(residual.add_(x), weight, eps)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim; with a residual, the pre-norm residual add fused in front of it.

    fused: run the Triton kernels of engine.models.triton_rmsnorm (CUDA only), else the torch functions.
    """

    def __init__(self, dim: int, eps: float, fused: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        self.eps = eps
        if fused:
            from engine.models import triton_rmsnorm  # imports triton: only where the kernels run

            self._norm, self._add_norm = triton_rmsnorm.rms_norm, triton_rmsnorm.add_rms_norm
        else:
            self._norm, self._add_norm = rms_norm, add_rms_norm

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., dim] -> norm(x). With residual [T, dim]: residual += x in place, returns norm(residual)
        (the fused kernel writes that output into x, which the caller must own)."""
        if residual is None:
            return self._norm(x, self.weight, self.eps)
        return self._add_norm(x, residual, self.weight, self.eps)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """[..., 2 * I] (gate then up, as fused by gate_up_proj) -> silu(gate) * up, [..., I]."""
    half = x.shape[-1] // 2
    out = F.silu(x[..., :half])
    return out.mul_(x[..., half:])


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """The rotary inverse frequencies [head_dim // 2] in fp32, for rope types default, linear and llama3."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rope_type = "default" if not scaling else scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    raise NotImplementedError(f"rope type {rope_type!r} is not supported (default, linear, llama3 are)")


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1: keep high frequencies, divide low ones by `factor`, blend smoothly in between."""
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_medium, blended, scaled)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with a cos/sin table for positions 0..max_positions-1.

    The table is computed in fp32 (positions * inv_freq, exactly as HF does per call) and stored in
    the default dtype, which is what HF casts cos/sin to before applying them.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict[str, Any] | None) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, theta, scaling).to(torch.get_default_device())
        freqs = torch.arange(max_positions, dtype=torch.float32).unsqueeze(1) * inv_freq  # [P, d/2]
        dtype = torch.get_default_dtype()
        self.register_buffer("cos", freqs.cos().to(dtype), persistent=False)
        self.register_buffer("sin", freqs.sin().to(dtype), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] -> cos, sin [T, 1, head_dim // 2], broadcastable over heads."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [T, heads, head_dim] (may be a strided view) by cos/sin [T, 1, head_dim // 2].

    HF's rotate_half convention: the two halves of head_dim form the (real, imaginary) pairs, so
    out = x * [cos, cos] + [-x2, x1] * [sin, sin]. Returns a new contiguous tensor.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    if torch.compiler.is_compiling():  # the same ops, but dynamo cannot trace out= into strided halves
        return torch.cat([torch.addcmul(x1 * cos, x2, sin, value=-1), torch.addcmul(x2 * cos, x1, sin)], dim=-1)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    o1, o2 = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=o1)
    o1.addcmul_(x2, sin, value=-1)
    torch.mul(x2, cos, out=o2)
    o2.addcmul_(x1, sin)
    return out


def rotate_qk(
    qkv: torch.Tensor, num_q: int, num_kv: int, cos: torch.Tensor, sin: torch.Tensor,
    q_weight: torch.Tensor | None, k_weight: torch.Tensor | None, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """qkv [T, num_q + 2 * num_kv, head_dim] -> rotated q [T, num_q, d], k [T, num_kv, d].

    With q_weight and k_weight (Qwen3), q and k are RMS-normed per head before the rotation.
    """
    if q_weight is None:
        qk = apply_rotary(qkv[:, :num_q + num_kv], cos, sin)  # q and k rotated together: one set of ops
        return qk[:, :num_q], qk[:, num_q:]
    q = apply_rotary(rms_norm(qkv[:, :num_q], q_weight, eps), cos, sin)
    k = apply_rotary(rms_norm(qkv[:, num_q:num_q + num_kv], k_weight, eps), cos, sin)
    return q, k
