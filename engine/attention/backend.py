"""The attention backend interface: store this step's K/V into the paged cache, then attend."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, TypeVar

import torch

from engine.forward_metadata import ForwardMetadata


P = TypeVar("P")


class AttentionBackend(ABC):
    """Paged attention over a per-layer KV cache.

    A layer's cache is one tensor [2, num_blocks, block_size, num_kv_heads, head_dim]: index 0 keys,
    1 values. A token with slot s lives at block s // block_size, offset s % block_size.
    """

    name: str = "abstract"
    # the plan of the last step seen, shared by all layers; holding its metadata keeps `is` sound
    _plan_meta: ForwardMetadata | None = None
    _plan_key: Any = None
    _plan: Any = None

    def cached_plan(self, meta: ForwardMetadata, key: Any, build: Callable[[], "P"]) -> "P":
        """A step's launch plan, built at its first layer (for this key) and reused by the others."""
        if meta is not self._plan_meta or key != self._plan_key:
            self._plan, self._plan_meta, self._plan_key = build(), meta, key
        return self._plan

    @property
    def current_plan(self) -> Any:
        """The last step's plan. A CUDA graph captured on a step must hold it: its kernels read the
        plan's device tensors (the prefill tiles) at their captured addresses."""
        return self._plan

    @abstractmethod
    def store_kv(self, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata) -> None:
        """Write k, v [T, num_kv_heads, head_dim] at meta.slot_mapping."""

    @abstractmethod
    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata, scale: float) -> torch.Tensor:
        """Causal attention of q [T, num_heads, head_dim] over each sequence's cached context.

        Query token j of sequence i sits at position context_lens[i] - query_len[i] + j and attends
        to cache positions 0..that position. Returns [T, num_heads, head_dim].
        """

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
        meta: ForwardMetadata, scale: float,
    ) -> torch.Tensor:
        self.store_kv(k, v, kv_cache, meta)
        return self.attend(q, kv_cache, meta, scale)
