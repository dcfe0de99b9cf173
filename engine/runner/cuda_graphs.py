"""CUDA graphs for decode steps: one captured forward per batch size of a ladder, replayed.

A pure-decode step launches hundreds of small kernels (28-30 layers x a dozen ops); replaying a
captured graph removes their launch gaps. A graph reads its inputs where it was captured: views
of the StepInputs device buffer for its padded shape. A step pads its batch to the next captured
size; the runner's one build of the step (the copy every step makes) fills those same views, and
the graph replays. Pad rows write nowhere (slot -1) and their logits are dropped.
"""
from __future__ import annotations

from typing import Callable, Hashable, NamedTuple

import torch

from engine.runner.forward_metadata import ForwardMetadata, ScheduledChunk
from engine.runner.step_inputs import Padding, StepInputs

LADDER = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)

Forward = Callable[[torch.Tensor, torch.Tensor, ForwardMetadata], torch.Tensor]  # ids, positions, meta -> logits


class Captured(NamedTuple):
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor  # where each replay leaves its logits
    meta: ForwardMetadata  # the views (and plan) it reads; its plan's tensors must outlive the graph
    layout: tuple  # StepInputs.layout at capture: a replay's build must put its arrays there


def capture(forward: Forward, inputs: StepInputs, paddings: dict[Hashable, Padding],
            device: torch.device) -> dict[Hashable, Captured]:
    """One graph per key (a size, or a size and a variant), over the StepInputs views of its padded
    (all-padding) step.

    Largest first, so the smaller ones reuse its memory pool: only one replays at a time, and its
    logits are consumed (sampled) on the stream before the next replay. Each size's inputs are built
    just before its capture: the warm-up forwards read them (pad slots -1: they write nowhere).
    """
    graphs: dict[int, Captured] = {}
    pool = None
    for size in sorted(paddings, reverse=True):
        meta = inputs.build([], pad=paddings[size]).meta
        for _ in range(2):  # warm-up outside the graph: Triton compiles, the allocator settles
            forward(meta.input_ids, meta.positions, meta)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            logits = forward(meta.input_ids, meta.positions, meta)
        pool = graph.pool()
        graphs[size] = Captured(graph, logits, meta, inputs.layout)
    torch.cuda.synchronize(device)
    return graphs


def replay(captured: Captured, inputs: StepInputs) -> torch.Tensor:
    """Replay a graph on the inputs just built for its padding; its logits (all rows)."""
    if inputs.layout != captured.layout:
        raise RuntimeError("the step's inputs are not where its graph was captured")
    captured.graph.replay()
    return captured.logits


def graph_sizes(max_batch: int) -> list[int]:
    sizes = [b for b in LADDER if b < max_batch]
    return sizes + [max_batch]


class DecodeGraphs:
    """Captured decode forwards for batch sizes up to `max_batch`, contexts up to `max_blocks` blocks
    (the block tables' width in every graph, so that the decode kernel's splits are fixed)."""

    def __init__(self, forward: Forward, inputs: StepInputs, max_batch: int, max_blocks: int,
                 device: torch.device) -> None:
        self.inputs = inputs
        self.max_blocks = max_blocks
        self.sizes = graph_sizes(max_batch)
        self.graphs = capture(forward, inputs, {s: Padding(s, s, max_blocks) for s in self.sizes}, device)

    def accepts(self, chunks: list[ScheduledChunk]) -> bool:
        """A pure-decode step (one token and one sample per sequence) that a captured size holds."""
        return (0 < len(chunks) <= self.sizes[-1]
                and all(len(c.token_ids) == 1 and c.num_samples == 1 and not c.prompt_targets
                        and len(c.block_table) <= self.max_blocks
                        for c in chunks))

    def padding(self, chunks: list[ScheduledChunk]) -> Padding:
        """The captured shape a step of these chunks is built in."""
        size = next(s for s in self.sizes if s >= len(chunks))
        return Padding(size, size, self.max_blocks)

    def run(self, chunks: list[ScheduledChunk], meta: ForwardMetadata) -> torch.Tensor:
        """Logits [B, vocab] of a pure-decode step of B = len(chunks) sequences, whose inputs were
        just built with `padding(chunks)` (meta: that build's metadata)."""
        return replay(self.graphs[meta.num_seqs], self.inputs)[:len(chunks)]
