"""One request under the magnifying glass: its sequences' tokens and the physical blocks that hold them.

Built on the engine thread from the scheduler's queues and the block manager (read only), then handed
to other threads as frozen plain data. The text of each token is added afterwards, on the caller's
thread (`with_token_texts`), so that the engine thread never spends time on the tokenizer for it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable

from engine.core.block_manager import BlockManager
from engine.core.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class SeqInspection:
    """One live sequence (one sample) of a request. A waiting one holds no blocks (preempted or not
    admitted yet); the three block tuples run in step with `block_table`."""

    seq_id: int
    sample_index: int
    status: str  # running | waiting
    num_prompt_tokens: int
    num_tokens: int
    num_computed_tokens: int  # tokens whose K/V are in the cache
    num_cached_tokens: int  # prompt tokens found in the prefix cache at its last admission
    token_ids: tuple[int, ...]
    block_table: tuple[int, ...]  # physical block ids, in token order
    ref_counts: tuple[int, ...]  # per block: the sequences holding it (> 1: shared)
    cached: tuple[bool, ...]  # per block: registered in the prefix cache (full, reusable by a same prefix)
    token_texts: tuple[str, ...] = ()  # per token: its text as the model tokenized it (" the"); () until filled


@dataclass(frozen=True)
class RequestInspection:
    request_id: str
    block_size: int
    seqs: tuple[SeqInspection, ...]  # by sample index


def inspect_request(seqs: Iterable[Sequence], blocks: BlockManager, request_id: str) -> RequestInspection | None:
    """The live sequences of `request_id` among `seqs` (the scheduler's running and waiting); None if
    it has none (unknown or finished). O(live sequences + the request's tokens)."""
    found = sorted((s for s in seqs if s.request_id == request_id and not s.is_finished),
                   key=lambda s: s.sample_index)
    if not found:
        return None
    return RequestInspection(request_id, blocks.block_size, tuple(_inspect_seq(s, blocks) for s in found))


def _inspect_seq(seq: Sequence, blocks: BlockManager) -> SeqInspection:
    table = tuple(blocks.block_table(seq.seq_id)) if blocks.has_seq(seq.seq_id) else ()
    status = "running" if seq.status is SequenceStatus.RUNNING else "waiting"
    tokens = tuple(seq.token_ids[:-1] if seq.has_pending_token else seq.token_ids)  # the host's tokens only
    return SeqInspection(
        seq.seq_id, seq.sample_index, status, seq.num_prompt_tokens, len(tokens), seq.num_computed_tokens,
        seq.num_cached_tokens, tokens, table,
        tuple(blocks.blocks[b].ref_count for b in table), tuple(blocks.blocks[b].hash is not None for b in table))


def with_token_texts(inspection: RequestInspection, token_text: Callable[[int], str]) -> RequestInspection:
    """A copy with each sequence's `token_texts` filled by `token_text(token_id)` (each distinct id
    decoded once: the samples of a request share their prompt)."""
    texts: dict[int, str] = {}

    def text(token: int) -> str:
        if token not in texts:
            texts[token] = token_text(token)
        return texts[token]

    seqs = tuple(replace(s, token_texts=tuple(text(t) for t in s.token_ids)) for s in inspection.seqs)
    return replace(inspection, seqs=seqs)
