"""Paged attention with Triton kernels: the GPU path.

A step is routed by its host-side query lengths, never by reading the device:
- pure decode (every query length 1): the split-KV decode kernel. Its grid and scratch depend only
  on (batch, kv heads, block_tables width), so the step is capturable in a CUDA graph;
- anything else (prefills, chunks after a cached prefix, decodes mixed in): the prefill kernel for
  every row in one launch, its decode rows as one-token tiles.
The launch parameters are planned with the step's metadata (`StepInputs`), the query tiles going to
the device in the step's one copy, and read by every layer from `ForwardMetadata.plan`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention.backend import AttentionBackend, AttentionShape, Stage
from engine.attention.triton_decode import choose_num_splits, decode_attention
from engine.attention.triton_prefill import PrefillTiles, plan_tiles, prefill_attention, tile_shape
from engine.attention.triton_store_kv import store_kv
from engine.runner.forward_metadata import ForwardMetadata


@dataclass(frozen=True)
class TritonPlan:
    """One step's launch parameters, for one (heads, kv heads) shape."""

    num_heads: int
    num_kv_heads: int
    num_splits: int | None  # pure decode: splits of the decode kernel
    tiles: PrefillTiles | None  # otherwise: the prefill kernel's query tiles


def build_plan(meta: ForwardMetadata, shape: AttentionShape, stage: Stage) -> TritonPlan:
    """Plan from shapes and host lists only: no device read. A pure-decode step's splits depend on its
    batch and table width alone (so a captured graph's hold for every replay); other steps' tiles are staged."""
    if meta.is_pure_decode:
        batch, max_blocks = meta.block_tables.shape
        splits = choose_num_splits(batch, shape.num_kv_heads, max_blocks, meta.block_size, shape.device)
        return TritonPlan(shape.num_heads, shape.num_kv_heads, splits, None)
    block_q, _ = tile_shape(shape.num_heads // shape.num_kv_heads)
    return TritonPlan(shape.num_heads, shape.num_kv_heads, None, plan_tiles(meta, block_q, stage))


class TritonAttentionBackend(AttentionBackend):
    """Paged attention with Triton kernels (CUDA, or the Triton interpreter on the CPU in tests)."""

    name = "triton"

    def store_kv(self, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata) -> None:
        """Write k, v [T, kv_heads, head_dim] at meta.slot_mapping (negative slots skipped)."""
        store_kv(k, v, kv_cache, meta)

    def plan(self, meta: ForwardMetadata, shape: AttentionShape, stage: Stage) -> TritonPlan:
        """The step's launch parameters (see build_plan)."""
        return build_plan(meta, shape, stage)

    def fits(self, plan: object, q: torch.Tensor, kv_cache: torch.Tensor) -> bool:
        return isinstance(plan, TritonPlan) and plan.num_heads == q.shape[1] and plan.num_kv_heads == kv_cache.shape[3]

    @staticmethod
    def max_staged_bytes(max_tokens: int, max_seqs: int) -> int:
        return 2 * 4 * max_tokens  # query tiles: at most one per token, two int32 each

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata, scale: float) -> torch.Tensor:
        """q [T, heads, head_dim] -> [T, heads, head_dim], causal over each sequence's cached context."""
        plan = self.step_plan(meta, q, kv_cache)
        if plan.num_splits is not None:
            return decode_attention(q, kv_cache, meta, scale, num_splits=plan.num_splits)
        return prefill_attention(q, kv_cache, meta, scale, tiles=plan.tiles)
