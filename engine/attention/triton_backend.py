"""Paged attention with Triton kernels: the GPU path.

A step is routed by its host-side query lengths, never by reading the device:
- pure decode (every query length 1): the split-KV decode kernel. Its grid and scratch depend only
  on (batch, kv heads, block_tables width), so the step is capturable in a CUDA graph;
- a fresh prompt alone (one sequence from position 0, no cached prefix: the lone user's time to
  first token; `ForwardMetadata.fresh_prompt`), in bf16 or fp16: causal attention over the step's
  own keys and values, views of the qkv projection's output, through PyTorch's SDPA (cuDNN's fused
  attention where it runs: a lone 1,024-token prompt of Qwen3-0.6B's shape on an H200, 23.6 us a
  layer against 57.6 for the paged kernel, timed alone with triton's do_bench). The step's keys
  and values are stored all the same, and its tiles planned (the paged kernel's fallback);
- anything else (prefills, chunks after a cached prefix, decodes mixed in): the prefill kernel for
  every row in one launch, its decode rows as one-token tiles.
The launch parameters are planned with the step's metadata (`StepInputs`), the query tiles going to
the device in the step's one copy, and read by every layer from `ForwardMetadata.plan`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

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
    dense: bool = False  # a fresh prompt alone (ForwardMetadata.fresh_prompt): SDPA where attend can


def build_plan(meta: ForwardMetadata, shape: AttentionShape, stage: Stage, dense_prefill: bool = True) -> TritonPlan:
    """Plan from shapes and host lists only: no device read. A pure-decode step's splits depend on its
    batch and table width alone (so a captured graph's hold for every replay); other steps' tiles
    are staged, and a fresh prompt alone is marked dense where `dense_prefill`."""
    if meta.is_pure_decode:
        batch, max_blocks = meta.block_tables.shape
        splits = choose_num_splits(batch, shape.num_kv_heads, max_blocks, meta.block_size, shape.device)
        return TritonPlan(shape.num_heads, shape.num_kv_heads, splits, None)
    block_q, _ = tile_shape(shape.num_heads // shape.num_kv_heads)
    # a fresh prompt keeps its tiles too: attend falls back on them (no k and v given, fp32)
    return TritonPlan(shape.num_heads, shape.num_kv_heads, None, plan_tiles(meta, block_q, stage),
                      dense=dense_prefill and meta.fresh_prompt)


# cuDNN's fused attention first, then flash; the math backend where neither runs (the CPU, in tests).
# Both take 16-bit values only: an fp32 step would fall to the math backend, which builds the
# [heads, T, T] scores in memory, so fp32 stays on the paged kernel.
_DENSE_BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
DENSE_DTYPES = (torch.float16, torch.bfloat16)


def dense_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One sequence's causal attention from position 0: q [T, heads, d] over k, v [T, kv_heads, d]
    (any token and head strides) -> [T, heads, d]. Token j sees tokens 0..j, as in the paged kernel;
    tokens past the real prompt (a captured graph's padding) come last, so no real token sees them."""
    heads, kv_heads = q.shape[1], k.shape[1]
    with sdpa_kernel(_DENSE_BACKENDS, set_priority=True):
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
            is_causal=True, scale=scale, enable_gqa=heads != kv_heads)
    return out[0].transpose(0, 1)


class TritonAttentionBackend(AttentionBackend):
    """Paged attention with Triton kernels (CUDA, or the Triton interpreter on the CPU in tests)."""

    name = "triton"

    def __init__(self, dense_prefill: bool = True) -> None:
        # whether a fresh prompt alone goes through SDPA (see the module's docstring); tests turn it
        # off to run such steps through the paged kernel
        self.dense_prefill = dense_prefill

    def store_kv(self, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata) -> None:
        """Write k, v [T, kv_heads, head_dim] at meta.slot_mapping (negative slots skipped)."""
        store_kv(k, v, kv_cache, meta)

    def plan(self, meta: ForwardMetadata, shape: AttentionShape, stage: Stage) -> TritonPlan:
        """The step's launch parameters (see build_plan)."""
        return build_plan(meta, shape, stage, self.dense_prefill)

    def fits(self, plan: object, q: torch.Tensor, kv_cache: torch.Tensor) -> bool:
        return isinstance(plan, TritonPlan) and plan.num_heads == q.shape[1] and plan.num_kv_heads == kv_cache.shape[3]

    @staticmethod
    def max_staged_bytes(max_tokens: int, max_seqs: int) -> int:
        return 2 * 4 * max_tokens  # query tiles: at most one per token, two int32 each

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata, scale: float,
               k: torch.Tensor | None = None, v: torch.Tensor | None = None) -> torch.Tensor:
        """q [T, heads, head_dim] -> [T, heads, head_dim], causal over each sequence's cached context
        (a fresh prompt's over k and v, this step's keys and values, where they are given)."""
        plan = self.step_plan(meta, q, kv_cache)
        if plan.dense and k is not None and v is not None and q.dtype in DENSE_DTYPES:
            return dense_causal_attention(q, k, v, scale)
        if plan.num_splits is not None:
            return decode_attention(q, kv_cache, meta, scale, num_splits=plan.num_splits)
        return prefill_attention(q, kv_cache, meta, scale, tiles=plan.tiles)
