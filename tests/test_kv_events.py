"""vLLM-format KV-cache events: decoding each supported vLLM encoding, our encoder, the ZeroMQ
publisher and subscriber (replay for late joiners), the prefix tree, and our engine publishing.

No `from __future__ import annotations`: msgspec must see the copied vLLM structs' annotations as
objects, not as names it would look up among this module's globals (ours, of the same names)."""

import time
from types import SimpleNamespace
from typing import Any, Optional, Union

import msgspec
import pytest
import zmq

from engine.core.block_manager import BlockManager
from engine.core.kv_cache_events import CacheCleared, CachedBlocks, EvictedBlocks
from server.kv_event_publisher import END_SEQ, KVEventPublisher, engine_sink
from server.kv_event_subscriber import KVEventSubscriber
from server.kv_events import (AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, batch_from_changes,
                              decode_batch, encode_batch, wire_hash)
from server.prefix_tree import PrefixTree, hash_label


# ---- each vLLM version's structures, copied from its vllm/distributed/kv_events.py ----------------
def vllm_first_form() -> SimpleNamespace:
    """vllm-project/vllm@b4e69e0a, vllm/distributed/kv_events.py as first published (vllm#16750,
    the v0.9 releases): tagged arrays, int hashes, no data_parallel_rank, no medium."""

    class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
        ts: float
        events: list[Any]

    class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
        """Base class for all KV cache-related events"""

    class BlockStored(KVCacheEvent):
        block_hashes: list[int]
        parent_block_hash: Optional[int]
        token_ids: list[int]
        block_size: int
        lora_id: Optional[int]

    class BlockRemoved(KVCacheEvent):
        block_hashes: list[int]

    class AllBlocksCleared(KVCacheEvent):
        pass

    class KVEventBatch(EventBatch):
        events: list[Union[BlockStored, BlockRemoved, AllBlocksCleared]]

    return SimpleNamespace(**locals())


def vllm_array_lora_name() -> SimpleNamespace:
    """The last array form before extra_keys: vllm/distributed/kv_events.py as copied in
    1CatAI/1Cat-vLLM@92a785cb (vLLM of the lora_name era, vllm#27577): data_parallel_rank, medium,
    lora_name, ExternalBlockHash = bytes | int (vllm#23673, v0.10.2 on)."""
    ExternalBlockHash = Union[bytes, int]

    class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
        ts: float
        events: list[Any]
        data_parallel_rank: int | None = None

    class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
        """Base class for all KV cache-related events"""

    class BlockStored(KVCacheEvent):
        block_hashes: list[ExternalBlockHash]
        parent_block_hash: ExternalBlockHash | None
        token_ids: list[int]
        block_size: int
        lora_id: int | None
        medium: str | None
        lora_name: str | None

    class BlockRemoved(KVCacheEvent):
        block_hashes: list[ExternalBlockHash]
        medium: str | None

    class AllBlocksCleared(KVCacheEvent):
        pass

    class KVEventBatch(EventBatch):
        events: list[BlockStored | BlockRemoved | AllBlocksCleared]

    return SimpleNamespace(**locals())


def vllm_v0_26(map_batch: bool = False) -> SimpleNamespace:
    """Map-encoded events (vllm#42892): BlockStored/BlockRemoved as in vllm-project/vllm@0181ea31
    vllm/distributed/kv_events.py. The batch: an array as vLLM v0.26.0 sends it (and as
    examples/features/kv_events/kv_events_subscriber.py@1bd773f6 declares it); `map_batch`: a map,
    as that commit of main declared it (no array_like on EventBatch)."""
    ExternalBlockHash = Union[bytes, int]

    class EventBatch(msgspec.Struct, array_like=not map_batch, omit_defaults=True, gc=False):
        ts: float
        events: list[Any]
        data_parallel_rank: int | None = None

    class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
        """Base class for all KV cache-related events"""

    class BlockStored(KVCacheEvent):
        block_hashes: list[ExternalBlockHash]
        parent_block_hash: ExternalBlockHash | None
        token_ids: list[int]
        block_size: int
        lora_id: int | None
        medium: str | None
        lora_name: str | None
        extra_keys: list[tuple[Any, ...] | None] | None = None
        group_idx: int | None = None
        kv_cache_spec_kind: str | None = None
        kv_cache_spec_sliding_window: int | None = None

    class BlockRemoved(KVCacheEvent):
        block_hashes: list[ExternalBlockHash]
        medium: str | None
        group_idx: int | None = None

    class AllBlocksCleared(KVCacheEvent):
        pass

    class KVEventBatch(EventBatch):
        events: list[BlockStored | BlockRemoved | AllBlocksCleared]

    return SimpleNamespace(**locals())


