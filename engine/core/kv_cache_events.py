"""What happened to the prefix cache, as plain data: blocks cached, blocks evicted, cache cleared.

The same three facts vLLM publishes as KV events (BlockStored, BlockRemoved, AllBlocksCleared), in
the engine's own terms: a hash is the block manager's chained hash (a Python int, signed 64-bit),
the parent of a chain's first block is None (the root). `server/kv_events.py` turns them into
vLLM's wire format.

  CachedBlocks  full blocks that got their hash this step, a chain: each one's parent is the one
                before it, the first one's parent is `parent`; `token_ids` are all of their tokens
  EvictedBlocks cached blocks whose hash was dropped (reused for other tokens, a failed owner's, a
                reset that kept some in-use blocks cached)
  CacheCleared  no block holds a hash any more (a reset with none in use)

No hits: a prefix-cache hit (a new prompt reusing a cached block) is not one of vLLM's events, and
these carry none either.
"""
from __future__ import annotations

from typing import NamedTuple


class CachedBlocks(NamedTuple):
    hashes: tuple[int, ...]
    parent: int | None  # the hash of the block before the first one; None: the chain starts a prompt
    token_ids: tuple[int, ...]  # len(hashes) * block_size tokens


class EvictedBlocks(NamedTuple):
    hashes: tuple[int, ...]


class CacheCleared(NamedTuple):
    pass


KVCacheChange = CachedBlocks | EvictedBlocks | CacheCleared


class CacheChangeLog:
    """Collects changes between two `take`s, merging runs as vLLM does: blocks cached one after the
    other along one chain become one CachedBlocks, evictions in a row one EvictedBlocks."""

    def __init__(self) -> None:
        # [kind, hashes, parent, token_ids], lists while open: a long prompt's chain grows block by block
        self._open: list[list] = []

    def cached(self, block_hash: int, parent: int | None, token_ids: tuple[int, ...]) -> None:
        last = self._open[-1] if self._open else None
        if last is not None and last[0] is CachedBlocks and last[1][-1] == parent:
            last[1].append(block_hash)
            last[3].extend(token_ids)
        else:
            self._open.append([CachedBlocks, [block_hash], parent, list(token_ids)])

    def evicted(self, block_hash: int) -> None:
        last = self._open[-1] if self._open else None
        if last is not None and last[0] is EvictedBlocks:
            last[1].append(block_hash)
        else:
            self._open.append([EvictedBlocks, [block_hash]])

    def cleared(self) -> None:
        """Everything is gone: the evictions just before it say nothing more."""
        while self._open and self._open[-1][0] is EvictedBlocks:
            self._open.pop()
        self._open.append([CacheCleared])

    def take(self) -> list[KVCacheChange]:
        """The changes since the last call, oldest first."""
        open_, self._open = self._open, []
        return [_freeze(entry) for entry in open_]


def _freeze(entry: list) -> KVCacheChange:
    kind = entry[0]
    if kind is CachedBlocks:
        return CachedBlocks(tuple(entry[1]), entry[2], tuple(entry[3]))
    if kind is EvictedBlocks:
        return EvictedBlocks(tuple(entry[1]))
    return CacheCleared()
