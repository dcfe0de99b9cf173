"""The scheduler with the block manager, no model: budgets, chunked prefill, preemption, abort."""
from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine.core.block_manager import BlockManager
from engine.core.config import SchedulerConfig
from engine.core.sampling_params import SamplingParams
from engine.core.scheduler import Scheduler, SchedulerOutput
from engine.core.sequence import PENDING, FinishReason, Sequence


def make(num_blocks: int = 64, block_size: int = 4, budget: int = 32, max_seqs: int = 8,
         long_prefill: int = 0) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget,
                                     long_prefill_tokens=long_prefill), BlockManager(num_blocks, block_size))


def add(s: Scheduler, prompt_len: int, max_tokens: int = 4, n: int = 1, first: int = 1) -> Sequence:
    seq = Sequence(seq_id=s.next_seq_id(), request_id=f"r{first}-{prompt_len}", token_ids=[first] * prompt_len,
                   num_prompt_tokens=prompt_len, params=SamplingParams(max_tokens=max_tokens, n=n), arrival_time=0.0)
    s.add(seq)
    return seq


def fake_step(s: Scheduler) -> SchedulerOutput:
    """Run one step with a stand-in model: next token = length of the sequence; finish at max_tokens."""
    out = s.schedule()
    sampled = [[it.seq.num_tokens + k for k in range(it.num_samples)] for it in out.scheduled]
    for seq in s.update(out, sampled):
        if seq.num_output_tokens >= seq.params.max_tokens:
            s.finish(seq, FinishReason.LENGTH)
    s.blocks.check_integrity()
    return out


def test_chunked_prefill_shares_the_budget_with_decodes() -> None:
    s = make(budget=16)
    short = add(s, 3, max_tokens=10)
    fake_step(s)
    long = add(s, 40, first=2)
    out = fake_step(s)
    assert [(i.seq, i.num_new_tokens) for i in out.scheduled] == [(short, 1), (long, 15)]
    assert out.num_decode_tokens == 1 and out.num_prefill_tokens == 15
    while long.num_output_tokens == 0:
        out = fake_step(s)
        assert out.num_tokens <= 16
    assert long.num_computed_tokens == 40


def test_a_long_prompt_holds_back_no_decode_and_no_newcomer() -> None:
    """An attacker's long prompt, running first: the decodes admitted after it still get their
    token every step, a newcomer is admitted at once, and its chunks stay within the cap. A prompt
    alone that fits the budget gets it whole (its TTFT); a longer one is capped from the start."""
    s = make(num_blocks=256, budget=32, long_prefill=8)
    alone = add(s, 30, first=9)
    assert [i.num_new_tokens for i in fake_step(s).scheduled] == [30]
    s.abort(alone.request_id)
    alone = add(s, 100, first=8)
    assert [i.num_new_tokens for i in fake_step(s).scheduled] == [8]
    s.abort(alone.request_id)
    long = add(s, 200, first=2)
    fake_step(s)
    short = add(s, 3, max_tokens=20)
    out = fake_step(s)
    assert {(i.seq.request_id, i.num_new_tokens) for i in out.scheduled} == {(long.request_id, 8), (short.request_id, 3)}
    for _ in range(5):
        out = fake_step(s)
        assert out.scheduled[0].seq is short and out.scheduled[0].num_new_tokens == 1  # the decode first
        assert max(i.num_new_tokens for i in out.scheduled) <= 8
    newcomer = add(s, 5, first=3)
    assert any(i.seq is newcomer for i in fake_step(s).scheduled)


def test_preemption_recomputes_the_newest_and_everyone_finishes() -> None:
    s = make(num_blocks=6, block_size=4, budget=64)
    seqs = [add(s, 6, max_tokens=8, first=i) for i in range(3)]
    steps = 0
    while s.has_unfinished:
        out = fake_step(s)
        for victim in out.preempted:
            assert s.waiting[0] is victim, "a preempted sequence goes to the front"
        steps += 1
        assert steps < 200
    assert s.num_preemptions > 0
    assert all(q.num_output_tokens == 8 for q in seqs)
    assert s.blocks.num_free_blocks == 6