TOKENS = list(range(100, 132))  # two blocks of 16


def test_decodes_the_first_array_form() -> None:
    v = vllm_first_form()
    payload = msgspec.msgpack.encode(v.KVEventBatch(12.5, [
        v.BlockStored([-7, 2**62], None, TOKENS, 16, None), v.BlockRemoved([-7]), v.AllBlocksCleared()]))
    batch = decode_batch(payload)
    assert batch == EventBatch(12.5, (BlockStored((-7, 2**62), None, tuple(TOKENS), 16), BlockRemoved((-7,)),
                                      AllBlocksCleared()), None)


def test_decodes_the_array_form_with_medium_lora_name_and_bytes_hashes() -> None:
    v = vllm_array_lora_name()
    h1, h2 = b"\x01" * 32, b"\x02" * 32
    payload = msgspec.msgpack.encode(v.KVEventBatch(1.0, [
        v.BlockStored([h1, h2], None, TOKENS, 16, None, "GPU", "adapter"),
        v.BlockRemoved([2**64 - 1], "CPU")], data_parallel_rank=3))
    batch = decode_batch(payload)
    assert batch.data_parallel_rank == 3
    assert batch.events == (BlockStored((h1, h2), None, tuple(TOKENS), 16, None, "GPU", "adapter"),
                            BlockRemoved((2**64 - 1,), "CPU"))


@pytest.mark.parametrize("map_batch", [False, True], ids=["v0.26.0", "main-map-batch"])
def test_decodes_the_map_form(map_batch: bool) -> None:
    v = vllm_v0_26(map_batch)
    payload = msgspec.msgpack.encode(v.KVEventBatch(2.0, [
        v.BlockStored([2**63 + 5], 9, TOKENS[:16], 16, None, "GPU", None, extra_keys=[None], group_idx=0,
                      kv_cache_spec_kind="full_attention"),
        v.BlockRemoved([2**63 + 5], "GPU", group_idx=0), v.AllBlocksCleared()], data_parallel_rank=0))
    raw = msgspec.msgpack.decode(payload)
    assert isinstance(raw, dict) == map_batch and (raw["events"] if map_batch else raw[1])[0]["type"] == "BlockStored"
    batch = decode_batch(payload)
    assert batch.events == (BlockStored((2**63 + 5,), 9, tuple(TOKENS[:16]), 16, None, "GPU", None, 0),
                            BlockRemoved((2**63 + 5,), "GPU", 0), AllBlocksCleared())


def test_unknown_fields_and_event_types_are_skipped_and_garbage_refused() -> None:
    payload = msgspec.msgpack.encode([3.0, [{"type": "BlockStored", "block_hashes": [1], "parent_block_hash": None,
                                             "token_ids": [5], "block_size": 1, "locality": "rack-2"},
                                            {"type": "BlockTouched", "block_hashes": [1]}], 0])
    assert decode_batch(payload).events == (BlockStored((1,), None, (5,), 1),)
    for bad in (b"\xc1", msgspec.msgpack.encode("hello"), msgspec.msgpack.encode([1.0, [{"type": "BlockRemoved"}]])):
        with pytest.raises(ValueError):
            decode_batch(bad)


def test_our_encoding_round_trips_and_vllm_s_own_structs_read_it() -> None:
    batch = EventBatch(7.25, (BlockStored((1, 2**64 - 1), None, tuple(TOKENS), 16, medium="GPU"),
                              BlockRemoved((1,), medium="GPU"), AllBlocksCleared()), 0)
    payload = encode_batch(batch)
    assert decode_batch(payload) == batch
    v = vllm_v0_26()  # what vLLM's example subscriber declares
    theirs = msgspec.msgpack.Decoder(v.KVEventBatch).decode(payload)
    assert [type(e).__name__ for e in theirs.events] == ["BlockStored", "BlockRemoved", "AllBlocksCleared"]
    assert theirs.events[0].block_hashes == [1, 2**64 - 1] and theirs.events[0].token_ids == TOKENS


