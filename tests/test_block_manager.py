"""The block manager on its own: unit cases and a hypothesis state machine over its invariants."""
from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine.core.block_manager import ROOT_HASH, BlockManager, block_hash


def test_allocate_and_free_returns_every_block() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    assert bm.allocate_slots(0, 0, 10)
    assert bm.block_table(0) == [0, 1, 2]
    assert bm.stats().used == 3 and bm.stats().tokens_stored == 10 and bm.stats().slots_reserved == 12
    assert not bm.allocate_slots(1, 0, 24), "needs 6 blocks, 5 free"
    assert not bm.has_seq(1), "a failed allocation changes nothing"
    bm.free(0)
    bm.check_integrity()
    assert bm.num_free_blocks == 8 and bm.stats().used == 0


def test_a_failed_sequence_leaves_no_reusable_prefix() -> None:
    """Blocks a failed sequence was last to hold leave the prefix cache (their KV may be NaN); a
    block another sequence still holds stays cached."""
    bm = BlockManager(num_blocks=8, block_size=4)
    prompt = list(range(10))
    bm.allocate_slots(0, 0, 10)
    bm.cache_full_blocks(0, prompt, 10)
    assert bm.allocate_slots(1, 4, 2, bm.match_prefix(prompt[:4] + [50, 51]))  # shares block 0 only
    bm.free(0, keep_cached=False)
    bm.check_integrity()
    assert bm.match_prefix(prompt) == bm.block_table(1)[:1], "the shared block stays, the failed one's own go"
    assert bm.stats().cached_free == 0 and bm.stats().free == 6
    bm.free(1)
    bm.check_integrity()
    assert bm.stats().cached_free == 1 and bm.num_free_blocks == 8


def test_prefix_is_reused_while_shared_and_after_free() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    prompt = list(range(10))  # two full blocks and a partial one
    bm.allocate_slots(0, 0, 10)
    bm.cache_full_blocks(0, prompt, 10)
    shared = bm.match_prefix(prompt + [99])
    assert shared == bm.block_table(0)[:2]
    assert bm.allocate_slots(1, 8, 3, shared)
    assert bm.stats().shared == 2
    bm.check_integrity()
    bm.free(0)
    bm.free(1)
    assert bm.stats().cached_free == 2, "full blocks stay reusable after their owners leave"
    assert bm.match_prefix(prompt) == shared
    assert bm.match_prefix([5] + prompt[1:]) == [], "a different first token shares nothing"


def test_match_never_covers_the_last_token() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    bm.allocate_slots(0, 0, 8)
    bm.cache_full_blocks(0, list(range(8)), 8)
    assert len(bm.match_prefix(list(range(8)))) == 1


def test_eviction_takes_least_recently_freed_and_tail_first() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    for seq_id, base in ((0, 0), (1, 100)):
        tokens = [base, base + 1, base + 2, base + 3]
        bm.allocate_slots(seq_id, 0, 4)
        bm.cache_full_blocks(seq_id, tokens, 4)
    first = bm.block_table(0)
    bm.free(0)
    bm.free(1)
    bm.allocate_slots(2, 0, 2)  # one fresh block: evicts seq 0's tail block
    assert bm.block_table(2) == [first[1]]
    assert bm.match_prefix([0, 1, 2, 3, 4]) == [first[0]]
    bm.check_integrity()


def test_fork_copies_the_shared_partial_block_on_write() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    bm.allocate_slots(0, 0, 6)  # blocks [0, 1], block 1 half full
    bm.fork(0, 1)
    assert bm.stats().shared == 2
    assert bm.allocate_slots(0, 6, 1)
    assert bm.take_copies() == [(1, 2)]
    assert bm.block_table(0) == [0, 2] and bm.block_table(1) == [0, 1]
    assert bm.allocate_slots(1, 6, 1), "the last holder writes in place"
    assert bm.take_copies() == []
    bm.check_integrity()
    bm.free(0)
    bm.free(1)
    assert bm.num_free_blocks == 8


def test_reset_prefix_cache_forgets_free_blocks_only() -> None:
    bm = BlockManager(num_blocks=6, block_size=2)
    for seq_id, base in ((0, 0), (1, 100)):
        bm.allocate_slots(seq_id, 0, 4)
        bm.cache_full_blocks(seq_id, [base, base + 1, base + 2, base + 3], 4)
    bm.free(0)  # its two full blocks stay cached-free; seq 1 still holds its own
    assert bm.reset_prefix_cache() == 2
    assert bm.match_prefix([0, 1, 2, 3, 4]) == []
    assert bm.match_prefix([100, 101, 102, 103, 104]) == bm.block_table(1), "blocks in use stay cached"
    assert bm.stats().cached_free == 0 and bm.num_free_blocks == 4
    bm.check_integrity()


