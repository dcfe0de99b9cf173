"""Rotary embedding of q and k in one Triton launch, in place in the fused qkv, optionally after
Qwen3's per-head q/k RMSNorm, and optionally with this step's K/V stored into the paged cache.

The reference (and the CPU path) is layers.rotate_qk. Rounding follows it: the norm as in
layers.rms_norm, then out1 = round(x1 * cos) - x2 * sin and out2 = round(x2 * cos) + x1 * sin in fp32
with one rounding each (torch's mul, then addcmul's fp32 opmath).

The store saves a launch per layer (a small kernel costs 2-3 us of launch and ramp on the GPU,
whatever its bytes): the programs that rotate k heads also write them, and the v heads beside
them, into the cache exactly as triton_store_kv does (the same layout, negative slots skipped).
Its reference is layers.rotate_qk followed by the torch backend's store_kv.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.attention.triton_store_kv import ref_store_kv
from engine.models.layers import rotate_qk as ref_rotate_qk
from engine.runner.forward_metadata import ForwardMetadata

_MAX_ELEMENTS = 1024  # heads x head_dim / 2 one program holds per half


@triton.jit
def _rotate_qk_kernel(
    qkv_ptr,  # [T, heads, head_dim]: q heads, then k heads, then v heads; unit stride over head_dim
    cos_ptr, sin_ptr,  # [T, head_dim / 2], unit last stride
    q_weight_ptr, k_weight_ptr,  # [head_dim] each; read only if QK_NORM
    cache_ptr,  # [2, num_slots, kv_heads, head_dim] contiguous, keys then values at v_offset; if STORE_KV
    slot_ptr,  # [T] int64; read only if STORE_KV
    stride_t, stride_h, stride_cos, stride_sin,
    num_q_heads, num_heads, half, eps,  # num_heads = q + k heads
    v_offset, stride_cache_slot,  # num_slots * kv_heads * head_dim, kv_heads * head_dim
    HEADS: tl.constexpr,  # heads per program, a power of two
    HALF_PAD: tl.constexpr,  # head_dim / 2 rounded up to a power of two
    QK_NORM: tl.constexpr,
    STORE_KV: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * HEADS + tl.arange(0, HEADS)
    dims = tl.arange(0, HALF_PAD)
    dim_mask = dims < half
    mask = (heads[:, None] < num_heads) & dim_mask[None, :]
    dtype = qkv_ptr.dtype.element_ty
    ptr1 = qkv_ptr + token * stride_t + heads[:, None] * stride_h + dims[None, :]  # [HEADS, HALF_PAD]
    x1 = tl.load(ptr1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptr1 + half, mask=mask, other=0.0).to(tl.float32)
    if QK_NORM:
        inv = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * half) + eps)[:, None]
        is_q = heads[:, None] < num_q_heads
        w1 = tl.where(is_q, tl.load(q_weight_ptr + dims, mask=dim_mask, other=0.0)[None, :],
                      tl.load(k_weight_ptr + dims, mask=dim_mask, other=0.0)[None, :]).to(tl.float32)
        w2 = tl.where(is_q, tl.load(q_weight_ptr + half + dims, mask=dim_mask, other=0.0)[None, :],
                      tl.load(k_weight_ptr + half + dims, mask=dim_mask, other=0.0)[None, :]).to(tl.float32)
        # HF: round the normalised value, scale by the weight, round again (layers.rms_norm)
        x1 = ((x1 * inv).to(dtype).to(tl.float32) * w1).to(dtype).to(tl.float32)
        x2 = ((x2 * inv).to(dtype).to(tl.float32) * w2).to(dtype).to(tl.float32)
    cos = tl.load(cos_ptr + token * stride_cos + dims, mask=dim_mask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + token * stride_sin + dims, mask=dim_mask, other=0.0).to(tl.float32)[None, :]
    out1 = ((x1 * cos).to(dtype).to(tl.float32) - x2 * sin).to(dtype)
    out2 = ((x2 * cos).to(dtype).to(tl.float32) + x1 * sin).to(dtype)
    tl.store(ptr1, out1, mask=mask)
    tl.store(ptr1 + half, out2, mask=mask)
    if STORE_KV:
        slot = tl.load(slot_ptr + token)  # int64: slot * stride does not overflow on large caches
        kv_head = heads[:, None] - num_q_heads  # of each k head (< 0: a q head); its v head is num_kv on
        store = mask & (kv_head >= 0) & (slot >= 0)  # a negative slot: a padding token of a captured graph
        dst = cache_ptr + slot * stride_cache_slot + kv_head * (2 * half) + dims[None, :]
        tl.store(dst, out1, mask=store)
        tl.store(dst + half, out2, mask=store)
        v_ptr = ptr1 + (num_heads - num_q_heads) * stride_h
        tl.store(dst + v_offset, tl.load(v_ptr, mask=store), mask=store)
        tl.store(dst + v_offset + half, tl.load(v_ptr + half, mask=store), mask=store)


def rotate_qk(
    qkv: torch.Tensor, num_q: int, num_kv: int, cos: torch.Tensor, sin: torch.Tensor,
    q_weight: torch.Tensor | None, k_weight: torch.Tensor | None, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """qkv [T, num_q + 2 * num_kv, head_dim] -> q [T, num_q, d], k [T, num_kv, d], views of qkv.

    q and k are normed per head (when q_weight and k_weight are given) and rotated in place; v is
    untouched. cos, sin: [T, head_dim / 2] or [T, 1, head_dim / 2] (RotaryEmbedding's output).
    """
    return _launch(qkv, num_q, num_kv, cos, sin, q_weight, k_weight, eps, None, None)


def rotate_qk_store_kv(
    qkv: torch.Tensor, num_q: int, num_kv: int, cos: torch.Tensor, sin: torch.Tensor,
    q_weight: torch.Tensor | None, k_weight: torch.Tensor | None, eps: float,
    kv_cache: torch.Tensor, meta: ForwardMetadata,
) -> tuple[torch.Tensor, torch.Tensor]:
    """rotate_qk, then store_kv of the rotated k and of v, in one launch: token t's k and v go into
    kv_cache [2, num_blocks, block_size, num_kv, head_dim] at slot meta.slot_mapping[t] (skipped if
    negative), the same bits that rotate_qk then triton_store_kv.store_kv would write."""
    return _launch(qkv, num_q, num_kv, cos, sin, q_weight, k_weight, eps, kv_cache, meta.slot_mapping)


def ref_rotate_qk_store_kv(
    qkv: torch.Tensor, num_q: int, num_kv: int, cos: torch.Tensor, sin: torch.Tensor,
    q_weight: torch.Tensor | None, k_weight: torch.Tensor | None, eps: float,
    kv_cache: torch.Tensor, meta: ForwardMetadata,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain-torch pair that rotate_qk_store_kv fuses (new q and k; qkv is left as it is)."""
    q, k = ref_rotate_qk(qkv, num_q, num_kv, cos, sin, q_weight, k_weight, eps)
    ref_store_kv(k, qkv[:, num_q + num_kv:], kv_cache, meta)
    return q, k


def _launch(
    qkv: torch.Tensor, num_q: int, num_kv: int, cos: torch.Tensor, sin: torch.Tensor,
    q_weight: torch.Tensor | None, k_weight: torch.Tensor | None, eps: float,
    kv_cache: torch.Tensor | None, slot_mapping: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    num_tokens, num_heads, head_dim = qkv.shape
    half = head_dim // 2
    assert num_heads == num_q + 2 * num_kv and head_dim % 2 == 0, \
        f"qkv {tuple(qkv.shape)} is not [T, {num_q} + 2 * {num_kv}, even head_dim]"
    assert qkv.stride(2) == 1, "qkv needs a unit stride over head_dim"
    cos, sin = cos.reshape(cos.shape[0], -1), sin.reshape(sin.shape[0], -1)  # views: [T, 1, d/2] -> [T, d/2]
    assert cos.shape == sin.shape == (num_tokens, half), f"cos/sin {tuple(cos.shape)} are not [{num_tokens}, {half}]"
    assert cos.stride(1) == 1 and sin.stride(1) == 1, "cos and sin need a unit last stride"
    assert cos.dtype == sin.dtype == qkv.dtype, f"qkv {qkv.dtype}, cos {cos.dtype}, sin {sin.dtype} differ"
    qk_norm = q_weight is not None
    assert qk_norm == (k_weight is not None), "q and k norm weights come together"
    if qk_norm:
        for w in (q_weight, k_weight):
            assert w.shape == (head_dim,) and w.is_contiguous() and w.dtype == qkv.dtype, \
                f"norm weight {tuple(w.shape)} {w.dtype} is not a contiguous [{head_dim}] {qkv.dtype}"
    assert qkv.device == cos.device == sin.device, "tensors on different devices"
    store_kv = kv_cache is not None
    if store_kv:
        assert kv_cache.dim() == 5 and kv_cache.shape[0] == 2 and tuple(kv_cache.shape[3:]) == (num_kv, head_dim), \
            f"kv_cache {tuple(kv_cache.shape)} is not [2, blocks, block_size, {num_kv}, {head_dim}]"
        assert kv_cache.is_contiguous(), "kv_cache must be contiguous"
        assert kv_cache.dtype == qkv.dtype, f"dtypes qkv {qkv.dtype}, cache {kv_cache.dtype} differ"
        assert slot_mapping.shape == (num_tokens,) and slot_mapping.dtype == torch.int64, \
            f"slot_mapping {tuple(slot_mapping.shape)} {slot_mapping.dtype} is not [{num_tokens}] int64"
        assert kv_cache.device == slot_mapping.device == qkv.device, "tensors on different devices"
    q, k = qkv[:, :num_q], qkv[:, num_q:num_q + num_kv]
    if num_tokens == 0:
        return q, k
    half_pad = triton.next_power_of_2(half)
    heads = min(triton.next_power_of_2(num_q + num_kv), max(1, _MAX_ELEMENTS // half_pad))
    grid = (num_tokens, triton.cdiv(num_q + num_kv, heads))
    _rotate_qk_kernel[grid](
        qkv, cos, sin, q_weight if qk_norm else qkv, k_weight if qk_norm else qkv,  # qkv: unused placeholders
        kv_cache if store_kv else qkv, slot_mapping if store_kv else qkv,
        qkv.stride(0), qkv.stride(1), cos.stride(0), sin.stride(0),
        num_q, num_q + num_kv, half, eps,
        kv_cache.stride(0) if store_kv else 0, num_kv * head_dim,
        HEADS=heads, HALF_PAD=half_pad, QK_NORM=qk_norm, STORE_KV=store_kv,
    )
    return q, k


__all__ = ["ref_rotate_qk", "ref_rotate_qk_store_kv", "rotate_qk", "rotate_qk_store_kv"]