# ---- the prefix tree from the block manager's changes ---------------------------------------------
def tree_of(bm: BlockManager, tree: PrefixTree | None = None) -> PrefixTree:
    tree = tree or PrefixTree()
    tree.apply(batch_from_changes(bm.take_cache_changes(), bm.block_size))
    return tree


def run_prompt(bm: BlockManager, seq_id: int, tokens: list[int]) -> None:
    prefix = bm.match_prefix(tokens)
    assert bm.allocate_slots(seq_id, len(prefix) * bm.block_size, len(tokens) - len(prefix) * bm.block_size, prefix)
    bm.cache_full_blocks(seq_id, tokens, len(tokens))


def test_two_prompts_sharing_a_system_prompt_store_its_blocks_once() -> None:
    bm = BlockManager(num_blocks=12, block_size=4)
    bm.record_cache_changes(True)
    system = list(range(1, 13))  # three full blocks
    run_prompt(bm, 1, system + [50, 51, 52, 53, 54])
    run_prompt(bm, 2, system + [60, 61, 62, 63, 64])
    changes = bm.take_cache_changes()
    assert [type(c) for c in changes] == [CachedBlocks, CachedBlocks]
    assert len(changes[0].hashes) == 4 and changes[0].parent is None  # one chain, one event
    assert len(changes[1].hashes) == 1 and changes[1].parent == changes[0].hashes[2]  # only its own block
    tree = PrefixTree()
    tree.apply(batch_from_changes(changes, 4))
    snap = tree.snapshot()
    assert snap.alive == 5 and [n.depth for n in snap.nodes] == [0, 1, 2, 3, 3]
    assert [n.token_ids for n in snap.nodes[:3]] == [(1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12)]
    assert {n.token_ids for n in snap.nodes[3:]} == {(50, 51, 52, 53), (60, 61, 62, 63)}
    assert all(n.hits is None for n in snap.nodes)
    assert snap.nodes[1].parent == hash_label(wire_hash(changes[0].hashes[0]))


def test_evictions_and_a_reset_reach_the_tree() -> None:
    bm = BlockManager(num_blocks=6, block_size=4)
    bm.record_cache_changes(True)
    run_prompt(bm, 1, list(range(1, 18)))  # five blocks: four full and cached
    bm.free(1)
    tree = tree_of(bm)
    assert len(tree) == 4
    run_prompt(bm, 2, list(range(100, 117)))  # needs five: the two free ones, then three evicted
    changes = bm.take_cache_changes()
    assert isinstance(changes[0], EvictedBlocks) and len(changes[0].hashes) == 3
    tree.apply(batch_from_changes(changes, 4))
    snap = tree.snapshot()
    assert (snap.alive, snap.evicted, snap.removed_blocks) == (5, 3, 3)
    assert [n.alive for n in snap.nodes if n.depth == 0] == [True, True]  # the first prompt's first block lives
    bm.free(2)
    assert bm.reset_prefix_cache() == 5
    assert bm.take_cache_changes() == [CacheCleared()]  # the evictions of a full reset say nothing more
    tree.apply(batch_from_changes([CacheCleared()], 4))
    assert len(tree) == 0 and tree.snapshot().nodes == () and tree.clears == 1


def test_a_reset_with_blocks_in_use_removes_only_the_free_ones() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    bm.record_cache_changes(True)
    run_prompt(bm, 1, list(range(1, 10)))
    run_prompt(bm, 2, list(range(20, 29)))
    bm.free(1)
    bm.take_cache_changes()
    assert bm.reset_prefix_cache() == 2
    changes = bm.take_cache_changes()
    assert [type(c) for c in changes] == [EvictedBlocks] and len(changes[0].hashes) == 2