def test_integrity_check_catches_a_leak() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    bm.allocate_slots(0, 0, 4)
    bm.blocks[0].ref_count += 1
    with pytest.raises(AssertionError):
        bm.check_integrity()


def test_a_cap_refuses_blocks_beyond_it_and_raising_it_restores_them() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    bm.set_cap(3)
    assert bm.num_free_blocks == 3 and bm.stats().cap == 3
    assert bm.allocate_slots(0, 0, 8)  # 2 blocks
    assert not bm.allocate_slots(1, 0, 8), "2 more would make 4 in use, over the cap of 3"
    assert not bm.has_seq(1)
    assert bm.allocate_slots(1, 0, 4)
    assert bm.num_free_blocks == 0 and not bm.allocate_slots(0, 8, 1), "a decode needing a block is refused too"
    bm.set_cap(None)
    assert bm.num_free_blocks == 5 and bm.stats().cap == 8
    assert bm.allocate_slots(0, 8, 1)
    bm.check_integrity()


def test_lowering_the_cap_below_use_frees_nothing() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    assert bm.allocate_slots(0, 0, 20)  # 5 blocks
    bm.set_cap(2)
    s = bm.stats()
    assert (s.used, s.free, s.cap) == (5, 3, 2) and s.used + s.free + s.cached_free == s.total
    assert bm.num_free_blocks == 0 and bm.block_table(0) == [0, 1, 2, 3, 4]
    assert bm.allocate_slots(0, 20, 0), "what a sequence already holds stays usable"
    bm.free(0)
    assert bm.num_free_blocks == 2
    bm.set_cap(100)
    assert bm.num_free_blocks == 8 and bm.stats().cap == 8, "a cap above the pool is the pool"
    with pytest.raises(ValueError, match="at least 1"):
        bm.set_cap(0)
    bm.check_integrity()


def test_a_cap_never_starves_a_lone_sequence() -> None:
    """One sequence always fits the pool; a cap below it must not leave it preempted forever."""
    bm = BlockManager(num_blocks=8, block_size=4)
    bm.set_cap(2)
    assert bm.allocate_slots(0, 0, 16), "alone, it may go past the cap (4 blocks)"
    assert bm.allocate_slots(0, 16, 1), "and keep growing"
    assert not bm.allocate_slots(1, 0, 1), "a second sequence meets the cap"
    bm.check_integrity()


def test_a_cap_counts_reused_cached_blocks_as_use() -> None:
    """A prefix hit on a cached-free block brings it back into use: it counts against the cap."""
    bm = BlockManager(num_blocks=8, block_size=4)
    prompt = list(range(9))
    bm.allocate_slots(0, 0, 9)
    bm.cache_full_blocks(0, prompt, 9)
    bm.free(0)  # 2 cached-free blocks
    assert bm.allocate_slots(9, 0, 1)  # another sequence holds 1 block: the cap binds
    bm.set_cap(3)
    prefix = bm.match_prefix(prompt)
    assert len(prefix) == 2
    assert not bm.allocate_slots(1, 8, 1, prefix), "1 held + 2 reused + 1 fresh exceeds the cap"
    bm.set_cap(4)
    assert bm.allocate_slots(1, 8, 1, prefix)
    assert bm.stats().used == 4 and bm.num_free_blocks == 0
    bm.check_integrity()


def test_blocks_hashed_partly_ahead_chain_on_from_the_last_one_hashed() -> None:
    """hash_ahead covered the first block only: the next one, hashed at registration, chains on
    from it (from the root it would be found after another prefix, with the wrong keys and values)."""
    bm = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(1, 13))
    assert bm.allocate_slots(0, 0, 12)
    bm.hash_ahead(0, tokens, 4)
    bm.cache_full_blocks(0, tokens, 12)
    assert bm.match_prefix(tokens + [0]) == bm.block_table(0)
    assert bm.match_prefix(tokens[4:8] + [0]) == []  # block 1 alone is no prefix
    bm.check_integrity()


