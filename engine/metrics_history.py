"""The engine's metrics over time: per-step snapshots folded into short time buckets, recent
latency samples, and cumulative latency histograms (what a Prometheus scrape reads).

Written by the engine thread, read by any other; every read returns frozen copies.
"""
from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

from engine.block_manager import BlockStats
from engine.block_map import KvWaste
from engine.metrics import MetricsSnapshot

# seconds; shared by time to first token and inter-token latency
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
                                      0.75, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class HistogramView:
    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]  # observations <= each bound, then the +Inf total
    total: float  # sum of the observed values

    @property
    def count(self) -> int:
        return self.cumulative[-1]


@dataclass
class Histogram:
    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def view(self) -> HistogramView:
        running, cumulative = 0, []
        for c in self.counts:
            running += c
            cumulative.append(running)
        return HistogramView(self.bounds, tuple(cumulative), self.total)


@dataclass(frozen=True)
class TimelinePoint:
    """What the engine did during one bucket of `bucket_s` seconds (state fields: at its last step)."""

    t: float  # start of the bucket, time.perf_counter()
    steps: int
    busy: float  # seconds spent inside steps
    prefill_tokens: int
    decode_tokens: int
    max_batch_size: int
    preempted: int
    num_running: int
    num_waiting: int
    blocks: BlockStats
    waste: KvWaste


@dataclass(frozen=True)
class HistoryView:
    """A consistent copy of the history at `now`, for pure plot builders and the Prometheus page."""

    now: float
    bucket_s: float
    points: tuple[TimelinePoint, ...]
    ttft: tuple[tuple[float, float], ...]  # recent (time, seconds)
    itl: tuple[tuple[float, float], ...]
    ttft_hist: HistogramView
    itl_hist: HistogramView
    latest: MetricsSnapshot | None
    latest_waste: KvWaste | None


def _fold(point: TimelinePoint | None, t: float, snap: MetricsSnapshot, waste: KvWaste) -> TimelinePoint:
    base = point or TimelinePoint(t, 0, 0.0, 0, 0, 0, 0, 0, 0, snap.blocks, waste)
    return TimelinePoint(
        base.t, base.steps + 1, base.busy + snap.step_time, base.prefill_tokens + snap.num_prefill_tokens,
        base.decode_tokens + snap.num_decode_tokens, max(base.max_batch_size, snap.batch_size),
        base.preempted + snap.num_preempted, snap.num_running, snap.num_waiting, snap.blocks, waste)


class MetricsHistory:
    """Thread-safe: `record` from the engine thread, `view` and `busy_fraction` from anywhere."""

    def __init__(self, bucket_s: float = 0.5, window_s: float = 180.0, max_samples: int = 4000) -> None:
        self.bucket_s = bucket_s
        self._lock = threading.Lock()
        self._points: deque[TimelinePoint] = deque(maxlen=max(1, int(window_s / bucket_s)))
        self._ttft: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._itl: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._ttft_hist, self._itl_hist = Histogram(), Histogram()
        self._latest: MetricsSnapshot | None = None
        self._latest_waste: KvWaste | None = None

    def record(self, snap: MetricsSnapshot, waste: KvWaste) -> None:
        """Fold one step in. `snap.timestamp` is time.perf_counter() at the end of the step."""
        t = snap.timestamp - snap.timestamp % self.bucket_s
        with self._lock:
            last = self._points[-1] if self._points and self._points[-1].t == t else None
            if last is not None:
                self._points.pop()
            self._points.append(_fold(last, t, snap, waste))
            for value in snap.ttft:
                self._ttft.append((snap.timestamp, value))
                self._ttft_hist.observe(value)
            for value in snap.itl:
                self._itl.append((snap.timestamp, value))
                self._itl_hist.observe(value)
            self._latest, self._latest_waste = snap, waste

    def record_idle(self, now: float, blocks: BlockStats, waste: KvWaste) -> None:
        """The pool changed without a step (an abort while idle): fold the new state in."""
        t = now - now % self.bucket_s
        with self._lock:
            last = self._points[-1] if self._points else None
            if last is not None and last.t == t:
                self._points.pop()
                point = replace(last, num_running=0, num_waiting=0, blocks=blocks, waste=waste)
            else:
                point = TimelinePoint(t, 0, 0.0, 0, 0, 0, 0, 0, 0, blocks, waste)
            self._points.append(point)
            self._latest_waste = waste

    def view(self, now: float | None = None) -> HistoryView:
        with self._lock:
            return HistoryView(time.perf_counter() if now is None else now, self.bucket_s, tuple(self._points),
                               tuple(self._ttft), tuple(self._itl), self._ttft_hist.view(), self._itl_hist.view(),
                               self._latest, self._latest_waste)

    @property
    def latest(self) -> MetricsSnapshot | None:
        return self._latest

    def busy_fraction(self, window_s: float = 2.0, now: float | None = None) -> float:
        """Share of the last `window_s` seconds the engine spent inside steps."""
        now = time.perf_counter() if now is None else now
        with self._lock:
            busy = sum(p.busy for p in self._points if p.t >= now - window_s)
        return min(1.0, busy / window_s)