def test_a_block_stored_again_after_eviction_counts_twice() -> None:
    tree = PrefixTree(keep_evicted=1)
    tree.apply(EventBatch(1.0, (BlockStored((1, 2), None, (1, 2, 3, 4), 2, medium="GPU"),)))
    tree.apply(EventBatch(2.0, (BlockRemoved((2, 1), medium="GPU"),)))
    assert tree.snapshot().nodes[0].stored == 1 and tree.snapshot().evicted == 1  # the oldest dead dropped
    tree.apply(EventBatch(3.0, (BlockStored((1,), None, (1, 2), 2, medium="GPU"),
                                BlockStored((9,), None, (7, 7), 2, medium="CPU"))))  # another tier: ignored
    snap = tree.snapshot()
    assert [(n.hash, n.alive, n.stored) for n in snap.nodes] == [(hash_label(1), True, 2)]


# ---- over ZeroMQ -------------------------------------------------------------------------------
def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def stored(h: int, parent: int | None, ts: float) -> EventBatch:
    return EventBatch(ts, (BlockStored((h,), parent, (h, h), 2, medium="GPU"),), 0)


class Follower:
    """A subscriber feeding a prefix tree, as the dashboard will."""

    def __init__(self, pub: KVEventPublisher, topic: str = "kv") -> None:
        self.tree = PrefixTree()
        self.seqs: list[int] = []
        self.sub = KVEventSubscriber(pub.endpoint, self._on_batch, pub.replay_endpoint, topic,
                                     on_restart=self.tree.clear).start()

    def _on_batch(self, seq: int, batch: EventBatch) -> None:
        self.seqs.append(seq)
        self.tree.apply(batch)


@pytest.fixture
def publisher():
    pub = KVEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", topic="kv").start()
    yield pub
    pub.stop()


def test_a_late_subscriber_rebuilds_the_tree_from_the_replay_socket(publisher: KVEventPublisher) -> None:
    for batch in (stored(1, None, 1.0), stored(2, 1, 2.0), stored(3, 2, 3.0)):
        assert publisher.publish(batch)
    early = Follower(publisher)
    wait_for(lambda: early.sub.last_seq == 2)
    publisher.publish(EventBatch(4.0, (BlockRemoved((3,), "GPU"),), 0))
    wait_for(lambda: early.sub.last_seq == 3)
    late = Follower(publisher)
    wait_for(lambda: late.sub.last_seq == 3)
    publisher.publish(stored(4, 2, 5.0))
    wait_for(lambda: early.sub.last_seq == 4 and late.sub.last_seq == 4)
    for follower in (early, late):
        follower.sub.stop()
        assert follower.seqs == [0, 1, 2, 3, 4] and follower.sub.lost == 0
        snap = follower.tree.snapshot()
        assert [(n.hash, n.depth, n.alive) for n in snap.nodes] == [
            (hash_label(1), 0, True), (hash_label(2), 1, True), (hash_label(3), 2, False), (hash_label(4), 2, True)]


def test_what_the_replay_buffer_no_longer_has_is_counted_lost() -> None:
    pub = KVEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", topic="kv", buffer_steps=2).start()
    try:
        for i in range(4):
            pub.publish(stored(i + 1, i or None, float(i)))
        wait_for(lambda: len(pub._buffer) == 2)
        late = Follower(pub)
        wait_for(lambda: late.sub.last_seq == 3)
        late.sub.stop()
        assert late.seqs == [2, 3] and late.sub.lost == 2 and len(late.tree) == 2
    finally:
        pub.stop()


def test_the_replay_socket_speaks_vllm_s_protocol(publisher: KVEventPublisher) -> None:
    publisher.publish(stored(1, None, 1.0))
    publisher.publish(stored(2, 1, 2.0))
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(publisher.replay_endpoint)
    try:
        wait_for(lambda: len(publisher._buffer) == 2)
        dealer.send_multipart([b"", (1).to_bytes(8, "big")])  # from seq 1, as vLLM's subscriber asks
        assert dealer.poll(5000)
        _, topic, seq, payload = dealer.recv_multipart()
        assert (topic, int.from_bytes(seq, "big"), decode_batch(payload)) == (b"kv", 1, stored(2, 1, 2.0))
        assert dealer.recv_multipart() == [b"", b"kv", END_SEQ, b""]
    finally:
        dealer.close()