def test_a_twin_takes_the_place_of_a_registered_block_that_goes() -> None:
    """Two sequences fill a block with the same tokens after the same prefix (no prefix hit: the
    second's block was allocated before the first's was registered). The second block is a twin;
    when the registered one goes (its owner failed, it is evicted, or a reset drops it) the twin is
    registered in its place, so a later prompt still finds the whole prefix; a twin freed first
    simply stops being one."""
    for ending in ("failed", "evicted", "reset", "twin freed"):
        bm = BlockManager(num_blocks=6, block_size=4)
        bm.record_events(True)
        bm.record_cache_changes(True)
        tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9]
        assert bm.allocate_slots(0, 0, 3) and bm.allocate_slots(1, 0, 3)  # both start before either is cached
        for seq in (0, 1):
            assert bm.allocate_slots(seq, 3, 6)
            bm.cache_full_blocks(seq, tokens, 9)
        first, twin = bm.block_table(0)[:2], bm.block_table(1)[:2]
        assert [bm.blocks[b].hash is not None for b in first + twin] == [True, True, False, False]
        bm.check_integrity()
        bm.take_events(), bm.take_cache_changes()
        if ending == "failed":
            bm.free(0, keep_cached=False)
        elif ending == "evicted":
            bm.free(0)
            assert bm.allocate_slots(2, 0, 12)  # takes the free blocks, then evicts the cached-free ones
        elif ending == "reset":
            bm.free(0)
            bm.reset_prefix_cache()
        else:
            bm.free(1)
            assert not bm._twins
            bm.check_integrity()
            assert bm.match_prefix(tokens) == first
            continue
        bm.check_integrity()
        assert bm.match_prefix(tokens) == twin, ending
        assert sorted(e[1] for e in bm.take_events() if e[0] == "cached") == sorted(twin)
        changes = bm.take_cache_changes()
        assert any(type(c).__name__ == "CachedBlocks" for c in changes), ending
        bm.free(1)
        bm.check_integrity()


