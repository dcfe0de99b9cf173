"""The paged KV cache's bookkeeping: physical blocks, block tables, reference counts, prefix cache.

Plain Python, no torch. Tensors never appear here: the runner turns block tables into slot
mappings, and performs the (src, dst) block copies that copy-on-write asks for.

A block is in exactly one of three places:
  used         ref_count > 0, listed in ref_count block tables
  free         ref_count 0, no hash, in `_free` (FIFO)
  cached-free  ref_count 0, hash kept, in `_evictable` (LRU order): reusable by a later request
               with the same prefix, or evicted (hash dropped) when a fresh block is needed

A cap (`set_cap`) limits the blocks in use below the pool's size, to simulate memory pressure:
allocations beyond it are refused as if the pool were that small, except for a sequence that would
be the only one holding blocks: one sequence always fits the pool, so a cap below it must not starve
it (the scheduler would preempt it and retry forever).
"""
from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from engine.core.kv_cache_events import CacheChangeLog, KVCacheChange

# Chained hash of a full block: depends on every token before it, so equal hashes mean equal prefixes.
ROOT_HASH = 0
# Block tables' stamps, unique in the process: a stamp names one table's contents for good (table_stamp)
_STAMPS = itertools.count(1)


def block_hash(parent: int, tokens: Iterable[int]) -> int:
    return hash((parent, tuple(tokens)))


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None  # set once the block is full and registered in the prefix cache
    token_ids: tuple[int, ...] = ()  # the block's tokens while hashed, to rule out hash collisions
    twin: int | None = None  # the hash it holds, while another block is registered for it (a twin)


class BlockEvent(NamedTuple):
    """One change of one physical block, as the event feed records it.

    kind: allocated (a free block to a sequence), reused (a cached-free block back into use on a
    prefix hit), shared (one more holder), released (one holder fewer, others remain), freed (no
    holder left: free, or cached-free if it still holds a prefix), copied (copy-on-write: `block_id`
    is the copy, `src` the shared original), cached (registered in the prefix cache), evicted (its
    prefix dropped: reused for other tokens, a failed owner, or a cache reset).
    """

    kind: str
    block_id: int
    seq_id: int  # the sequence concerned, -1 for none (an eviction by reset)
    ref_count: int  # the block's holders after the event
    src: int = -1  # for copied: the block copied from


@dataclass(frozen=True)
class BlockStats:
    """Counters a dashboard can read. used + free + cached_free == total."""

    total: int
    cap: int  # blocks allocations may bring into use: total unless a cap is set (used may exceed it)
    used: int
    free: int
    cached_free: int  # free but still holding a reusable prefix
    cached: int  # all blocks registered in the prefix cache (used or cached_free)
    shared: int  # used blocks with ref_count > 1
    tokens_stored: int  # token slots holding a token, each physical slot counted once
    slots_reserved: int  # token slots in used blocks
    block_size: int


@dataclass
class _SeqState:
    table: list[int] = field(default_factory=list)
    num_tokens: int = 0  # slots this sequence has claimed in its table
    hashes: list[int] = field(default_factory=list)  # chained hashes of its leading full blocks
    # (hash, tokens) of the full blocks after those, hashed ahead while the device fills them
    # (hash_ahead); cache_full_blocks takes them instead of hashing again
    ahead: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)
    stamp: int = 0  # a new one from _STAMPS at every change of `table`


