"""CUDA graphs for a lone sequence's prefill: the time to first token of one user on an idle server.

A prefill of one sequence launches the same few hundred kernels as a decode step, and at a few
thousand tokens the GPU finishes them faster than Python can launch them: the host sets the time
to first token. So the prefill of one sequence (a whole prompt, or a chunk of one, after a cached
prefix or not) is captured at a ladder of token counts and replayed, like decode steps are.

A step pads its tokens to the next captured count. Pad tokens write nowhere (slot -1), belong to
no sequence (the attention kernel's tiles past the real query length do nothing), and only the
last real token's logits are read. Steps of several sequences, or of several samples, run eagerly.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from engine.cuda_graphs import Forward, capture
from engine.forward_metadata import ForwardMetadata, ScheduledChunk

LADDER = (64, 128, 256, 512, 1024, 2048)


def prefill_sizes(max_tokens: int) -> list[int]:
    """Captured token counts: the ladder up to max_tokens (at most its top), which is always one."""
    top = min(max_tokens, LADDER[-1])
    return [n for n in LADDER if n < top] + [top]


class PrefillGraphs:
    """Captured one-sequence forwards for up to `max_tokens` new tokens over up to `max_blocks` blocks.

    Inputs go from pinned host buffers in three copies: token ids, positions, slots and the logits
    row (int64); query start and context length (int32); the block table.
    """

    def __init__(self, forward: Forward, current_plan: Callable[[], Any], max_tokens: int, max_blocks: int,
                 block_size: int, device: torch.device) -> None:
        self.block_size, self.max_blocks = block_size, max_blocks
        self.sizes = prefill_sizes(max_tokens)
        n = self.sizes[-1]
        self._host64 = torch.zeros(3 * n + 1, dtype=torch.int64, pin_memory=True)  # ids | positions | slots | row
        self._host32 = torch.zeros(3, dtype=torch.int32, pin_memory=True)  # query start 0, query length, context
        self._host_table = torch.zeros(1, max_blocks, dtype=torch.int32, pin_memory=True)
        self._h64, self._h32, self._ht = self._host64.numpy(), self._host32.numpy(), self._host_table.numpy()
        self._dev64 = torch.zeros(3 * n + 1, dtype=torch.int64, device=device)
        self._dev64[2 * n:3 * n].fill_(-1)
        self._dev32 = torch.tensor([0, 1, 1], dtype=torch.int32, device=device)
        self._table = torch.zeros(1, max_blocks, dtype=torch.int32, device=device)
        # a prefill chunk that samples nothing never waits for the device: before the staging buffers
        # are refilled, the last step's copies out of them must have run
        self._copied = torch.cuda.Event()
        self.graphs = capture(forward, {size: self._static_inputs(size) for size in self.sizes}, current_plan, device)

    def _static_inputs(self, size: int) -> tuple[torch.Tensor, torch.Tensor, ForwardMetadata]:
        n, dev = self.sizes[-1], self._dev64
        meta = ForwardMetadata(
            input_ids=dev[:size], positions=dev[n:n + size], slot_mapping=dev[2 * n:2 * n + size],
            block_tables=self._table, context_lens=self._dev32[2:3], query_start_loc=self._dev32[0:2],
            logits_indices=dev[3 * n:], query_lens_cpu=[size], context_lens_cpu=[self.max_blocks * self.block_size],
            block_size=self.block_size,
        )
        return meta.input_ids, meta.positions, meta

    def accepts(self, chunks: list[ScheduledChunk]) -> bool:
        """One sequence feeding 2..max tokens (a prefill or a chunk of one), sampling at most once."""
        if len(chunks) != 1:
            return False
        c = chunks[0]
        return (1 < len(c.token_ids) <= self.sizes[-1] and c.num_samples <= 1 and not c.prompt_targets
                and len(c.block_table) <= self.max_blocks)

    def run(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        """Logits [1, vocab] of the chunk's last token."""
        (c,) = chunks
        length, start, bs, n = len(c.token_ids), c.start_pos, self.block_size, self.sizes[-1]
        size = next(s for s in self.sizes if s >= length)
        self._copied.synchronize()
        h64 = self._h64
        positions = np.arange(start, start + length)
        table = np.asarray(c.block_table, dtype=np.int64)
        h64[:length] = c.token_ids
        h64[n:n + length] = positions
        h64[2 * n:2 * n + length] = table[positions // bs] * bs + positions % bs
        h64[length:size], h64[n + length:n + size], h64[2 * n + length:2 * n + size] = 0, 0, -1  # padding
        h64[3 * n] = length - 1
        self._h32[1], self._h32[2] = length, start + length
        self._ht[0, :len(table)] = table
        self._dev64.copy_(self._host64, non_blocking=True)
        self._dev32.copy_(self._host32, non_blocking=True)
        self._table.copy_(self._host_table, non_blocking=True)
        self._copied.record()
        captured = self.graphs[size]
        captured.graph.replay()
        return captured.logits
