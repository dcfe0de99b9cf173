"""The engine's metrics over time: per-step snapshots folded into short time buckets, recent
latency samples, and cumulative histograms of token latencies, of finished samples' phases and
lengths and of step sizes, with finishes counted by reason (what a Prometheus scrape reads).

Written by the engine thread, read by any other; every read returns frozen copies.
"""
from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

from engine.core.block_manager import BlockStats
from engine.serving.block_map import KvWaste
from engine.core.metrics import MetricsSnapshot

# Bucket bounds are vLLM's (vllm/v1/metrics/loggers.py), so that dashboards made for vLLM read ours.
TTFT_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                                   5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TOKEN_LATENCY_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                                            2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # seconds between tokens
REQUEST_LATENCY_BUCKETS: tuple[float, ...] = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                                              50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKEN_BUCKETS: tuple[float, ...] = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
N_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20)


def one_two_five(limit: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `limit`: vLLM's bounds for token counts (limit: max_model_len)."""
    bounds, scale = [], 1
    while True:
        for m in (1, 2, 5):
            if m * scale > limit:
                return tuple(bounds)
            bounds.append(m * scale)
        scale *= 10


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
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # one per bound, then the +Inf bucket
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def view(self) -> HistogramView:
        running, cumulative = 0, []
        for c in self.counts:
            running += c
            cumulative.append(running)
        return HistogramView(self.bounds, tuple(cumulative), self.total)


def request_histograms(max_model_len: int) -> dict[str, Histogram]:
    """The histograms fed by finished samples (engine.metrics.FinishedSample) and by steps."""
    lengths = one_two_five(max_model_len)
    hists = {name: Histogram(REQUEST_LATENCY_BUCKETS) for name in ("e2e", "queue", "prefill", "decode", "inference")}
    hists |= {name: Histogram(lengths) for name in ("prompt_tokens", "generation_tokens", "max_tokens",
                                                    "max_generation_tokens")}
    hists |= {"tpot": Histogram(TOKEN_LATENCY_BUCKETS), "n": Histogram(N_BUCKETS),
              "iteration_tokens": Histogram(ITERATION_TOKEN_BUCKETS)}  # tokens fed to a step's forward pass
    return hists


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
    request_hists: dict[str, HistogramView] = field(default_factory=dict)  # see request_histograms
    finished: dict[str, int] = field(default_factory=dict)  # samples finished, by finish reason


def _fold(point: TimelinePoint | None, t: float, snap: MetricsSnapshot, waste: KvWaste) -> TimelinePoint:
    base = point or TimelinePoint(t, 0, 0.0, 0, 0, 0, 0, 0, 0, snap.blocks, waste)
    return TimelinePoint(
        base.t, base.steps + 1, base.busy + snap.step_time, base.prefill_tokens + snap.num_prefill_tokens,
        base.decode_tokens + snap.num_decode_tokens, max(base.max_batch_size, snap.batch_size),
        base.preempted + snap.num_preempted, snap.num_running, snap.num_waiting, snap.blocks, waste)


class MetricsHistory:
    """Thread-safe: `record` from the engine thread, `view` and `busy_fraction` from anywhere."""

    def __init__(self, bucket_s: float = 0.5, window_s: float = 180.0, max_samples: int = 4000,
                 max_model_len: int = 8192) -> None:
        self.bucket_s = bucket_s
        self._lock = threading.Lock()
        self._points: deque[TimelinePoint] = deque(maxlen=max(1, int(window_s / bucket_s)))
        self._ttft: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._itl: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._ttft_hist, self._itl_hist = Histogram(TTFT_BUCKETS), Histogram(TOKEN_LATENCY_BUCKETS)
        self._request_hists = request_histograms(max_model_len)
        self._finished = {"stop": 0, "length": 0, "abort": 0, "error": 0}
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
            if snap.num_prefill_tokens + snap.num_decode_tokens:
                self._request_hists["iteration_tokens"].observe(snap.num_prefill_tokens + snap.num_decode_tokens)
            for done in snap.finished:
                self._finished[done.finish_reason] = self._finished.get(done.finish_reason, 0) + 1
                for name, value in done.observations():
                    self._request_hists[name].observe(value)
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
                               self._latest, self._latest_waste,
                               {name: h.view() for name, h in self._request_hists.items()}, dict(self._finished))

    @property
    def latest(self) -> MetricsSnapshot | None:
        return self._latest

    def busy_fraction(self, window_s: float = 2.0, now: float | None = None) -> float:
        """Share of the last `window_s` seconds the engine spent inside steps."""
        now = time.perf_counter() if now is None else now
        with self._lock:
            busy = sum(p.busy for p in self._points if p.t >= now - window_s)
        return min(1.0, busy / window_s)