def test_abort_frees_every_block_of_the_request() -> None:
    s = make()
    seq = add(s, 9, max_tokens=100)
    fake_step(s)
    fake_step(s)
    assert s.blocks.stats().used > 0
    assert s.abort(seq.request_id) == [seq]
    assert seq.finish_reason is FinishReason.ABORT
    assert s.blocks.stats().used == 0 and not s.has_unfinished


def test_n_samples_fork_after_the_prompt_and_share_its_blocks() -> None:
    s = make(block_size=4)
    parent = add(s, 6, max_tokens=3, n=3)
    fake_step(s)
    assert len(s.running) == 3
    assert s.blocks.stats().shared == 2, "both prompt blocks are shared by the three samples"
    out = s.schedule()
    assert len(out.copies) == 2, "two of three samples copy the partly filled block before writing"
    assert [c.sample_index for c in parent.children] == [1, 2]


def test_prefix_cache_hit_skips_the_shared_prompt() -> None:
    s = make(block_size=4)
    add(s, 13, max_tokens=1)
    fake_step(s)
    second = add(s, 13, max_tokens=1)
    out = fake_step(s)
    assert second.num_cached_tokens == 12 and out.scheduled[0].num_new_tokens == 1


def test_static_batching_admits_a_new_batch_only_when_the_running_one_drained() -> None:
    s = make(budget=64)
    s.batching = "static"
    first = [add(s, 5, max_tokens=3, first=i) for i in range(2)]
    assert {i.seq for i in fake_step(s).scheduled} == set(first), "an idle engine admits a whole batch"
    late = add(s, 5, max_tokens=3, first=7)
    while any(not q.is_finished for q in first):
        out = fake_step(s)
        assert all(i.seq in first for i in out.scheduled), "no one joins a running static batch"
    assert late.num_computed_tokens == 0
    assert [i.seq for i in fake_step(s).scheduled] == [late]
    s.batching = "continuous"
    joiner = add(s, 5, max_tokens=3, first=8)
    assert {i.seq for i in fake_step(s).scheduled} == {late, joiner}, "continuous: it joins at once"


class SchedulerMachine(RuleBasedStateMachine):
    """Random add / step / abort sequences keep the scheduler's and block manager's invariants."""

    @initialize(blocks=st.integers(10, 40), budget=st.integers(4, 40), max_seqs=st.integers(1, 6),
                long_prefill=st.sampled_from([0, 1, 3, 8]))
    def setup(self, blocks: int, budget: int, max_seqs: int, long_prefill: int) -> None:
        self.s = make(num_blocks=blocks, block_size=4, budget=budget, max_seqs=max_seqs, long_prefill=long_prefill)
        self.requests: list[str] = []

    @rule(prompt=st.integers(1, 28), max_tokens=st.integers(1, 12), n=st.integers(1, 3), first=st.integers(0, 3))
    def add(self, prompt: int, max_tokens: int, n: int, first: int) -> None:
        seq = add(self.s, prompt, max_tokens, min(n, self.s.config.max_num_seqs), first)
        seq.request_id = f"req{seq.seq_id}"
        self.requests.append(seq.request_id)

    @rule(static=st.booleans())
    def set_batching(self, static: bool) -> None:
        self.s.batching = "static" if static else "continuous"

    @rule()
    def step(self) -> None:
        running = set(self.s.running)
        out = fake_step(self.s)
        if self.s.batching == "static" and running:
            assert all(i.seq in running for i in out.scheduled), "static: no newcomer joins a running batch"
        assert out.num_tokens <= self.s.config.max_num_batched_tokens
        assert len(self.s.running) <= self.s.config.max_num_seqs

    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        if self.requests:
            self.s.abort(data.draw(st.sampled_from(self.requests)))

    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "s"):
            return
        self.s.blocks.check_integrity()
        for seq in self.s.running:
            table = self.s.blocks.block_table(seq.seq_id)
            assert len(table) * 4 >= seq.num_computed_tokens
        for seq in self.s.waiting:
            assert not self.s.blocks.has_seq(seq.seq_id) and seq.num_computed_tokens == 0

    def teardown(self) -> None:
        if not hasattr(self, "s"):
            return
        for _ in range(3000):  # 10 blocks hold any one sequence (40 tokens), so everything drains (a 1-token cap is slow)
            if not self.s.has_unfinished:
                break
            fake_step(self.s)
        assert not self.s.has_unfinished
        assert self.s.blocks.num_free_blocks == self.s.blocks.num_blocks


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)


