"""What one forward pass needs besides the weights: the flattened batch, explicitly passed.

engine/runner/step_inputs.py builds it (`StepInputs`, or `build_metadata` for one step alone).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch


@dataclass
class ForwardMetadata:
    """One engine step's batch, flattened over its sequences (B sequences, T new tokens in all).

    Sequence i contributes tokens query_start_loc[i]:query_start_loc[i+1]; its KV cache holds
    context_lens[i] tokens once this step's keys and values are stored (cached prefix + new tokens).
    A decode sequence has query length 1; a prefill (or prefill chunk) has more, and may start after
    a cached prefix (context_len > query_len).
    """

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64, position of each token in its sequence
    slot_mapping: torch.Tensor  # [T] int64, block_id * block_size + offset where each token's K/V goes
    block_tables: torch.Tensor  # [B, max_blocks] int32, padded with 0 past each table's end
    context_lens: torch.Tensor  # [B] int32, tokens in the cache after this step
    query_start_loc: torch.Tensor  # [B + 1] int32, cumulative query lengths
    logits_indices: torch.Tensor  # [S + R] int64: rows of the hidden states to sample (may repeat,
    # n > 1), then the R rows whose prompt logprobs are asked (ScheduledChunk.prompt_targets)
    # host copies, so backends can plan without a device sync
    query_lens_cpu: list[int]
    context_lens_cpu: list[int]
    block_size: int
    # one sequence's prompt from position 0, several tokens: its whole context is this step's keys
    # and values (said by the host, never read off the device or the lists above, which a graph's
    # padding fills as captured)
    fresh_prompt: bool = False
    # the attention backend's plan of this step, shared by every layer (split counts, query tiles,
    # gather rows: see each backend's `plan`); None where the metadata was built without a backend
    # (tests, references), and then the backend plans at each call
    plan: Any = None

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_query_len(self) -> int:
        return max(self.query_lens_cpu, default=0)

    @property
    def max_context_len(self) -> int:
        return max(self.context_lens_cpu, default=0)

    @property
    def is_pure_decode(self) -> bool:
        return self.max_query_len == 1


@dataclass(slots=True)
class ScheduledChunk:
    """One sequence's share of a step, as plain Python: the tokens it feeds and where they go."""

    token_ids: list[int]  # the tokens whose K/V this step computes
    start_pos: int  # tokens of this sequence already in the cache
    block_table: list[int]  # physical blocks covering at least start_pos + len(token_ids) tokens
    num_samples: int  # next tokens to sample from the last token's logits (0 for a non-final chunk)
    # prompt_logprobs: the prompt tokens that this chunk's first len(...) positions predict, whose
    # logits are taken too (after all the sampled rows)
    prompt_targets: tuple[int, ...] = ()
    prompt_k: int = 0  # and the most likely alternatives to each of them to report
    # names block_table's contents for good (BlockManager.stamped_table); 0: unknown. A wide step's
    # builder keeps each row's table under it between steps, rewriting only the rows that changed
    table_stamp: int = 0


Index = TypeVar("Index", np.ndarray, torch.Tensor)


def cache_slots(tables: Index, rows: Index | slice, positions: Index, block_size: int) -> Index:
    """The cache slot of each position through its sequence's block table: block * block_size + offset.

    tables [B, max_blocks] (int32), rows and positions broadcast against each other; numpy arrays
    or torch tensors alike. Returns int64 of their broadcast shape.
    """
    blocks = tables[rows, positions // block_size]
    blocks = blocks.long() if isinstance(blocks, torch.Tensor) else blocks.astype(np.int64)
    return blocks * block_size + positions % block_size
