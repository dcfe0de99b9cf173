"""Continuous batching: which sequences run this step, and how many tokens each feeds.

Plain Python, no torch. Every step shares one token budget between the running sequences (decodes
first, then unfinished prefill chunks, oldest first) and then newly admitted ones (chunked
prefill). While others share the step, a prefill chunk is capped at `long_prefill_tokens`, so a
long prompt delays the others' next tokens by one chunk's time, not by its whole prefill.
When the KV pool runs dry, the newest running sequence is preempted by recompute (a prefilling one
before any decoding one): its blocks are freed and it goes back to the front of the waiting queue.
Static batching (a demo's contrast) admits newcomers only once the running batch has drained.

A step's results come back in one of two ways. `update` takes a finished step's tokens at once. With
overlapped scheduling the engine instead calls `advance` as soon as a step is launched (its tokens
count as computed and each sampling sequence gets a PENDING token), plans and launches the next step
on that, and calls `resolve` when the first step's tokens reach the host. A sequence whose PENDING
token is its last (max_tokens, the context) is not planned again; one that turns out to have ended
(EOS, a stop id) was planned once too often, and that step's token for it is dropped.
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from engine.core.block_manager import BlockManager
from engine.core.config import SchedulerConfig
from engine.core.sequence import PENDING, FinishReason, Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledSeq:
    """One sequence's share of a step. Its flags are fixed when it is scheduled: the sequence does
    not change until the step's update (computing them once saves the 256-wide step host time)."""

    seq: Sequence
    num_new_tokens: int
    # after this step every known token is computed: the next token can be sampled
    completes_prompt: bool = field(init=False)
    # feeds only the newest generated token; anything else is (re)computing a prompt
    is_decode: bool = field(init=False)
    num_samples: int = field(init=False)  # next tokens this step draws for the sequence

    def __post_init__(self) -> None:
        seq, n = self.seq, len(self.seq.token_ids)
        self.completes_prompt = seq.num_computed_tokens + self.num_new_tokens == n
        self.is_decode = self.num_new_tokens == 1 and n > seq.num_prompt_tokens and self.completes_prompt
        self.num_samples = seq.samples_at_prompt_end if self.completes_prompt else 0


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write (src, dst) blocks
    num_cached_tokens: int = 0  # tokens that newly admitted sequences found in the prefix cache
    num_queried_tokens: int = 0  # tokens of newly admitted sequences looked up in the prefix cache

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def num_prefill_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled if not s.is_decode)

    @property
    def num_decode_tokens(self) -> int:
        return self.num_tokens - self.num_prefill_tokens


