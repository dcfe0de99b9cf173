"""What one forward pass needs besides the weights: the flattened batch, explicitly passed."""
from __future__ import annotations

from dataclasses import dataclass

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


def build_metadata(chunks: list[ScheduledChunk], block_size: int, device: torch.device | str) -> ForwardMetadata:
    """Flatten a step's chunks into one ForwardMetadata (one host-to-device copy per field)."""
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    query_lens: list[int] = []
    context_lens: list[int] = []
    logits_indices: list[int] = []
    prompt_rows: list[int] = []
    width = max((len(c.block_table) for c in chunks), default=0)
    tables = np.zeros((len(chunks), width), dtype=np.int32)
    for i, chunk in enumerate(chunks):
        n = len(chunk.token_ids)
        start, end = chunk.start_pos, chunk.start_pos + n
        table = chunk.block_table
        if n < 1 or len(table) * block_size < end:
            raise ValueError(f"chunk of {n} tokens ending at {end} does not fit its block table")
        tables[i, :len(table)] = table
        input_ids.extend(chunk.token_ids)
        if n == 1:  # a decode: the common case, kept free of inner loops
            positions.append(start)
            slots.append(table[start // block_size] * block_size + start % block_size)
        else:
            positions.extend(range(start, end))
            slots.extend(table[p // block_size] * block_size + p % block_size for p in range(start, end))
        query_lens.append(n)
        context_lens.append(end)
        logits_indices.extend([len(input_ids) - 1] * chunk.num_samples)
        if chunk.prompt_targets:
            first = len(input_ids) - n
            prompt_rows.extend(range(first, first + len(chunk.prompt_targets)))
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)

    def t(data: list | np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        host = torch.from_numpy(data) if isinstance(data, np.ndarray) else torch.tensor(data, dtype=dtype)
        return host.to(device, non_blocking=True)

    return ForwardMetadata(
        input_ids=t(input_ids, torch.int64),
        positions=t(positions, torch.int64),
        slot_mapping=t(slots, torch.int64),
        block_tables=t(tables, torch.int32),
        context_lens=t(context_lens, torch.int32),
        query_start_loc=t(starts, torch.int32),
        logits_indices=t(logits_indices + prompt_rows, torch.int64),
        query_lens_cpu=query_lens,
        context_lens_cpu=context_lens,
        block_size=block_size,
    )
