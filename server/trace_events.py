"""The event feed as a Chrome trace-event JSON file (the format ui.perfetto.dev and chrome://tracing
open): a pure function of step records.

Tracks: process 1 "engine" holds the steps (one slice per step, its token counts as args) and two
counters (KV blocks in use and cached-free; the batch's prefill and decode tokens); process 2
"requests" holds one track per sequence (a request with n > 1 has one per sample), named after the
request, with its phases as slices: waiting, prefill, decode, preempted (waiting to be recomputed),
and an instant event where it finished, with the reason.
"""
from __future__ import annotations

from typing import Any, Iterable

from engine.serving.event_feed import StepRecord

ENGINE, REQUESTS = 1, 2
_SLICE_PHASES = {"waiting": "waiting", "forked": "decode", "prefill": "prefill", "decode": "decode",
                 "preempted": "preempted"}


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


class _Track:
    """One sequence's open slice: its phase and when it started (microseconds)."""

    def __init__(self, tid: int, phase: str, start: float) -> None:
        self.tid, self.phase, self.start = tid, phase, start


def trace_events(records: Iterable[StepRecord]) -> dict[str, Any]:
    """A trace-event JSON object for `records` (oldest first). Times start at the first record."""
    records = list(records)
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": ENGINE, "tid": 0, "args": {"name": "engine"}},
        {"name": "thread_name", "ph": "M", "pid": ENGINE, "tid": 0, "args": {"name": "steps"}},
        {"name": "process_name", "ph": "M", "pid": REQUESTS, "tid": 0, "args": {"name": "requests"}},
    ]
    if not records:
        return {"traceEvents": events, "displayTimeUnit": "ms"}
    origin = records[0].wall_time
    tracks: dict[int, _Track] = {}

    def close(track: _Track, at: float) -> None:
        if at > track.start:
            events.append({"name": track.phase, "ph": "X", "pid": REQUESTS, "tid": track.tid, "ts": track.start,
                           "dur": round(at - track.start, 3), "cat": "request"})

    for r in records:
        start, end = _us(r.wall_time - origin), _us(r.wall_time - origin + r.duration)
        events.append({"name": f"step {r.step}", "ph": "X", "pid": ENGINE, "tid": 0, "ts": start,
                       "dur": _us(r.duration), "cat": "step",
                       "args": {"prefill_tokens": r.num_prefill_tokens, "decode_tokens": r.num_decode_tokens}})
        events.append({"name": "KV blocks", "ph": "C", "pid": ENGINE, "tid": 0, "ts": start,
                       "args": {"used": r.blocks_used, "cached_free": r.blocks_cached_free}})
        events.append({"name": "batch tokens", "ph": "C", "pid": ENGINE, "tid": 0, "ts": start,
                       "args": {"prefill": r.num_prefill_tokens, "decode": r.num_decode_tokens}})
        for e in r.requests:
            track = tracks.get(e.seq_id)
            if track is None:
                track = tracks[e.seq_id] = _Track(len(tracks) + 1, _SLICE_PHASES.get(e.phase, "waiting"), start)
                name = e.request_id if e.sample == 0 else f"{e.request_id} #{e.sample}"
                events.append({"name": "thread_name", "ph": "M", "pid": REQUESTS, "tid": track.tid,
                               "args": {"name": name}})
            if e.phase == "finished":
                close(track, end)
                events.append({"name": f"finished: {e.reason}", "ph": "i", "s": "t", "pid": REQUESTS,
                               "tid": track.tid, "ts": end})
                track.phase = "finished"
                continue
            phase = _SLICE_PHASES[e.phase]
            if phase != track.phase and track.phase != "finished":  # the change happened as the step began
                close(track, start)
                track.phase, track.start = phase, start
    last = _us(records[-1].wall_time - origin + records[-1].duration)
    for track in tracks.values():
        if track.phase != "finished":
            close(track, last)
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"source": "PagedChat event feed", "steps": f"{records[0].step}-{records[-1].step}"}}
