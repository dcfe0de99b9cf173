"""The event feed agrees with the engine: over random runs of adds (shared prefixes, n up to 3, a
pool small enough to preempt), steps and aborts, replaying each step's block events reproduces every
block's reference count and prefix-cache state, each request's phases follow its life (waiting,
prefill chunks, decodes, preemption, finished with its reason), token counts add up, and the ring
stays bounded."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from benchmarks.synthetic_model import make_model_dir
from engine.core.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.serving.event_feed import PHASES, EventFeed, StepRecord
from engine.serving.llm_engine import LLMEngine
from engine.core.sampling_params import SamplingParams

SHAPE = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
             intermediate_size=64, vocab_size=128, tie_word_embeddings=True, max_position_embeddings=256)
PREFIXES = [[3, 4, 5, 6, 7, 8, 9, 10], [3, 4, 5, 6, 11, 12, 13, 14], [20] * 10]
CAPACITY = 8
SEEN: Counter[str] = Counter()  # phases and block kinds over all runs: each must happen


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_model_dir(tmp_path_factory.mktemp("tiny"), SHAPE, dtype=torch.float32, seed=4))


class FeedMachine(RuleBasedStateMachine):
    model_dir: str  # set by the test below

    @initialize()
    def setup(self) -> None:
        """A fresh engine for each run, so that a run replays exactly when hypothesis shrinks it."""
        config = EngineConfig(model=self.model_dir, device="cpu", cache=CacheConfig(block_size=4, num_blocks=12),
                              scheduler=SchedulerConfig(max_num_seqs=6, max_num_batched_tokens=12,
                                                        long_prefill_tokens=4),
                              check_integrity=True, event_feed_capacity=CAPACITY)
        self.engine = LLMEngine(config)
        self.cursor = 0
        self.refs = [0] * 12
        self.hashed = [False] * 12
        self.held: dict[int, list[int]] = {}  # seq id -> its blocks, as a dashboard tracks them from the feed
        self.phase: dict[int, str] = {}  # seq id -> its last phase
        self.requests: dict[int, str] = {}  # seq id -> request id
        self.next_id = 0

    @rule(which=st.integers(0, 2), tail=st.lists(st.integers(3, 100), max_size=6), n=st.integers(1, 3),
          max_tokens=st.integers(1, 8), greedy=st.booleans())
    def add(self, which: int, tail: list[int], n: int, max_tokens: int, greedy: bool) -> None:
        params = SamplingParams(n=n, max_tokens=max_tokens, temperature=0.0 if greedy else 1.0, ignore_eos=True)
        self.engine.add_request(f"r{self.next_id}", PREFIXES[which] + tail, params)
        self.next_id += 1

    @precondition(lambda self: self.engine._live)
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        self.engine.abort(data.draw(st.sampled_from(sorted(self.engine._live))))
        if not self.engine.has_unfinished_requests():  # as the engine thread does: no step will follow
            self.engine.flush_events()
            self.read()

    @precondition(lambda self: self.engine.has_unfinished_requests())
    @rule()
    def step(self) -> None:
        self.engine.step()
        self.read()

    def read(self) -> None:
        """Replay the new records; the replay must then match the pool exactly."""
        first, records = self.engine.feed.since(self.cursor)
        assert first == self.cursor, "the test reads every record before the ring drops it"
        for record in records:
            self.replay(record)
        self.cursor += len(records)
        bm = self.engine.block_manager
        assert self.refs == [b.ref_count for b in bm.blocks]
        assert self.hashed == [b.hash is not None for b in bm.blocks]
        tables = {seq_id: sorted(state.table) for seq_id, state in bm._seqs.items() if state.table}
        assert {k: sorted(v) for k, v in self.held.items() if v} == tables

    def replay(self, record: StepRecord) -> None:
        json.dumps(record.to_json())  # plain JSON all through
        fed = {"prefill": 0, "decode": 0}
        for e in record.requests:
            assert e.phase in PHASES
            SEEN[e.phase] += 1
            before = self.phase.get(e.seq_id)
            allowed = {"waiting": {None}, "forked": {None}, "preempted": {"prefill", "decode", "forked"},
                       "prefill": {"waiting", "preempted", "prefill"},
                       # a recompute whose every block but the last token's is a prefix-cache hit
                       "decode": {"prefill", "decode", "forked", "preempted"},
                       "finished": {"waiting", "preempted", "prefill", "decode", "forked"}}[e.phase]
            assert before in allowed, f"{e.request_id} seq {e.seq_id}: {before} -> {e.phase}"
            assert (e.reason is not None) == (e.phase == "finished")
            assert e.samples == (1 if e.phase == "decode" else e.samples if e.phase == "prefill" else 0)
            assert e.phase != "waiting" or e.tokens > 0, "a waiting event carries the prompt's length"
            self.phase[e.seq_id] = e.phase
            self.requests.setdefault(e.seq_id, e.request_id)
            if e.phase in fed:
                fed[e.phase] += e.tokens
        assert (fed["prefill"], fed["decode"]) == (record.num_prefill_tokens, record.num_decode_tokens)
        failed = any(e.reason == "error" for e in record.requests)
        assert failed or record.num_output_tokens == sum(e.samples for e in record.requests)
        assert max([e.tokens for e in record.requests if e.phase == "prefill"], default=0) <= 12
        for b in record.blocks:
            assert b.seq_id == -1 or b.seq_id in self.requests, f"block event of an unknown sequence: {b}"
            self.apply(b)
            SEEN[b.kind] += 1
        assert record.blocks_used == sum(1 for r in self.refs if r)

    def apply(self, b) -> None:
        prev = self.refs[b.block_id]
        expected = {"allocated": (0, 1), "reused": (0, 1), "shared": (prev, prev + 1),
                    "released": (prev, prev - 1), "freed": (1, 0), "copied": (1, 1),
                    "cached": (prev, prev), "evicted": (prev, prev)}[b.kind]
        assert (prev, b.ref_count) == expected, f"{b} after ref_count {prev}"
        assert b.kind != "copied" or self.refs[b.src] >= 1
        if b.kind == "cached":
            assert not self.hashed[b.block_id]
            self.hashed[b.block_id] = True
        elif b.kind == "evicted":
            assert self.hashed[b.block_id]
            self.hashed[b.block_id] = False
        self.refs[b.block_id] = b.ref_count
        held = self.held.setdefault(b.seq_id, [])  # a list: a block held twice would show
        if b.kind in ("allocated", "reused", "shared"):
            held.append(b.block_id)
        elif b.kind in ("released", "freed"):
            held.remove(b.block_id)
        elif b.kind == "copied":  # its allocation and the original's release came before it
            assert b.block_id in held and b.src not in held

    @invariant()
    def ring_is_bounded(self) -> None:
        assert len(self.engine.feed.since(0)[1]) <= CAPACITY


def test_the_feed_agrees_with_the_engine(model_dir: str) -> None:
    FeedMachine.model_dir = model_dir
    # derandomized: the runs are the same every time, so the coverage check below cannot flake
    FeedMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=40, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow], derandomize=True)
    FeedMachine.TestCase().runTest()
    kinds = {"allocated", "reused", "shared", "released", "freed", "copied", "cached", "evicted"}
    assert set(PHASES) | kinds <= set(SEEN), f"never happened: {set(PHASES) | kinds - set(SEEN)}"


def test_the_ring_keeps_the_newest_records() -> None:
    feed = EventFeed(capacity=3)
    for k in range(5):
        feed.append(StepRecord(k, 0.0, 0.0, 0, 0, 0, 0, 0, 1, (), ()))
    assert feed.next_index == 5
    first, records = feed.since(0)
    assert first == 2 and [r.step for r in records] == [2, 3, 4]
    assert feed.since(4)[1][0].step == 4 and feed.since(5)[1] == []


def test_a_full_feed_leaves_the_garbage_collector_nothing_to_walk(model_dir: str) -> None:
    """The feed's events are plain tuples of plain values, which the collector stops tracking: a
    full feed (a million events at 256 sequences a step) must not lengthen every full collection.
    The named events come back from the record as before, and survive its JSON."""
    import gc

    config = EngineConfig(model=model_dir, device="cpu", cache=CacheConfig(block_size=4, num_blocks=64),
                          scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=16))
    engine = LLMEngine(config)
    for i in range(4):
        engine.add_request(f"r{i}", [1 + i, 2, 3, 4, 5, 6], SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    gc.collect()
    gc.collect()
    records = engine.feed.since(0)[1]
    rows = [row for r in records for row in r.request_rows + r.block_rows]
    assert len(rows) > 50 and not any(gc.is_tracked(row) for row in rows)
    assert not any(gc.is_tracked(r.request_rows) or gc.is_tracked(r.block_rows) for r in records)
    events = [e for r in records for e in r.requests]  # the plain rows' fields in RequestEvent's order
    assert all(isinstance(e.request_id, str) and e.phase in PHASES and isinstance(e.seq_id, int) for e in events)
    assert all(e.samples == (e.phase == "decode") for e in events if e.phase in ("decode", "finished"))
    assert {e.phase for e in events} >= {"waiting", "prefill", "decode", "finished"}
    assert {e.kind for r in records for e in r.blocks} >= {"allocated", "freed"}
    assert [StepRecord.from_json(json.loads(json.dumps(r.to_json()))) for r in records] == records