# ---- overlapped scheduling: advance / resolve ----------------------------------------------------
EOS = 0


def next_token(history: list[int]) -> int:
    """A deterministic stand-in model: the next token depends on the whole history; EOS (0) now and then."""
    return hash(tuple(history)) % 11


def run_to_end(s: Scheduler, overlapped: bool) -> None:
    """Drive the scheduler as the engine does: each step's tokens at once (update), or, overlapped,
    the next step planned and 'launched' before the tokens of the step still in flight are taken."""
    def ends(seq: Sequence) -> None:
        if seq.token_ids[-1] == EOS:
            s.finish(seq, FinishReason.STOP)
        elif seq.num_tokens >= seq.token_limit:
            s.finish(seq, FinishReason.LENGTH)

    in_flight = None  # (out, {seq_id: token}) of a step advanced but not resolved
    for _ in range(5000):
        if not s.has_unfinished and in_flight is None:
            return
        out = s.schedule()
        known = in_flight[1] if in_flight else {}
        sampled = []
        for item in out.scheduled:  # the 'device': a PENDING input token is read from the step before
            history = list(item.seq.token_ids)
            if history[-1] == PENDING:
                history[-1] = known[item.seq.seq_id]
            sampled.append([next_token(history + [k] * k) for k in range(item.num_samples)])
        if in_flight is not None:
            before, tokens = in_flight
            for seq in s.resolve(before, [[tokens[i.seq.seq_id]] if i.num_samples else [] for i in before.scheduled]):
                ends(seq)
            in_flight = None
        if out.is_empty:
            pass
        elif overlapped and all(i.num_samples <= 1 for i in out.scheduled):
            s.advance(out)
            in_flight = (out, {i.seq.seq_id: t[0] for i, t in zip(out.scheduled, sampled) if t})
        else:
            for seq in s.update(out, sampled):
                ends(seq)
        s.blocks.check_integrity()
    raise AssertionError("the workload did not drain")


@settings(max_examples=60, deadline=None)
@given(requests=st.lists(st.tuples(st.integers(1, 28), st.integers(1, 12), st.integers(1, 2), st.integers(1, 9)),
                         min_size=1, max_size=10),
       blocks=st.integers(10, 40), budget=st.integers(4, 40), max_seqs=st.integers(2, 6))
def test_overlapped_scheduling_gives_every_sequence_the_same_tokens(requests, blocks, budget, max_seqs) -> None:
    results = []
    for overlapped in (False, True):
        s = make(num_blocks=blocks, block_size=4, budget=budget, max_seqs=max_seqs, long_prefill=8)
        seqs = []
        for prompt, max_tokens, n, first in requests:
            seq = add(s, prompt, max_tokens, n, first)
            seq.token_ids = [first + i for i in range(prompt)]
            seq.token_limit = prompt + max_tokens
            seqs.append(seq)
        run_to_end(s, overlapped)
        assert s.blocks.num_free_blocks == s.blocks.num_blocks
        results.append([[(c.token_ids, c.finish_reason) for c in [q] + q.children] for q in seqs])
    assert results[0] == results[1]


def test_overlapped_step_plans_on_a_pending_token_and_drops_it_for_an_abort() -> None:
    s = make()
    seq = add(s, 5, max_tokens=8)
    out = s.schedule()
    s.advance(out)
    assert seq.token_ids[-1] == PENDING and seq.num_computed_tokens == 5
    nxt = s.schedule()  # planned before the first token is known: a decode of the PENDING token
    assert [(i.seq, i.num_new_tokens, i.is_decode) for i in nxt.scheduled] == [(seq, 1, True)]
    assert s.resolve(out, [[7]]) == [seq] and seq.token_ids[-1] == 7
    s.advance(nxt)
    assert seq.token_ids[-2:] == [7, PENDING]
    s.abort(seq.request_id)
    assert seq.token_ids[-1] == 7, "an abort drops the token still in flight"
    assert s.resolve(nxt, [[9]]) == [] and s.blocks.num_free_blocks == s.blocks.num_blocks


def test_a_sequence_whose_pending_token_is_its_last_is_not_planned_again() -> None:
    s = make()
    seq = add(s, 5, max_tokens=1)
    seq.token_limit = 6
    out = s.schedule()
    s.advance(out)
    assert s.schedule().is_empty
