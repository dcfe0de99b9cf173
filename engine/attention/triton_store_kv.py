"""KV store in Triton: write this step's K and V into the paged cache at the slot mapping.

The reference (and the CPU path) is the torch backend's `store_kv`: one `index_copy_` per half.
The kernel differs in one way only: a negative slot is skipped, so a CUDA graph captured for a
padded batch can give its padding tokens slot -1 (the reference would raise on them).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.attention.torch_backend import TorchAttentionBackend
from engine.runner.forward_metadata import ForwardMetadata

_MAX_ELEMENTS = 2048  # heads x head_dim one program moves: 16 KiB of K and V in bf16


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr,  # [T, kv_heads, head_dim], any token and head strides
    cache_ptr,  # [2, num_slots, kv_heads, head_dim] contiguous: keys, then values at v_offset
    slot_ptr,  # [T] int64
    stride_kt, stride_kh, stride_vt, stride_vh,
    v_offset, stride_cache_slot,  # num_slots * kv_heads * head_dim, kv_heads * head_dim
    num_kv_heads, head_dim,
    HEADS: tl.constexpr,  # kv heads per program, a power of two
    D_PAD: tl.constexpr,  # head_dim rounded up to a power of two
):
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token)  # int64: slot * stride does not overflow on large caches
    if slot < 0:  # a padding token of a captured graph
        return
    heads = tl.program_id(1) * HEADS + tl.arange(0, HEADS)
    dims = tl.arange(0, D_PAD)
    mask = (heads[:, None] < num_kv_heads) & (dims[None, :] < head_dim)
    k = tl.load(k_ptr + token * stride_kt + heads[:, None] * stride_kh + dims[None, :], mask=mask)
    v = tl.load(v_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :], mask=mask)
    dst = slot * stride_cache_slot + heads[:, None] * head_dim + dims[None, :]
    tl.store(cache_ptr + dst, k, mask=mask)
    tl.store(cache_ptr + v_offset + dst, v, mask=mask)


def store_kv(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata,
             heads_per_program: int | None = None) -> None:
    """Write k, v [T, kv_heads, head_dim] into kv_cache [2, num_blocks, block_size, kv_heads, head_dim].

    Token t goes to slot meta.slot_mapping[t] (block s // block_size, offset s % block_size);
    negative slots are skipped. k and v may be strided views (of a fused qkv output) with unit last stride.
    """
    slot_mapping = meta.slot_mapping
    num_tokens, num_kv_heads, head_dim = k.shape
    assert v.shape == k.shape, f"v {tuple(v.shape)} != k {tuple(k.shape)}"
    assert kv_cache.dim() == 5 and kv_cache.shape[0] == 2, \
        f"kv_cache {tuple(kv_cache.shape)} is not [2, blocks, block_size, kv_heads, head_dim]"
    assert tuple(kv_cache.shape[3:]) == (num_kv_heads, head_dim), \
        f"kv_cache heads/dim {tuple(kv_cache.shape[3:])} != k's ({num_kv_heads}, {head_dim})"
    assert kv_cache.is_contiguous(), "kv_cache must be contiguous"
    assert k.dtype == v.dtype == kv_cache.dtype, f"dtypes k {k.dtype}, v {v.dtype}, cache {kv_cache.dtype} differ"
    assert k.stride(2) == 1 and v.stride(2) == 1, "k and v need a unit stride over head_dim"
    assert slot_mapping.shape == (num_tokens,) and slot_mapping.dtype == torch.int64, \
        f"slot_mapping {tuple(slot_mapping.shape)} {slot_mapping.dtype} is not [{num_tokens}] int64"
    assert k.device == v.device == kv_cache.device == slot_mapping.device, "tensors on different devices"
    if num_tokens == 0:
        return
    d_pad = triton.next_power_of_2(head_dim)
    heads = heads_per_program or min(triton.next_power_of_2(num_kv_heads), max(1, _MAX_ELEMENTS // d_pad))
    assert heads & (heads - 1) == 0, f"heads_per_program {heads} must be a power of two"
    grid = (num_tokens, triton.cdiv(num_kv_heads, heads))
    _store_kv_kernel[grid](
        k, v, kv_cache, slot_mapping,  # one cache pointer, V at an offset: no per-call views
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        kv_cache.stride(0), num_kv_heads * head_dim, num_kv_heads, head_dim,
        HEADS=heads, D_PAD=d_pad,
    )


def ref_store_kv(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata) -> None:
    """The plain-torch store, the CPU path: the torch backend's (index_copy_ at meta.slot_mapping)."""
    _REFERENCE.store_kv(k, v, kv_cache, meta)


_REFERENCE = TorchAttentionBackend()  # stateless for store_kv
