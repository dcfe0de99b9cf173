"""Plain-data pictures of the KV pool for a dashboard: who holds which block, and what is wasted.

Built on the engine thread from the block manager and the scheduler (read only), then handed to
other threads as frozen dataclasses: nothing here points back into live engine state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from engine.core.block_manager import BlockManager, BlockStats
from engine.core.sequence import Sequence


@dataclass(frozen=True)
class SeqInfo:
    """One live sequence, as the block map and the waste panel need it."""

    seq_id: int
    request_id: str
    sample_index: int
    num_tokens: int
    num_prompt_tokens: int
    max_len: int  # prompt + max_tokens, capped at the model's length: what a contiguous cache reserves
    running: bool


@dataclass(frozen=True)
class BlockMapSnapshot:
    """Every physical block: its holders, how many slots hold tokens, whether it is prefix-cached."""

    timestamp: float
    block_size: int
    owners: tuple[tuple[int, ...], ...]  # per block: ids of the sequences holding it (empty: unused)
    fill: tuple[int, ...]  # per block: token slots holding a token
    cached: tuple[bool, ...]  # per block: registered in the prefix cache (hashed)
    seqs: tuple[SeqInfo, ...]
    stats: BlockStats  # the pool's counters at the same moment
    feed_index: int = 0  # the event feed's next record index then: records from it on came after
    @property
    def num_blocks(self) -> int:
        return len(self.owners)

    def seq(self, seq_id: int) -> SeqInfo | None:
        return next((s for s in self.seqs if s.seq_id == seq_id), None)


@dataclass(frozen=True)
class KvWaste:
    """Slots reserved but empty: our paged pool beside a contiguous cache for the same sequences."""

    paged_reserved: int  # slots in used blocks
    paged_stored: int  # of those, slots holding a token
    contiguous_reserved: int  # sum over live sequences of their max length
    contiguous_stored: int  # sum over live sequences of their tokens

    @property
    def paged_fraction(self) -> float:
        return 1.0 - self.paged_stored / self.paged_reserved if self.paged_reserved else 0.0

    @property
    def contiguous_fraction(self) -> float:
        return 1.0 - self.contiguous_stored / self.contiguous_reserved if self.contiguous_reserved else 0.0


def seq_info(seq: Sequence, max_model_len: int, running: bool) -> SeqInfo:
    max_len = min(seq.num_prompt_tokens + seq.params.max_tokens, max_model_len)
    return SeqInfo(seq.seq_id, seq.request_id, seq.sample_index, seq.num_tokens, seq.num_prompt_tokens,
                   max_len, running)


def live_seqs(running: Iterable[Sequence], waiting: Iterable[Sequence], max_model_len: int) -> tuple[SeqInfo, ...]:
    return (tuple(seq_info(s, max_model_len, True) for s in running)
            + tuple(seq_info(s, max_model_len, False) for s in waiting))


def build_block_map(blocks: BlockManager, seqs: tuple[SeqInfo, ...], timestamp: float,
                    feed_index: int = 0) -> BlockMapSnapshot:
    """O(num_blocks + tokens of the block tables); call it a few times a second, not every step."""
    holders = blocks.owners()
    owners = tuple(tuple(holders.get(i, ())) for i in range(blocks.num_blocks))
    cached = tuple(b.hash is not None for b in blocks.blocks)
    return BlockMapSnapshot(timestamp, blocks.block_size, owners, tuple(blocks.block_fill()), cached, seqs,
                            blocks.stats(), feed_index)


def kv_waste(stats: BlockStats, seqs: Iterable[SeqInfo]) -> KvWaste:
    """Cheap enough for every step: the step's block counters plus one pass over the sequences."""
    running = [s for s in seqs if s.running]
    return KvWaste(stats.slots_reserved, stats.tokens_stored, sum(s.max_len for s in running),
                   sum(s.num_tokens for s in running))
