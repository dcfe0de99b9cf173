"""The attention backend interface: store this step's K/V into the paged cache, then attend.

A backend also plans a step: what all its layers share (split counts, query tiles, gather rows).
`StepInputs` asks for the plan while it builds the step's metadata, in two parts: `plan` on the
host before the step's one host-to-device copy (the arrays its kernels index go into that copy
through `stage`), then `finish_plan` for any device work on the metadata's tensors, queued after the
copy. The plan travels in `ForwardMetadata.plan`; the backend keeps no state between calls.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.runner.forward_metadata import ForwardMetadata
from engine.runner.staging import Stage


@dataclass(frozen=True)
class AttentionShape:
    """What a step's plan depends on besides the step: the model's heads, the cache's size, the device."""

    num_heads: int
    num_kv_heads: int
    num_slots: int  # cache slots per layer: num_blocks * block_size
    device: torch.device

    @classmethod
    def of(cls, q: torch.Tensor, kv_cache: torch.Tensor) -> "AttentionShape":
        """From q [T, heads, d] and a layer's cache [2, num_blocks, block_size, kv_heads, d]."""
        return cls(q.shape[1], kv_cache.shape[3], kv_cache.shape[1] * kv_cache.shape[2], q.device)


def copy_stage(device: torch.device) -> Stage:
    """A Stage that copies each array on its own (planning outside StepInputs: tests, references); a
    copy on the CPU too, since the array may be shared and read-only (triton_prefill's cached tiles)."""
    return lambda array: torch.from_numpy(np.array(array, order="C")).to(device)


class AttentionBackend(ABC):
    """Paged attention over a per-layer KV cache.

    A layer's cache is one tensor [2, num_blocks, block_size, num_kv_heads, head_dim]: index 0 keys,
    1 values. A token with slot s lives at block s // block_size, offset s % block_size.
    """

    name: str = "abstract"

    @abstractmethod
    def plan(self, meta: ForwardMetadata, shape: AttentionShape, stage: Stage) -> Any:
        """A step's plan from meta's host lists and its tensors' shapes; their values are not on the
        device yet. Index arrays for the kernels go through `stage`."""

    def finish_plan(self, plan: Any, meta: ForwardMetadata) -> Any:
        """The plan completed by device work on meta's tensors, queued after the step's copy (none here)."""
        return plan

    @abstractmethod
    def fits(self, plan: Any, q: torch.Tensor, kv_cache: torch.Tensor) -> bool:
        """Whether `plan` is this backend's, made for q's heads and this cache."""

    @staticmethod
    def max_staged_bytes(max_tokens: int, max_seqs: int) -> int:
        """The most bytes `plan` stages for a step of up to these many tokens and sequences."""
        return 0

    def step_plan(self, meta: ForwardMetadata, q: torch.Tensor, kv_cache: torch.Tensor) -> Any:
        """meta.plan when it fits (every engine step: planned once, for all layers); else a plan made
        now, for this call alone (metadata built without a backend: tests, references)."""
        if self.fits(meta.plan, q, kv_cache):
            return meta.plan
        shape = AttentionShape.of(q, kv_cache)
        return self.finish_plan(self.plan(meta, shape, copy_stage(q.device)), meta)

    @abstractmethod
    def store_kv(self, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata) -> None:
        """Write k, v [T, num_kv_heads, head_dim] at meta.slot_mapping."""

    @abstractmethod
    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata, scale: float,
               k: torch.Tensor | None = None, v: torch.Tensor | None = None) -> torch.Tensor:
        """Causal attention of q [T, num_heads, head_dim] over each sequence's cached context.

        Query token j of sequence i sits at position context_lens[i] - query_len[i] + j and attends
        to cache positions 0..that position. Returns [T, num_heads, head_dim]. k and v [T, kv_heads,
        head_dim], where given, are this step's keys and values, already stored: a backend may read
        them instead of the cache where the step's whole context is in them (a fresh prompt).
        """

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
        meta: ForwardMetadata, scale: float,
    ) -> torch.Tensor:
        self.store_kv(k, v, kv_cache, meta)
        return self.attend(q, kv_cache, meta, scale, k, v)

    def attend_unstored(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
        meta: ForwardMetadata, scale: float,
    ) -> torch.Tensor:
        """A pure-decode step's attention as `forward` computes it, but the cache is only read: k and v
        (each sequence's newest token) stand in at its last position, and the caller stores them
        later. A step without side effects is one that torch.compile can take whole."""
        raise NotImplementedError(f"the {self.name} attention backend has no unstored decode attention")
