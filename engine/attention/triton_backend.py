"""Paged attention with Triton kernels: the GPU path.

A step is routed by its host-side query lengths, never by reading the device:
- pure decode (every query length 1): the split-KV decode kernel. Its grid and scratch depend only
  on (batch, kv heads, block_tables width), so the step is capturable in a CUDA graph;
- anything else (prefills, chunks after a cached prefix, decodes mixed in): the prefill kernel for
  every row in one launch, its decode rows as one-token tiles.
The launch parameters are planned once per ForwardMetadata and shared by all layers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention.backend import AttentionBackend
from engine.attention.triton_decode import choose_num_splits, decode_attention
from engine.attention.triton_prefill import PrefillTiles, plan_tiles, prefill_attention, tile_shape
from engine.attention.triton_store_kv import store_kv
from engine.forward_metadata import ForwardMetadata


@dataclass(frozen=True)
class TritonPlan:
    """One step's launch parameters, for one (heads, kv heads) shape."""

    num_heads: int
    num_kv_heads: int
    num_splits: int | None  # pure decode: splits of the decode kernel
    tiles: PrefillTiles | None  # otherwise: the prefill kernel's query tiles


def build_plan(meta: ForwardMetadata, num_heads: int, num_kv_heads: int, device: torch.device) -> TritonPlan:
    """Plan from shapes and host lists only: no device sync."""
    if meta.is_pure_decode:
        batch, max_blocks = meta.block_tables.shape
        splits = choose_num_splits(batch, num_kv_heads, max_blocks, meta.block_size, device)
        return TritonPlan(num_heads, num_kv_heads, splits, None)
    block_q, _ = tile_shape(num_heads // num_kv_heads)
    return TritonPlan(num_heads, num_kv_heads, None, plan_tiles(meta, block_q))


class TritonAttentionBackend(AttentionBackend):
    """Paged attention with Triton kernels (CUDA, or the Triton interpreter on the CPU in tests)."""

    name = "triton"

    def store_kv(self, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata) -> None:
        """Write k, v [T, kv_heads, head_dim] at meta.slot_mapping (negative slots skipped)."""
        store_kv(k, v, kv_cache, meta)

    def plan(self, meta: ForwardMetadata, num_heads: int, num_kv_heads: int, device: torch.device) -> TritonPlan:
        """The step's plan, built at the first layer and reused by the others."""
        return self.cached_plan(meta, (num_heads, num_kv_heads),
                                lambda: build_plan(meta, num_heads, num_kv_heads, device))

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata, scale: float) -> torch.Tensor:
        """q [T, heads, head_dim] -> [T, heads, head_dim], causal over each sequence's cached context."""
        plan = self.plan(meta, q.shape[1], kv_cache.shape[3], q.device)
        if plan.num_splits is not None:
            return decode_attention(q, kv_cache, meta, scale, num_splits=plan.num_splits)
        return prefill_attention(q, kv_cache, meta, scale, tiles=plan.tiles)
