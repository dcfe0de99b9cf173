"""The engine's event feed: one record per step of what each request did and what each block did.

Schema (version `SCHEMA_VERSION`; a change of meaning bumps it):

  StepRecord   step, wall_time (Unix seconds at the step's start), duration (seconds),
               num_prefill_tokens, num_decode_tokens, num_output_tokens (tokens sampled: each
               decode's, plus the first of each prompt the step finished), blocks_used,
               blocks_cached_free, num_blocks, requests: [RequestEvent], blocks: [BlockEvent],
               tokens_stored (token slots holding a token after the step, each physical slot once),
               num_context_tokens (tokens the step's sequences attended to: for each, its computed
               tokens plus those it fed), batching (continuous | static), block_cap (blocks the
               scheduler may hand out: num_blocks unless memory pressure is simulated)
  RequestEvent request_id, sample (index among the request's n), seq_id, phase, tokens, reason,
               samples (tokens the sequence drew at the end of this step: 1 for a decode, n for
               the chunk that finishes an n-sample prompt, 0 for an earlier chunk), limit (on a
               waiting event: the most tokens the request may reach, prompt + max_tokens capped by
               the model's context: what a contiguous cache would reserve for it at the least),
               cached (on the prefill event of an admission: prompt tokens found in the prefix
               cache, whose prefill is saved)
               phase is one of
                 waiting   the request arrived, with a prompt of `tokens` tokens (a preempted
                           one waits again without a new event: see preempted)
                 prefill   fed `tokens` prompt tokens this step (a chunk, or a recompute)
                 decode    fed its newest token this step
                 forked    a new sample of an n > 1 request, sharing the parent's blocks
                 preempted its blocks were freed to make room; it waits to be recomputed
                 finished  left the engine; `reason` is stop, length, abort or error
  BlockEvent   kind, block_id, seq_id, ref_count, src (see engine.block_manager.BlockEvent)

Request and block events that happen between steps (an arrival, an abort) go into the next
step's record; when no step follows (the last request aborted), into a record of their own with
the last step's number, duration 0 and no tokens. Sequence ids tie block events to requests: every sequence appears in a request
event (waiting or forked) before its first block event.

`EventFeed` keeps the latest records in a bounded ring; readers on other threads ask for what came
after the last record they saw.
"""
from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from engine.core.block_manager import BlockEvent

SCHEMA_VERSION = 3  # 2: num_output_tokens, samples, a waiting event's prompt length
# 3: tokens_stored, num_context_tokens, batching, block_cap; a waiting event's limit, an admission's cached
PHASES = ("waiting", "prefill", "decode", "forked", "preempted", "finished")


class RequestEvent(NamedTuple):
    request_id: str
    sample: int
    seq_id: int
    phase: str
    tokens: int = 0  # waiting: prompt length; prefill: tokens fed; decode: 1
    reason: str | None = None  # finished: stop | length | abort | error
    samples: int = 0  # tokens drawn at the step's end
    limit: int = 0  # waiting: prompt + max_tokens, capped by the context
    cached: int = 0  # an admission's prefill: prompt tokens found in the prefix cache


_SEQ_ID, _PHASE, _SAMPLES = (RequestEvent._fields.index(f) for f in ("seq_id", "phase", "samples"))


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One step's record. Its events are kept as plain tuples of their fields (`requests` and
    `blocks` make the named ones): Python's garbage collector stops tracking a tuple of plain
    values, never a NamedTuple, and a full feed holds a million events. As NamedTuples, every full
    collection walked them all: a pause of 100 ms and more in every stream."""

    step: int
    wall_time: float
    duration: float
    num_prefill_tokens: int
    num_decode_tokens: int
    num_output_tokens: int
    blocks_used: int
    blocks_cached_free: int
    num_blocks: int
    request_rows: tuple[tuple, ...]  # RequestEvent fields
    block_rows: tuple[tuple, ...]  # BlockEvent fields
    tokens_stored: int = 0
    num_context_tokens: int = 0
    batching: str = "continuous"
    block_cap: int = 0  # 0 in records of schema 2 (no cap then)

    @property
    def requests(self) -> tuple[RequestEvent, ...]:
        return tuple(map(RequestEvent._make, self.request_rows))

    @property
    def blocks(self) -> tuple[BlockEvent, ...]:
        return tuple(map(BlockEvent._make, self.block_rows))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types, events as objects with named fields."""
        return {"step": self.step, "wall_time": self.wall_time, "duration": self.duration,
                "num_prefill_tokens": self.num_prefill_tokens, "num_decode_tokens": self.num_decode_tokens,
                "num_output_tokens": self.num_output_tokens,
                "blocks_used": self.blocks_used, "blocks_cached_free": self.blocks_cached_free,
                "num_blocks": self.num_blocks, "requests": [dict(zip(RequestEvent._fields, e)) for e in self.request_rows],
                "blocks": [dict(zip(BlockEvent._fields, e)) for e in self.block_rows], "tokens_stored": self.tokens_stored,
                "num_context_tokens": self.num_context_tokens, "batching": self.batching,
                "block_cap": self.block_cap}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StepRecord":
        """The inverse of `to_json` (a recorded run read back)."""
        fields = {k: v for k, v in data.items() if k not in ("requests", "blocks")}
        return cls(**fields, request_rows=tuple(tuple(RequestEvent(**e)) for e in data["requests"]),
                   block_rows=tuple(tuple(BlockEvent(**b)) for b in data["blocks"]))


