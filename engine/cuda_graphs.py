"""CUDA graphs for decode steps: one captured forward per batch size of a ladder, replayed.

A pure-decode step launches hundreds of small kernels (28-30 layers x a dozen ops); replaying a
captured graph removes their launch gaps. Every tensor the graph reads lives in static buffers
sized for the largest batch; a step copies its metadata in, pads to the next captured size and
replays. Pad rows write nowhere (slot -1) and their logits are dropped.
"""
from __future__ import annotations

from typing import Callable

import torch

from engine.forward_metadata import ForwardMetadata

LADDER = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)

Forward = Callable[[torch.Tensor, torch.Tensor, ForwardMetadata], torch.Tensor]  # ids, positions, meta -> logits


def graph_sizes(max_batch: int) -> list[int]:
    sizes = [b for b in LADDER if b < max_batch]
    return sizes + [max_batch]


class DecodeGraphs:
    """Captured decode forwards for batch sizes up to `max_batch`, contexts up to `max_blocks` blocks."""

    def __init__(self, forward: Forward, max_batch: int, max_blocks: int, block_size: int,
                 device: torch.device) -> None:
        self.block_size = block_size
        self.max_blocks = max_blocks
        self.sizes = graph_sizes(max_batch)
        n = self.sizes[-1]
        i32, i64 = torch.int32, torch.int64
        self.input_ids = torch.zeros(n, dtype=i64, device=device)
        self.positions = torch.zeros(n, dtype=i64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=i64, device=device)
        self.block_tables = torch.zeros(n, max_blocks, dtype=i32, device=device)
        self.context_lens = torch.ones(n, dtype=i32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=i32, device=device)
        self.logits_indices = torch.arange(n, dtype=i64, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, ForwardMetadata]] = {}
        pool = None
        for size in reversed(self.sizes):  # largest first, so the smaller ones reuse its memory
            meta = self._static_meta(size)
            ids, pos = self.input_ids[:size], self.positions[:size]
            for _ in range(2):  # warm-up outside the graph: Triton compiles, allocator settles
                forward(ids, pos, meta)
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = forward(ids, pos, meta)
            pool = graph.pool()
            self.graphs[size] = (graph, logits, meta)
        torch.cuda.synchronize(device)

    def _static_meta(self, size: int) -> ForwardMetadata:
        return ForwardMetadata(
            input_ids=self.input_ids[:size], positions=self.positions[:size],
            slot_mapping=self.slot_mapping[:size], block_tables=self.block_tables[:size],
            context_lens=self.context_lens[:size], query_start_loc=self.query_start_loc[:size + 1],
            logits_indices=self.logits_indices[:size], query_lens_cpu=[1] * size,
            context_lens_cpu=[self.max_blocks * self.block_size] * size, block_size=self.block_size,
        )

    def fits(self, meta: ForwardMetadata) -> bool:
        return (meta.is_pure_decode and meta.num_seqs <= self.sizes[-1]
                and meta.block_tables.shape[1] <= self.max_blocks
                and meta.logits_indices.shape[0] == meta.num_seqs)

    def replay(self, meta: ForwardMetadata) -> torch.Tensor:
        """Logits [B, vocab] of a pure-decode step of B sequences (B <= the largest size)."""
        b = meta.num_seqs
        size = next(s for s in self.sizes if s >= b)
        graph, logits, _ = self.graphs[size]
        self.input_ids[:b].copy_(meta.input_ids)
        self.positions[:b].copy_(meta.positions)
        self.slot_mapping[:b].copy_(meta.slot_mapping)
        self.slot_mapping[b:size].fill_(-1)
        width = meta.block_tables.shape[1]
        self.block_tables[:b, :width].copy_(meta.block_tables)
        self.context_lens[:b].copy_(meta.context_lens)
        self.context_lens[b:size].fill_(1)
        graph.replay()
        return logits[:b]