def rebind(endpoint: str, replay: str) -> KVEventPublisher:
    """A publisher on ports just closed (ZeroMQ releases them a moment after close)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return KVEventPublisher(endpoint, replay, topic="kv").start()
        except zmq.ZMQError:
            assert time.monotonic() < deadline, "the ports were not released"
            time.sleep(0.05)


def test_a_restarted_publisher_resets_the_tree() -> None:
    pub = KVEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", topic="kv").start()
    endpoint, replay = pub.endpoint, pub.replay_endpoint
    pub.publish(stored(1, None, 1.0))
    pub.publish(stored(2, 1, 2.0))
    follower = Follower(pub)
    wait_for(lambda: follower.sub.last_seq == 1)
    pub.stop()
    pub = rebind(endpoint, replay)  # the same ports, counting from 0 again
    try:
        def restarted() -> bool:
            pub.publish(stored(7, None, time.time()))
            time.sleep(0.05)
            return follower.sub.restarts == 1
        wait_for(restarted)
        wait_for(lambda: hash_label(7) in {n.hash for n in follower.tree.snapshot().nodes})
        assert hash_label(1) not in {n.hash for n in follower.tree.snapshot().nodes}
    finally:
        follower.sub.stop()
        pub.stop()


# ---- our engine, end to end --------------------------------------------------------------------
def test_our_engine_publishes_its_prefix_cache(embedded_model_dir: str, publisher: KVEventPublisher) -> None:
    from engine.core.config import CacheConfig, EngineConfig
    from engine.serving.engine_thread import EngineThread
    from engine.serving.llm_engine import LLMEngine
    from engine.core.sampling_params import SamplingParams

    engine = LLMEngine(EngineConfig(model=embedded_model_dir, device="cpu", check_integrity=True,
                                    cache=CacheConfig(num_blocks=24, block_size=16)))
    sink = engine_sink(publisher, 16)
    thread = EngineThread(engine, kv_events=sink).start()
    follower = Follower(publisher)
    system = ("You are a patient assistant who explains the inner workings of large language model "
              "serving systems, their paged key-value caches, continuous batching and prefix caching, "
              "in plain words, with one short example each time, and never more than three sentences. ")
    prompts = [system + "What is a KV block, how many tokens does one hold, and who decides when it is freed?",
               system + "Why would two conversations share a prefix, and what does the engine save by it?"]
    greedy = SamplingParams(temperature=0.0, max_tokens=3)
    try:
        for prompt in prompts:
            list(thread.submit(prompt, greedy))
        ids = [engine.encode(p) for p in prompts]
        shared = next(i for i, (a, b) in enumerate(zip(*ids)) if a != b) // 16
        assert shared >= 3
        assert all(len(i) >= (shared + 1) * 16 for i in ids)  # each has a block of its own
        wait_for(lambda: follower.tree.stored_blocks >= len(ids[0]) // 16 + 1)
        snap = follower.tree.snapshot()
        depths = [n.depth for n in snap.nodes]
        assert [depths.count(d) for d in range(shared)] == [1] * shared  # the system prompt's blocks: once
        assert depths.count(shared) == 2  # where the questions part
        chain = [n for n in snap.nodes if n.depth < shared]
        assert [t for n in chain for t in n.token_ids] == ids[0][:shared * 16]
        # an unrelated long prompt needs most of the pool: cached blocks are evicted
        list(thread.submit(" ".join(f"word{i}" for i in range(120)), greedy))
        wait_for(lambda: follower.tree.removed_blocks > 0)
    finally:
        thread.stop()
    before = follower.sub.last_seq
    engine.reset_prefix_cache()  # the thread is stopped: the engine is ours to call
    sink(engine.take_kv_cache_events())
    wait_for(lambda: follower.sub.last_seq > before)
    follower.sub.stop()
    assert follower.tree.clears == 1 and len(follower.tree) == 0



def test_batches_the_live_socket_never_delivers_come_from_the_replay_socket_when_quiet(
        publisher: KVEventPublisher) -> None:
    """A subscription still on its way misses what is published meanwhile (ZeroMQ's slow joiner);
    here the live socket misses everything (another topic), so each batch must come by replay."""
    follower = Follower(publisher, topic="not-kv")
    try:
        for i in range(3):
            publisher.publish(stored(i + 1, i or None, float(i)))
            wait_for(lambda: follower.sub.last_seq == i, timeout=5)
        assert follower.seqs == [0, 1, 2] and follower.sub.lost == 0 and len(follower.tree) == 3
    finally:
        follower.sub.stop()
