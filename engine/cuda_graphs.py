"""CUDA graphs for decode steps: one captured forward per batch size of a ladder, replayed.

A pure-decode step launches hundreds of small kernels (28-30 layers x a dozen ops); replaying a
captured graph removes their launch gaps. Every tensor the graph reads lives in static buffers
sized for the largest batch; a step copies its metadata in, pads to the next captured size and
replays. Pad rows write nowhere (slot -1) and their logits are dropped.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from engine.forward_metadata import ForwardMetadata, ScheduledChunk

LADDER = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)

Forward = Callable[[torch.Tensor, torch.Tensor, ForwardMetadata], torch.Tensor]  # ids, positions, meta -> logits


class Captured(NamedTuple):
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor  # where each replay leaves its logits
    plan: Any  # the attention plan the graph's kernels read (its tensors must outlive the graph)


def capture(forward: Forward, inputs: dict[int, tuple[torch.Tensor, torch.Tensor, ForwardMetadata]],
            current_plan: Callable[[], Any], device: torch.device) -> dict[int, Captured]:
    """One graph per size of (ids, positions, meta) in static buffers.

    Largest first, so the smaller ones reuse its memory pool: only one replays at a time, and its
    logits are consumed (sampled) on the stream before the next replay.
    """
    graphs: dict[int, Captured] = {}
    pool = None
    for size in sorted(inputs, reverse=True):
        ids, pos, meta = inputs[size]
        for _ in range(2):  # warm-up outside the graph: Triton compiles, plans are cached, allocator settles
            forward(ids, pos, meta)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            logits = forward(ids, pos, meta)
        pool = graph.pool()
        graphs[size] = Captured(graph, logits, current_plan())
    torch.cuda.synchronize(device)
    return graphs


def graph_sizes(max_batch: int) -> list[int]:
    sizes = [b for b in LADDER if b < max_batch]
    return sizes + [max_batch]


class DecodeGraphs:
    """Captured decode forwards for batch sizes up to `max_batch`, contexts up to `max_blocks` blocks.

    A step's inputs go from two pinned host buffers to the device in two copies (token ids,
    positions, slots as int64; block tables and context lengths as int32), then the graph replays.
    """

    def __init__(self, forward: Forward, current_plan: Callable[[], Any], max_batch: int, max_blocks: int,
                 block_size: int, device: torch.device) -> None:
        self.block_size = block_size
        self.max_blocks = max_blocks
        self.sizes = graph_sizes(max_batch)
        n = self.sizes[-1]
        # pinned host staging, filled through numpy views: rows of token ids, positions, slots; tables; lengths
        self._host64 = torch.zeros(3, n, dtype=torch.int64, pin_memory=True)
        self._host_tables = torch.zeros(n, max_blocks, dtype=torch.int32, pin_memory=True)
        self._host_lens = torch.ones(n, dtype=torch.int32, pin_memory=True)
        self._h64, self._ht, self._hl = self._host64.numpy(), self._host_tables.numpy(), self._host_lens.numpy()
        self._dev64 = torch.zeros(3, n, dtype=torch.int64, device=device)
        self._dev64[2].fill_(-1)
        self._tables = torch.zeros(n, max_blocks, dtype=torch.int32, device=device)
        self._context_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.logits_indices = torch.arange(n, dtype=torch.int64, device=device)
        self.graphs = capture(forward, {size: (self._dev64[0, :size], self._dev64[1, :size], self._static_meta(size))
                                        for size in self.sizes}, current_plan, device)

    def _static_meta(self, size: int) -> ForwardMetadata:
        return ForwardMetadata(
            input_ids=self._dev64[0, :size], positions=self._dev64[1, :size], slot_mapping=self._dev64[2, :size],
            block_tables=self._tables[:size], context_lens=self._context_lens[:size],
            query_start_loc=self.query_start_loc[:size + 1], logits_indices=self.logits_indices[:size],
            query_lens_cpu=[1] * size, context_lens_cpu=[self.max_blocks * self.block_size] * size,
            block_size=self.block_size,
        )

    def accepts(self, chunks: list[ScheduledChunk]) -> bool:
        """A pure-decode step (one token and one sample per sequence) that a captured size holds."""
        return (0 < len(chunks) <= self.sizes[-1]
                and all(len(c.token_ids) == 1 and c.num_samples == 1 and not c.prompt_targets
                        and len(c.block_table) <= self.max_blocks
                        for c in chunks))

    def run(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        """Logits [B, vocab] of a pure-decode step of B = len(chunks) sequences."""
        b, bs = len(chunks), self.block_size
        size = next(s for s in self.sizes if s >= b)
        h64, tables, lens = self._h64, self._ht, self._hl
        ids, positions, slots = [], [], []
        for i, c in enumerate(chunks):
            pos, table = c.start_pos, c.block_table
            ids.append(c.token_ids[0])
            positions.append(pos)
            slots.append(table[pos // bs] * bs + pos % bs)
            tables[i, :len(table)] = table
        h64[0, :b], h64[1, :b], h64[2, :b] = ids, positions, slots  # three conversions, not 3 x b
        lens[:b] = h64[1, :b] + 1
        h64[:, b:size] = ((0,), (0,), (-1,))  # pad rows: write nowhere, attend one slot
        lens[b:size] = 1
        self._dev64.copy_(self._host64, non_blocking=True)  # whole (12 KiB at most): a slice would not be contiguous
        self._tables[:size].copy_(self._host_tables[:size], non_blocking=True)
        self._context_lens[:size].copy_(self._host_lens[:size], non_blocking=True)
        captured = self.graphs[size]
        captured.graph.replay()
        return captured.logits[:b]