class EventFeed:
    """The newest `capacity` step records (memory bounded whatever the run's length). The engine
    thread appends; any thread reads. Each record gets an index, counting from 0 for the feed's life."""

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError("the event feed needs room for at least one record")
        self._records: deque[tuple[int, StepRecord]] = deque(maxlen=capacity)  # (index, record)
        self._next = 0  # index the next record will get
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self._records.maxlen or 0

    @property
    def next_index(self) -> int:
        return self._next

    def append(self, record: StepRecord) -> None:
        with self._lock:
            self._records.append((self._next, record))
            self._next += 1

    def skip(self) -> None:
        """Leave one index without a record: readers see a gap (a replay starting over)."""
        with self._lock:
            self._next += 1

    def since(self, index: int) -> tuple[int, list[StepRecord]]:
        """(the index of the first record returned, the records from `index` on). Records already
        dropped from the ring, and skipped indexes, are passed over: the first index returned may
        be larger than asked."""
        with self._lock:
            held = list(self._records)
            end = self._next
        at = bisect.bisect_left(held, index, key=lambda pair: pair[0])
        if at == len(held):
            return max(index, end), []
        return held[at][0], [record for _, record in held[at:]]


class StepRecorder:
    """Collects one step's request events as the engine calls it, and closes each step into a
    record appended to `feed` with the block manager's block events of the step."""

    def __init__(self, feed: EventFeed) -> None:
        self.feed = feed
        self._requests: list[tuple] = []  # this step's RequestEvents' fields (StepRecord keeps plain tuples)
        self._context = 0  # tokens the scheduled sequences attend to

    def note(self, seq: Any, phase: str, tokens: int = 0, reason: str | None = None, samples: int = 0,
             limit: int = 0, cached: int = 0) -> None:
        """`seq` is an engine.core.sequence.Sequence (typed loosely: this module imports no engine state)."""
        self._requests.append((seq.request_id, seq.sample_index, seq.seq_id, phase, tokens, reason, samples, limit,
                               cached))  # RequestEvent's fields in order (scheduled() writes them out too)

    def scheduled(self, out: Any) -> None:
        """A SchedulerOutput: its preempted sequences, then what each scheduled one feeds."""
        for seq in out.preempted:
            self.note(seq, "preempted")
        context, events = 0, self._requests
        for item in out.scheduled:  # note()'s events, made here: 256 a step
            seq, num_new = item.seq, item.num_new_tokens
            if item.is_decode:
                phase, cached = "decode", 0
            else:  # admitted this step: nothing computed yet beyond what the prefix cache gave
                phase = "prefill"
                cached = seq.num_cached_tokens if seq.num_computed_tokens == seq.num_cached_tokens else 0
            events.append((seq.request_id, seq.sample_index, seq.seq_id, phase, num_new, None, item.num_samples, 0,
                           cached))
            context += seq.num_computed_tokens + num_new
        self._context = context

    def dropped(self, seq_ids: set[int]) -> None:
        """These sequences ended on the step before's tokens after this step was launched (overlapped
        scheduling): their rows ran, but their tokens are dropped, so their events draw no samples."""
        self._requests = [e[:_SAMPLES] + (0,) + e[_SAMPLES + 1:] if e[_SEQ_ID] in seq_ids and e[_PHASE] in
                          ("decode", "prefill") else e for e in self._requests]

    def close_step(self, step: int, wall_time: float, duration: float, num_prefill: int, num_decode: int,
                   num_output: int, blocks: Any, batching: str = "continuous", stats: Any = None) -> None:
        """`blocks` is the BlockManager: its events since the last step go into this record; `stats`,
        its stats() if taken already this step (the step's metrics snapshot has them)."""
        stats = stats or blocks.stats()
        self.feed.append(StepRecord(step, wall_time, duration, num_prefill, num_decode, num_output, stats.used,
                                    stats.cached_free, stats.total, tuple(self._requests),
                                    tuple(blocks.take_events()), stats.tokens_stored, self._context, batching,
                                    stats.cap))
        self._requests, self._context = [], 0

    def close_idle(self, step: int, wall_time: float, blocks: Any, batching: str = "continuous") -> None:
        """Events between steps, with no step to follow (an abort of the last request): a record
        of their own, with the last step's number, no duration and no tokens. Nothing if none."""
        events = blocks.take_events()
        if self._requests or events:
            stats = blocks.stats()
            self.feed.append(StepRecord(step, wall_time, 0.0, 0, 0, 0, stats.used, stats.cached_free, stats.total,
                                        tuple(self._requests), tuple(events), stats.tokens_stored, 0, batching,
                                        stats.cap))
            self._requests = []