class Scheduler:
    """Holds the waiting and running queues and decides each step's batch.

    `batching`: "continuous" (waiting sequences join at any step) or "static" (only when nothing runs).
    """

    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.blocks = block_manager
        self.batching = "continuous"
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._seq_ids = itertools.count()
        self.num_preemptions = 0

    def next_seq_id(self) -> int:
        return next(self._seq_ids)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        self._decodes_first()
        budget = self._schedule_running(out, self.config.max_num_batched_tokens)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        out.copies = self.blocks.take_copies()
        return out

    def _decodes_first(self) -> None:
        """Reorder the running list, stably: sequences feeding one token (decodes) before those
        still prefilling, so that no prefill takes the budget a decode needs."""
        if any(s.num_uncomputed_tokens > 1 for s in self.running):
            self.running = ([s for s in self.running if s.num_uncomputed_tokens <= 1]
                            + [s for s in self.running if s.num_uncomputed_tokens > 1])

    def _chunk(self, uncomputed: int, budget: int) -> int:
        """Tokens a sequence feeds this step: all it has within the budget, but at most
        `long_prefill_tokens` unless it is alone and done within this step."""
        cap = self.config.long_prefill_tokens
        alone = len(self.running) + len(self.waiting) <= 1
        if not cap or alone and uncomputed <= budget:
            return min(uncomputed, budget)
        return min(uncomputed, budget, cap)

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            ids = seq.token_ids
            if len(ids) >= seq.token_limit and ids[-1] == PENDING:
                i += 1  # its pending token is its last: it ends when that arrives
                continue
            num_new = self._chunk(len(ids) - seq.num_computed_tokens, budget)
            while not self.blocks.allocate_slots(seq.seq_id, seq.num_computed_tokens, num_new):
                victim = self.running.pop()  # the newest
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    return budget
            out.scheduled.append(ScheduledSeq(seq, num_new))
            budget -= num_new
            i += 1
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        if self.batching == "static" and self.running:
            return  # the running batch drains first
        # an unforked n > 1 request holds room for all its samples
        seats = sum(s.samples_at_prompt_end for s in self.running)
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            if seats + seq.samples_at_prompt_end > self.config.max_num_seqs:
                break
            # a prompt whose logprobs are asked for is computed whole: cached blocks have no logits
            prefix = [] if seq.needs_prompt_logprobs else self.blocks.match_prefix(seq.token_ids)
            num_cached = len(prefix) * self.blocks.block_size
            num_new = self._chunk(seq.num_tokens - num_cached, budget)
            if not self.blocks.allocate_slots(seq.seq_id, num_cached, num_new, prefix):
                break
            self.waiting.popleft()
            seq.num_computed_tokens = seq.num_cached_tokens = num_cached
            out.num_cached_tokens += num_cached
            out.num_queried_tokens += 0 if seq.needs_prompt_logprobs else seq.num_tokens
            seq.scheduled_time = seq.scheduled_time or time.perf_counter()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, num_new))
            budget -= num_new
            seats += seq.samples_at_prompt_end

    def _preempt(self, seq: Sequence) -> None:
        if seq.needs_prompt_logprobs:  # its recompute starts at token 0 and scores the prompt again
            seq.prompt_logprobs.clear()
        self.blocks.free(seq.seq_id)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def update(self, out: SchedulerOutput, sampled: list[list[int]],
               logprobs: list[list[Any]] | None = None) -> list[Sequence]:
        """Advance each scheduled sequence by its computed tokens and append its sampled tokens.

        `sampled[i]` holds scheduled[i].num_samples tokens. A prompt completing with n > 1 forks
        into n sequences, each taking one. Returns the sequences that received a new token.
        `logprobs`, shaped like `sampled`, is kept opaque as each token's `new_logprobs`.
        """
        grew: list[Sequence] = []
        for i, (item, tokens) in enumerate(zip(out.scheduled, sampled)):
            seq = item.seq
            if seq.is_finished:  # stopped (or aborted) while its step ran: its token is dropped
                continue
            seq.num_computed_tokens += item.num_new_tokens
            if self._may_fill_block(item):
                self.blocks.cache_full_blocks(seq.seq_id, seq.token_ids, seq.num_computed_tokens)
            if not tokens:
                continue
            seq.token_ids.append(tokens[0])
            grew.append(seq)
            if len(tokens) > 1:
                grew.extend(self._fork(seq, tokens[1:]))
            if logprobs is not None:
                for sample, lp in zip([seq] + (seq.children if len(tokens) > 1 else []), logprobs[i]):
                    sample.new_logprobs = lp
        return grew

    def advance(self, out: SchedulerOutput) -> None:
        """A step has been launched: count its tokens computed and give each sequence it samples a
        PENDING token, so that the next step can be planned before this one's tokens arrive.
        Every scheduled sequence draws at most one token (a fork needs `update`)."""
        for item in out.scheduled:
            seq = item.seq
            if seq.is_finished:
                continue
            assert item.num_samples <= 1, "a step that forks is taken with update()"
            seq.num_computed_tokens += item.num_new_tokens  # its full blocks are cached in resolve():
            if item.num_new_tokens > 1:  # a step that fails must not have put its KV in the prefix cache,
                # but they can be hashed now, while the device computes them (a prompt's chunk)
                self.blocks.hash_ahead(seq.seq_id, seq.token_ids, seq.num_computed_tokens)
            if item.num_samples:
                seq.token_ids.append(PENDING)

    def resolve(self, out: SchedulerOutput, sampled: list[list[int]],
                logprobs: list[list[Any]] | None = None) -> list[Sequence]:
        """An advanced step's tokens have arrived: each replaces its sequence's PENDING token, and
        the blocks the step filled join the prefix cache. Returns the sequences that received one (a
        finished one's is dropped; a preempted one keeps its token for its recompute)."""
        grew: list[Sequence] = []
        for i, (item, tokens) in enumerate(zip(out.scheduled, sampled)):
            seq = item.seq
            if seq.is_finished:
                continue
            if seq.status is SequenceStatus.RUNNING and self._may_fill_block(item):  # not preempted meanwhile
                self.blocks.cache_full_blocks(seq.seq_id, seq.token_ids, seq.num_computed_tokens)
            if not tokens:
                continue
            assert seq.token_ids[-1] == PENDING, (seq.seq_id, seq.token_ids[-3:])
            seq.token_ids[-1] = tokens[0]
            if logprobs is not None:
                seq.new_logprobs = logprobs[i][0]
            grew.append(seq)
        return grew

    def _may_fill_block(self, item: ScheduledSeq) -> bool:
        """Whether the step (counted in its sequence's computed tokens) may have filled a block, whose
        registration in the prefix cache is then due: a chunk, or one token that ends a block. A
        decode step skips the call 15 times in 16 (block size 16)."""
        return item.num_new_tokens > 1 or item.seq.num_computed_tokens % self.blocks.block_size == 0

    def _fork(self, seq: Sequence, tokens: list[int]) -> list[Sequence]:
        seq.forked = True
        children = []
        for index, token in enumerate(tokens, start=1):
            child = seq.fork(self.next_seq_id(), index, token)
            self.blocks.fork(seq.seq_id, child.seq_id)
            children.append(child)
        seq.children = children
        at = self.running.index(seq) + 1
        self.running[at:at] = children
        return children

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Take a sequence out of the queues for good and free its blocks."""
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if seq.has_pending_token:  # it ends before its token arrives (an abort, a failed step)
            seq.token_ids.pop()
        self.blocks.free(seq.seq_id, keep_cached=reason is not FinishReason.ERROR)  # a failed one's KV may be NaN
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def abort(self, request_id: str) -> list[Sequence]:
        """Finish every sequence of a request; returns them."""
        victims = [s for s in itertools.chain(self.running, self.waiting) if s.request_id == request_id]
        for seq in victims:
            self.finish(seq, FinishReason.ABORT)
        return victims