class BlockManagerMachine(RuleBasedStateMachine):
    """Random allocate / append / cache / fork / free sequences keep every invariant."""

    PREFIXES = [[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9, 9, 9], [7] * 12]

    @initialize(num_blocks=st.integers(1, 24), block_size=st.sampled_from([1, 2, 4]))
    def setup(self, num_blocks: int, block_size: int) -> None:
        self.bm = BlockManager(num_blocks, block_size)
        self.seqs: dict[int, tuple[list[int], int]] = {}  # seq id -> (tokens, tokens computed)
        self.next_id = 0
        self.ever_cached: set[int] = set()  # every hash a block has been registered under
        self.stamped: dict[int, tuple[int, ...]] = {}  # every table stamp seen -> the table it named

    @rule(which=st.integers(0, 2), tail=st.lists(st.integers(0, 20), min_size=1, max_size=10),
          ahead=st.sampled_from([0.0, 0.5, 1.0]))
    def add(self, which: int, tail: list[int], ahead: float) -> None:
        tokens = self.PREFIXES[which] + tail
        prefix = self.bm.match_prefix(tokens)
        cached = len(prefix) * self.bm.block_size
        before = self.bm.stats()
        if self.bm.allocate_slots(self.next_id, cached, len(tokens) - cached, prefix):
            self.cache(self.next_id, tokens, ahead)
            self.seqs[self.next_id] = (tokens, len(tokens))
            self.within_cap(before.used)
        else:
            assert self.bm.stats() == before
        self.next_id += 1

    def cache(self, seq_id: int, tokens: list[int], ahead: float) -> None:
        """Register the full blocks, all, some (the first `ahead` of the tokens) or none of them
        hashed ahead (as while the device computes them): either way the prefix cache then holds
        every full block of `tokens`, with the right tokens."""
        before = self.ever_cached | {b.hash for b in self.bm.blocks if b.hash is not None}
        if ahead:
            self.bm.hash_ahead(seq_id, tokens, int(len(tokens) * ahead))
        self.bm.cache_full_blocks(seq_id, tokens, len(tokens))
        bs, full = self.bm.block_size, len(tokens) // self.bm.block_size
        found = self.bm.match_prefix(tokens + [0])
        # a block whose twin (the same tokens after the same prefix) another block was registered for
        # first is not registered again, but kept as a twin: found through the registered one
        assert len(found) == full, "a full block is missing from the prefix cache"
        table = self.bm.block_table(seq_id)
        for i in range(full):
            if self.bm.blocks[table[i]].hash is None:
                parent = ROOT_HASH
                for j in range(i + 1):
                    parent = block_hash(parent, tokens[j * bs:(j + 1) * bs])
                assert parent in before, "a full block was never registered, and no twin of it ever was"
        for i, block_id in enumerate(found):
            assert self.bm.blocks[block_id].token_ids == tuple(tokens[i * bs:(i + 1) * bs])

    def within_cap(self, used_before: int) -> None:
        """An allocation brings blocks into use only up to the cap (those already over it stay),
        unless one sequence alone holds blocks (the cap spares it)."""
        assert self.bm.stats().used <= max(used_before, self.bm.cap) or len(self.seqs) == 1

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), new=st.lists(st.integers(0, 20), min_size=1, max_size=5),
          ahead=st.sampled_from([0.0, 0.5, 1.0]))
    def append(self, data: st.DataObject, new: list[int], ahead: float) -> None:
        self.extend(data.draw(st.sampled_from(sorted(self.seqs))), new, ahead)

    @rule(which=st.integers(0, 2), k=st.integers(1, 11), ahead=st.sampled_from([0.0, 0.5, 1.0]))
    def add_partial(self, which: int, k: int, ahead: float) -> None:
        """A sequence that starts with part of a shared prefix (`follow` goes on along it)."""
        tokens = self.PREFIXES[which][:k]
        prefix = self.bm.match_prefix(tokens)
        cached = len(prefix) * self.bm.block_size
        if self.bm.allocate_slots(self.next_id, cached, len(tokens) - cached, prefix):
            self.cache(self.next_id, tokens, ahead)
            self.seqs[self.next_id] = (tokens, len(tokens))
        self.next_id += 1

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), n=st.integers(1, 6), ahead=st.sampled_from([0.0, 0.5, 1.0]))
    def follow(self, data: st.DataObject, n: int, ahead: float) -> None:
        """The next tokens of the shared prefix a sequence has followed so far: blocks that another
        sequence may have computed and registered meanwhile (this one's copies are twins)."""
        seq_id = data.draw(st.sampled_from(sorted(self.seqs)))
        tokens, _ = self.seqs[seq_id]
        for shared in self.PREFIXES:
            if len(tokens) < len(shared) and shared[:len(tokens)] == tokens:
                self.extend(seq_id, shared[len(tokens):len(tokens) + n], ahead)
                return

    def extend(self, seq_id: int, new: list[int], ahead: float) -> None:
        tokens, done = self.seqs[seq_id]
        used_before = self.bm.stats().used
        if self.bm.allocate_slots(seq_id, done, len(new)):
            self.within_cap(used_before)
            tokens = tokens + new
            self.cache(seq_id, tokens, ahead)
            self.seqs[seq_id] = (tokens, len(tokens))
            for src, dst in self.bm.take_copies():
                assert src != dst and self.bm.blocks[dst].ref_count == 1

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        seq_id = data.draw(st.sampled_from(sorted(self.seqs)))
        self.bm.fork(seq_id, self.next_id)
        self.seqs[self.next_id] = self.seqs[seq_id]
        self.next_id += 1

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        seq_id = data.draw(st.sampled_from(sorted(self.seqs)))
        self.bm.free(seq_id, keep_cached=data.draw(st.booleans()))  # False: a failed sequence's
        del self.seqs[seq_id]

    @rule(cap=st.none() | st.integers(1, 26))
    def set_cap(self, cap: int | None) -> None:
        before = self.bm.stats()
        self.bm.set_cap(cap)
        after = self.bm.stats()
        assert after.cap == min(cap or before.total, before.total)
        assert after == type(after)(**{**vars(before), "cap": after.cap}), "a cap change moves no block"

    @rule()
    def reset_prefix_cache(self) -> None:
        before = self.bm.stats()
        assert self.bm.reset_prefix_cache() == before.cached_free
        after = self.bm.stats()
        assert after.cached_free == 0 and after.free == before.free + before.cached_free
        # a twin in use takes a dropped block's place in the cache
        assert after.used == before.used and before.cached - before.cached_free <= after.cached <= before.cached

    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "bm"):
            return
        self.bm.check_integrity()
        self.ever_cached |= {b.hash for b in self.bm.blocks if b.hash is not None}
        s = self.bm.stats()
        assert s.used + s.free + s.cached_free == s.total
        assert all(b.ref_count >= 0 for b in self.bm.blocks)
        for seq_id, (tokens, _) in self.seqs.items():
            assert len(self.bm.block_table(seq_id)) == self.bm.blocks_needed(len(tokens))
            # while a sequence lives, every full block of it stays findable: a twin of it takes the
            # place of a registered block that goes (evicted, reset, or its owner failed)
            assert len(self.bm.match_prefix(tokens + [0])) == len(tokens) // self.bm.block_size, \
                f"seq {seq_id}'s prefix chain is cut"
            # a stamp names one table's contents for good: any change (more blocks, a block copied on
            # write, a fork's new table) comes with a new one (the runner keeps rows under them)
            table, stamp = self.bm.stamped_table(seq_id)
            assert stamp > 0 and self.stamped.setdefault(stamp, tuple(table)) == tuple(table), \
                f"seq {seq_id}'s table changed under its stamp {stamp}"

    def teardown(self) -> None:
        if not hasattr(self, "bm"):
            return
        for seq_id in list(self.seqs):
            self.bm.free(seq_id)
        self.bm.check_integrity()
        assert self.bm.num_free_blocks == self.bm.cap, "every block is back after all are freed"
        self.bm.set_cap(None)
        assert self.bm.num_free_blocks == self.bm.num_blocks


TestBlockManagerMachine = BlockManagerMachine.TestCase
TestBlockManagerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