class BlockManager:
    """Allocates fixed-size KV blocks to sequences, shares them by reference count.

    Prefix caching: full blocks are registered by chained hash; a new sequence whose prompt starts
    with the same tokens reuses them (`match_prefix`), even after their owner freed them (LRU).
    Copy-on-write: a partly filled block shared by forked samples is copied before one writes to it.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 record_events: bool = False) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._by_hash: dict[int, int] = {}
        # twins: blocks in use that hold a registered hash's tokens, computed beside the registered
        # block (two prompts with one prefix in one step): hash -> {block id: its parent hash}. Should
        # the registered block go (evicted, or its owner failed), a twin takes its place in the cache
        self._twins: dict[int, dict[int, int | None]] = {}
        self._seqs: dict[int, _SeqState] = {}
        self._copies: list[tuple[int, int]] = []
        # counters kept as blocks change hands, so stats() is O(1) on pools of tens of thousands
        self._fill = [0] * num_blocks  # tokens held by each used block
        self._tokens_stored = 0
        self._num_shared = 0
        self._events: list[tuple] | None = None  # BlockEvents' fields
        self._cache_log: CacheChangeLog | None = None  # prefix-cache changes, for KV events
        self.record_events(record_events)
        self._cap: int | None = None

    def set_cap(self, cap: int | None) -> None:
        """Allow at most `cap` blocks in use (None: the whole pool). Lowering it below the blocks in
        use frees nothing: allocations fail until enough are freed (the scheduler preempts)."""
        if cap is not None and cap < 1:
            raise ValueError(f"the block cap must be at least 1, got {cap}")
        self._cap = cap

    @property
    def cap(self) -> int:
        """The effective cap: the pool's size when none is set, or when the cap exceeds it."""
        return self.num_blocks if self._cap is None else min(self._cap, self.num_blocks)

    def record_events(self, on: bool) -> None:
        """Start or stop recording block events (stopping drops those not taken)."""
        self._events = [] if on else None

    def record_cache_changes(self, on: bool) -> None:
        """Start or stop logging prefix-cache changes (hashes cached, evicted, all cleared)."""
        self._cache_log = CacheChangeLog() if on else None

    def take_cache_changes(self) -> list[KVCacheChange]:
        """The prefix-cache changes since the last call, oldest first (none unless logging)."""
        return self._cache_log.take() if self._cache_log is not None else []

    def take_events(self) -> list[tuple]:
        """The block events since the last call, oldest first (none unless record_events): each a
        BlockEvent's fields as a plain tuple (`BlockEvent._make` names them), as the event feed keeps
        them (a plain tuple costs a tenth of a NamedTuple to make, and the collector stops tracking it)."""
        if not self._events:
            return []
        events, self._events = self._events, []
        return events

    def _note(self, kind: str, block_id: int, seq_id: int, src: int = -1) -> None:
        if self._events is not None:
            self._events.append((kind, block_id, seq_id, self.blocks[block_id].ref_count, src))

    # ---- queries -------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take now: free plus cached-free (evicted on demand), within the cap."""
        pooled = len(self._free) + len(self._evictable)
        if self._cap is None:
            return pooled
        return max(0, min(pooled, self._cap - (self.num_blocks - pooled)))

    def block_table(self, seq_id: int) -> list[int]:
        return self._seqs[seq_id].table

    def stamped_table(self, seq_id: int) -> tuple[list[int], int]:
        """The block table and its stamp: a number that changes whenever the table does and is never
        given to other contents (of any table, in this process), so a copy kept under it stays right
        (the runner keeps a wide step's table rows between steps)."""
        state = self._seqs[seq_id]
        return state.table, state.stamp

    def has_seq(self, seq_id: int) -> bool:
        return seq_id in self._seqs

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match_prefix(self, token_ids: list[int]) -> list[int]:
        """Cached blocks holding the longest run of full blocks that starts `token_ids`.

        The last token is never covered: its logits must be computed to sample the next one.
        """
        if not self.enable_prefix_caching:
            return []
        found: list[int] = []
        parent = ROOT_HASH
        bs = self.block_size
        for i in range((len(token_ids) - 1) // bs):
            tokens = tuple(token_ids[i * bs:(i + 1) * bs])
            parent = block_hash(parent, tokens)
            block_id = self._by_hash.get(parent)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            found.append(block_id)
        return found

    # ---- allocation ----------------------------------------------------------------------------
    def allocate_slots(self, seq_id: int, num_computed: int, num_new: int, prefix: list[int] = ()) -> bool:
        """Make `seq_id`'s table cover num_computed + num_new tokens; False (and no change) if short.

        `prefix` (first call only) are cached blocks from `match_prefix` covering num_computed tokens.
        """
        state = self._seqs.get(seq_id)
        end = num_computed + num_new
        if num_new == 1 and state is not None and state.num_tokens == num_computed and not prefix:
            # the common decode, in a few lines: a 256-wide step makes this call for every sequence
            bs = self.block_size
            idx = num_computed // bs
            if idx < len(state.table):  # the slot is in a block it holds already
                block_id = state.table[idx]
                if num_computed % bs == 0 or self.blocks[block_id].ref_count == 1:  # no copy-on-write
                    self._grow_fill(state, end)
                    return True
        if state is not None and not prefix and end <= len(state.table) * self.block_size:
            if not self._needs_copy(state, num_computed, num_new):  # the common decode: room in its last block
                if end > state.num_tokens:
                    self._grow_fill(state, end)
                return True
        if state is None:
            if len(prefix) * self.block_size != num_computed:
                raise ValueError("a new sequence starts from its cached prefix only")
            reused_free = sum(1 for b in prefix if self.blocks[b].ref_count == 0)
            state = _SeqState()
        else:
            if prefix:
                raise ValueError(f"sequence {seq_id} already has blocks")
            reused_free = 0
        fresh = max(0, self.blocks_needed(end) - len(state.table) - len(prefix))
        cow = self._needs_copy(state, num_computed, num_new)
        lone = not self._seqs or (len(self._seqs) == 1 and seq_id in self._seqs)  # the cap spares it
        available = len(self._free) + len(self._evictable) if lone else self.num_free_blocks
        if fresh + int(cow) > available - reused_free:
            return False
        # a new table, more blocks, or a block copied (the paths above change none): a new stamp
        # first, so that no change is ever seen under the old one
        state.stamp = next(_STAMPS)
        if seq_id not in self._seqs:
            self._seqs[seq_id] = state
            for block_id in prefix:
                self._take(block_id, seq_id)
                state.hashes.append(self.blocks[block_id].hash)
            state.table.extend(prefix)
        if cow:
            self._copy_on_write(state, num_computed // self.block_size, seq_id)
        state.table.extend(self._pop_fresh_many(seq_id, fresh))
        if end > state.num_tokens:
            self._grow_fill(state, end)
        return True

    def _grow_fill(self, state: _SeqState, end: int) -> None:
        bs, fills, table = self.block_size, self._fill, state.table
        grown = 0
        for idx in range(state.num_tokens // bs, self.blocks_needed(end)):
            block_id = table[idx]
            fill = end - idx * bs
            if fill > bs:
                fill = bs
            if fill > fills[block_id]:
                grown += fill - fills[block_id]
                fills[block_id] = fill
        self._tokens_stored += grown
        state.num_tokens = end

    def _needs_copy(self, state: _SeqState, num_computed: int, num_new: int) -> bool:
        """Writing into a partly filled block that another sequence also holds."""
        idx = num_computed // self.block_size
        return (num_new > 0 and num_computed % self.block_size != 0 and idx < len(state.table)
                and self.blocks[state.table[idx]].ref_count > 1)

    def _copy_on_write(self, state: _SeqState, idx: int, seq_id: int) -> None:
        src = state.table[idx]
        dst = self._pop_fresh(seq_id)
        self._release(src, seq_id=seq_id)
        self._fill[dst] = self._fill[src]
        self._tokens_stored += self._fill[src]
        state.table[idx] = dst
        self._copies.append((src, dst))
        self._note("copied", dst, seq_id, src)

    def take_copies(self) -> list[tuple[int, int]]:
        """(src, dst) block copies the runner must do before this step's KV writes."""
        copies, self._copies = self._copies, []
        return copies

    def _take(self, block_id: int, seq_id: int) -> None:
        """One more holder of a block; a cached-free one comes back into use (it is full)."""
        block = self.blocks[block_id]
        reused = block.ref_count == 0
        if reused:
            del self._evictable[block_id]
            self._fill[block_id] = self.block_size
            self._tokens_stored += self.block_size
        elif block.ref_count == 1:
            self._num_shared += 1
        block.ref_count += 1
        self._note("reused" if reused else "shared", block_id, seq_id)

    def _release(self, block_id: int, keep_cached: bool = True, seq_id: int = -1) -> None:
        """One holder fewer; at zero the block goes to the cached-free or the free pool."""
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 1:
            self._num_shared -= 1
        elif block.ref_count == 0:
            self._tokens_stored -= self._fill[block_id]
            self._fill[block_id] = 0
            if block.twin is not None:
                self._drop_twin(block)
            if block.hash is not None and not keep_cached:
                self._uncache(block, seq_id)
            if block.hash is not None:
                self._evictable[block_id] = None
            else:
                self._free.append(block_id)
        self._note("released" if block.ref_count else "freed", block_id, seq_id)

    def _pop_fresh_many(self, seq_id: int, n: int) -> list[int]:
        """n blocks for a sequence, as n calls of _pop_fresh give them (free ones first, then the
        least recently freed cached ones), with a loop of its own for the free ones: a long prompt's
        allocation is on its time to first token."""
        free = self._free
        num_free = min(n, len(free))
        popleft = free.popleft
        block_ids = [popleft() for _ in range(num_free)]
        blocks = self.blocks
        for block_id in block_ids:
            blocks[block_id].ref_count = 1
        if self._events is not None:
            self._events.extend([("allocated", block_id, seq_id, 1, -1) for block_id in block_ids])
        block_ids += [self._pop_fresh(seq_id) for _ in range(n - num_free)]
        return block_ids

    def _pop_fresh(self, seq_id: int) -> int:
        if self._free:
            block_id = self._free.popleft()
        else:
            block_id, _ = self._evictable.popitem(last=False)  # least recently freed
            self._uncache(self.blocks[block_id], seq_id)
        self.blocks[block_id].ref_count = 1
        self._note("allocated", block_id, seq_id)
        return block_id

    def _uncache(self, block: Block, seq_id: int = -1) -> None:
        """Take a block out of the prefix cache: its contents no longer match any prompt. A twin of
        it still in use is registered in its place, so that the prefix's chain is not cut there."""
        h, tokens = block.hash, block.token_ids
        del self._by_hash[h]
        if self._cache_log is not None:
            self._cache_log.evicted(h)
        block.hash, block.token_ids = None, ()
        self._note("evicted", block.block_id, seq_id)
        twins = self._twins.get(h)
        if twins:
            twin_id, parent = twins.popitem()
            if not twins:
                del self._twins[h]
            twin = self.blocks[twin_id]
            twin.hash, twin.token_ids, twin.twin = h, tokens, None
            self._by_hash[h] = twin_id
            if self._cache_log is not None:
                self._cache_log.cached(h, parent, tokens)
            self._note("cached", twin_id, -1)

    def _drop_twin(self, block: Block) -> None:
        """A twin no sequence holds any more: its tokens are about to be overwritten."""
        twins = self._twins[block.twin]
        del twins[block.block_id]
        if not twins:
            del self._twins[block.twin]
        block.twin = None

    # ---- after a step --------------------------------------------------------------------------
    def hash_ahead(self, seq_id: int, token_ids: list[int], num_computed: int) -> None:
        """Hash the full blocks that `num_computed` tokens will fill, before their keys and values are
        computed (while the device computes them), for cache_full_blocks to register afterwards:
        a long prompt's hashing is then off its time to first token. token_ids[:num_computed] must
        be the sequence's final tokens."""
        if not self.enable_prefix_caching:
            return
        state = self._seqs[seq_id]
        bs, ahead = self.block_size, state.ahead
        first = len(state.hashes) + len(ahead)
        parent = ahead[-1][0] if ahead else state.hashes[-1] if state.hashes else ROOT_HASH
        for idx in range(first, num_computed // bs):
            tokens = tuple(token_ids[idx * bs:(idx + 1) * bs])
            parent = block_hash(parent, tokens)
            ahead.append((parent, tokens))

    def cache_full_blocks(self, seq_id: int, token_ids: list[int], num_computed: int) -> None:
        """Register in the prefix cache the blocks that `num_computed` tokens have filled.

        A block whose hash is registered already, for a twin that another sequence computed at the
        same time, is not registered again but kept as a twin (`_twins`): should the registered one
        go (evicted, or its owner failed), the twin is registered in its place (as vLLM keeps several
        blocks a hash)."""
        if not self.enable_prefix_caching:
            return
        state = self._seqs[seq_id]
        bs, hashes = self.block_size, state.hashes
        first, last = len(hashes), num_computed // bs
        if last <= first:
            return
        hashed = state.ahead[:last - first]  # hash_ahead's, for the first of these blocks
        del state.ahead[:last - first]
        parent = hashed[-1][0] if hashed else hashes[-1] if hashes else ROOT_HASH
        for idx in range(first + len(hashed), last):  # the rest, hashed now, chained on from the last
            tokens = tuple(token_ids[idx * bs:(idx + 1) * bs])
            parent = block_hash(parent, tokens)
            hashed.append((parent, tokens))
        blocks, by_hash, events, log = self.blocks, self._by_hash, self._events, self._cache_log
        assert len(state.table) >= last, f"seq {seq_id}'s table ends before its computed tokens"
        # one pass, no branch a block but the registration's: a long prompt's blocks are on its TTFT
        for (h, tokens), block_id in zip(hashed, state.table[first:last]):
            block = blocks[block_id]
            if block.hash is None:
                if h not in by_hash:
                    block.hash, block.token_ids = h, tokens
                    by_hash[h] = block_id
                    if events is not None:
                        events.append(("cached", block_id, seq_id, block.ref_count, -1))
                    if log is not None:
                        log.cached(h, hashes[-1] if hashes else None, tokens)  # its parent: the hash before
                elif block.twin is None and blocks[by_hash[h]].token_ids == tokens:
                    block.twin = h
                    self._twins.setdefault(h, {})[block_id] = hashes[-1] if hashes else None
            hashes.append(h)

    def fork(self, parent_id: int, child_id: int) -> None:
        """The child shares every block of the parent (copy-on-write for the partly filled one)."""
        parent = self._seqs[parent_id]
        for block_id in parent.table:
            self._take(block_id, child_id)
        self._seqs[child_id] = _SeqState(list(parent.table), parent.num_tokens, list(parent.hashes),
                                         stamp=next(_STAMPS))

    def free(self, seq_id: int, keep_cached: bool = True) -> None:
        """Drop a sequence's references. Tail blocks first, so they are the first evicted later.

        keep_cached=False (a sequence that failed: its cache may hold NaN): the blocks it was the
        last to hold leave the prefix cache instead of staying reusable.
        """
        state = self._seqs.pop(seq_id, None)
        if state is None:
            return
        # _release's work, inlined for the common case (the last holder of a block), with the
        # others through _release itself: a finished request's free is on its last token's time
        blocks, fills, free, evictable, events = self.blocks, self._fill, self._free, self._evictable, self._events
        emptied = 0
        for block_id in reversed(state.table):
            block = blocks[block_id]
            if block.ref_count != 1 or (block.hash is not None and not keep_cached) or block.twin is not None:
                self._release(block_id, keep_cached, seq_id)
                continue
            block.ref_count = 0
            emptied += fills[block_id]
            fills[block_id] = 0
            if block.hash is not None:
                evictable[block_id] = None
            else:
                free.append(block_id)
            if events is not None:
                events.append(("freed", block_id, seq_id, 0, -1))
        self._tokens_stored -= emptied

    def reset_prefix_cache(self) -> int:
        """Forget every cached-free block (they become plain free blocks); returns how many.

        Blocks in use keep their hashes: their contents stay valid for the sequences holding them.
        """
        dropped = list(self._evictable)
        for block_id in dropped:  # (a twin in use takes a dropped block's place)
            self._uncache(self.blocks[block_id])
        self._evictable.clear()
        self._free.extend(dropped)
        if not self._by_hash and self._cache_log is not None:  # no block in use keeps a hash
            self._cache_log.cleared()
        return len(dropped)

    # ---- introspection -------------------------------------------------------------------------
    def block_fill(self) -> list[int]:
        """Tokens held by each physical block (0 for blocks no sequence holds)."""
        return list(self._fill)

    def _recount_fill(self) -> list[int]:
        fill = [0] * self.num_blocks
        bs = self.block_size
        for state in self._seqs.values():
            for i, block_id in enumerate(state.table):
                fill[block_id] = max(fill[block_id], min(bs, state.num_tokens - i * bs))
        return fill

    def owners(self) -> dict[int, list[int]]:
        """block id -> ids of the sequences holding it, for the used blocks."""
        owners: dict[int, list[int]] = {}
        for seq_id, state in self._seqs.items():
            for block_id in state.table:
                owners.setdefault(block_id, []).append(seq_id)
        return owners

    def stats(self) -> BlockStats:
        used = self.num_blocks - len(self._free) - len(self._evictable)
        return BlockStats(
            total=self.num_blocks, cap=self.cap, used=used, free=len(self._free), cached_free=len(self._evictable),
            cached=len(self._by_hash), shared=self._num_shared,
            tokens_stored=self._tokens_stored, slots_reserved=used * self.block_size,
            block_size=self.block_size,
        )

    def check_integrity(self) -> None:
        """Raise AssertionError if the accounting is inconsistent anywhere."""
        counts = [0] * self.num_blocks
        for seq_id, state in self._seqs.items():
            assert len(state.table) == len(set(state.table)), f"seq {seq_id} holds a block twice"
            assert len(state.table) * self.block_size >= state.num_tokens, f"seq {seq_id} table too short"
            for block_id in state.table:
                counts[block_id] += 1
        free, evictable = set(self._free), set(self._evictable)
        assert len(free) == len(self._free), "a block is twice in the free list"
        assert not free & evictable, "a block is both free and cached-free"
        for block in self.blocks:
            assert block.ref_count == counts[block.block_id], (
                f"block {block.block_id}: ref_count {block.ref_count} but in {counts[block.block_id]} tables")
            in_pool = block.block_id in free or block.block_id in evictable
            assert in_pool == (block.ref_count == 0), f"block {block.block_id} used and pooled, or lost"
            assert (block.block_id in free) <= (block.hash is None), f"free block {block.block_id} has a hash"
            assert (block.block_id in evictable) <= (block.hash is not None), "cached-free block lost its hash"
        for h, block_id in self._by_hash.items():
            assert self.blocks[block_id].hash == h, f"hash {h} points at block {block_id} holding another"
        for h, twins in self._twins.items():
            assert twins and h in self._by_hash, f"twins of hash {h}, which no block is registered for"
            for block_id in twins:
                block = self.blocks[block_id]
                assert block.twin == h and block.hash is None and block.ref_count > 0, f"stale twin {block_id}"
        assert sum(map(len, self._twins.values())) == sum(1 for b in self.blocks if b.twin is not None), \
            "a twin is missing from the twins' record"
        hashed = sum(1 for b in self.blocks if b.hash is not None)
        assert hashed == len(self._by_hash), "a hashed block is missing from the prefix cache"
        assert len(free) + len(evictable) + sum(1 for c in counts if c) == self.num_blocks
        assert 0 <= self.num_free_blocks <= len(free) + len(evictable), "the cap let more than the pool out"
        assert self._num_shared == sum(1 for c in counts if c > 1), "shared-block counter drifted"
        assert self._fill == self._recount_fill(), "block fill drifted from the block tables"
        assert self._tokens_stored == sum(self._fill), "tokens-stored counter drifted"
