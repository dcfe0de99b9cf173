"""CUDA graphs for a lone sequence's prefill: the time to first token of one user on an idle server.

A prefill of one sequence launches the same few hundred kernels as a decode step, and at a few
thousand tokens the GPU finishes them faster than Python can launch them: the host sets the time
to first token. So the prefill of one sequence (a whole prompt, or a chunk of one, after a cached
prefix or not) is captured at a ladder of token counts and replayed, like decode steps are.

Each count is captured twice: for a fresh prompt (from position 0, which the Triton backend
attends densely over the step's own keys and values: triton_backend) and for a chunk after a
cached prefix (the paged kernel). A step pads its tokens to the next captured count. Pad tokens
write nowhere (slot -1), belong to no sequence (the attention kernel's tiles past the real query
length do nothing), and only the last real token's logits are read. Steps of several sequences, or
of several samples, run eagerly.
"""
from __future__ import annotations

import torch

from engine.runner.cuda_graphs import Forward, capture, replay
from engine.runner.forward_metadata import ForwardMetadata, ScheduledChunk
from engine.runner.step_inputs import Padding, StepInputs

LADDER = (64, 128, 256, 512, 1024, 2048)


def prefill_sizes(max_tokens: int) -> list[int]:
    """Captured token counts: the ladder up to max_tokens (at most its top), which is always one."""
    top = min(max_tokens, LADDER[-1])
    return [n for n in LADDER if n < top] + [top]


class PrefillGraphs:
    """Captured one-sequence forwards for up to `max_tokens` new tokens over up to `max_blocks` blocks,
    reading the StepInputs views of their padded shape (one sequence, the table at full width)."""

    def __init__(self, forward: Forward, inputs: StepInputs, max_tokens: int, max_blocks: int,
                 device: torch.device) -> None:
        self.inputs = inputs
        self.max_blocks = max_blocks
        self.sizes = prefill_sizes(max_tokens)
        self.graphs = capture(forward, inputs, {(s, fresh): Padding(1, s, max_blocks, fresh)
                                                for s in self.sizes for fresh in (True, False)}, device)

    def accepts(self, chunks: list[ScheduledChunk]) -> bool:
        """One sequence feeding 2..max tokens (a prefill or a chunk of one), sampling at most once."""
        if len(chunks) != 1:
            return False
        c = chunks[0]
        return (1 < len(c.token_ids) <= self.sizes[-1] and c.num_samples <= 1 and not c.prompt_targets
                and len(c.block_table) <= self.max_blocks)

    def padding(self, chunks: list[ScheduledChunk]) -> Padding:
        """The captured shape a step of these chunks is built in."""
        length = len(chunks[0].token_ids)
        return Padding(1, next(s for s in self.sizes if s >= length), self.max_blocks, chunks[0].start_pos == 0)

    def run(self, chunks: list[ScheduledChunk], meta: ForwardMetadata) -> torch.Tensor:
        """Logits [1, vocab] of the chunk's last token, its inputs just built with `padding(chunks)`."""
        return replay(self.graphs[meta.num_tokens, meta.fresh_prompt], self.inputs)
