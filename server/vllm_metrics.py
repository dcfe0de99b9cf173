"""What a vLLM-compatible server's Prometheus `/metrics` says, read back: the remote mode's only view
of a remote engine's load (server.remote_fleet).

`parse_scrape` turns the exposition text into a `Scrape`: each sample name's value summed over its
label sets (a deployment's engines and models), histograms as cumulative buckets. `derive` turns
a window of scrapes into one `ReplicaPoint`: the gauges now, rates and hit rates over the window,
latency quantiles from the histograms' bucket deltas (as Prometheus' `histogram_quantile` reads
them: linear within a bucket).

vLLM renamed some families over time; each quantity is read from the first name present:
`kv_cache_usage_perc` (v0.10 on) or `gpu_cache_usage_perc`; `prefix_cache_{queries,hits}_total`
or `gpu_prefix_cache_{queries,hits}_total`; `inter_token_latency_seconds` (v0.11 on) or
`time_per_output_token_seconds`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from prometheus_client.parser import text_string_to_metric_families

RUNNING = ("vllm:num_requests_running",)
WAITING = ("vllm:num_requests_waiting",)
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
PREEMPTIONS = ("vllm:num_preemptions_total",)
PROMPT_TOKENS = ("vllm:prompt_tokens_total",)
GENERATION_TOKENS = ("vllm:generation_tokens_total",)
FINISHED = ("vllm:request_success_total",)
TTFT = ("vllm:time_to_first_token_seconds",)
ITL = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
E2E = ("vllm:e2e_request_latency_seconds",)
# gauges that are shares of one engine's pool: averaged over engines, never summed
_MEANS = frozenset(KV_USAGE)


@dataclass(frozen=True)
class Histogram:
    bounds: tuple[float, ...]  # upper bounds, ascending, +inf last
    cumulative: tuple[float, ...]  # observations <= each bound
    total: float  # the sum of the observations

    @property
    def count(self) -> float:
        return self.cumulative[-1] if self.cumulative else 0.0

    def minus(self, older: "Histogram | None") -> "Histogram":
        """The observations since `older` (the same bounds), or all when there is none (or a restart
        reset the counts)."""
        if older is None or older.bounds != self.bounds or older.count > self.count:
            return self
        return Histogram(self.bounds, tuple(a - b for a, b in zip(self.cumulative, older.cumulative)),
                         self.total - older.total)

    def quantile(self, q: float) -> float | None:
        """Prometheus' estimate: linear within the bucket holding rank q·count; None when empty; the
        largest finite bound when the rank falls in the +Inf bucket."""
        if self.count <= 0:
            return None
        rank, below, lower = q * self.count, 0.0, 0.0
        for bound, cum in zip(self.bounds, self.cumulative):
            if cum >= rank:
                if math.isinf(bound):
                    return lower
                inside = cum - below
                return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
            below, lower = cum, bound
        return lower

    def mean(self) -> float | None:
        return self.total / self.count if self.count > 0 else None


@dataclass(frozen=True)
class Scrape:
    t: float  # when it was read (Unix seconds, this machine's clock)
    values: dict[str, float] = field(default_factory=dict)  # sample name -> summed value
    histograms: dict[str, Histogram] = field(default_factory=dict)  # family name -> summed buckets

    def value(self, names: Sequence[str]) -> float | None:
        return next((self.values[n] for n in names if n in self.values), None)

    def histogram(self, names: Sequence[str]) -> Histogram | None:
        return next((self.histograms[n] for n in names if n in self.histograms), None)

    @property
    def has_vllm(self) -> bool:
        return any(n.startswith("vllm:") for n in self.values) or any(n.startswith("vllm:") for n in self.histograms)


def parse_scrape(text: str, t: float) -> Scrape:
    """The exposition text's samples, summed over label sets (averaged for pool shares); a
    malformed text raises ValueError."""
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples
               if not s.name.endswith("_created")]
    # a histogram is told by its buckets (whatever TYPE line there is, or none)
    bases = {s.name[:-7] for s in samples if s.name.endswith("_bucket") and "le" in s.labels}
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    buckets: dict[str, dict[float, float]] = {}
    totals: dict[str, float] = {}
    for s in samples:
        if s.name.endswith("_bucket") and s.name[:-7] in bases:
            per = buckets.setdefault(s.name[:-7], {})
            bound = float(s.labels["le"])
            per[bound] = per.get(bound, 0.0) + s.value
        elif s.name.endswith("_sum") and s.name[:-4] in bases:
            totals[s.name[:-4]] = totals.get(s.name[:-4], 0.0) + s.value
        elif s.name.endswith("_count") and s.name[:-6] in bases or not math.isfinite(s.value):
            continue
        else:
            sums[s.name] = sums.get(s.name, 0.0) + s.value
            counts[s.name] = counts.get(s.name, 0) + 1
    values = {n: v / counts[n] if n in _MEANS else v for n, v in sums.items()}
    histograms = {}
    for name, per in buckets.items():
        bounds = tuple(sorted(per))
        histograms[name] = Histogram(bounds, tuple(per[b] for b in bounds), totals.get(name, 0.0))
    return Scrape(t, values, histograms)


@dataclass(frozen=True)
class ReplicaPoint:
    """One replica at one moment; None: not exported (or nothing observed in the window)."""

    t: float
    running: float | None
    waiting: float | None
    kv_usage: float | None  # 0..1
    prompt_tps: float | None  # prompt tokens a second, over the rate window
    output_tps: float | None  # generated tokens a second
    hit_rate: float | None  # prefix-cache hits / queries (tokens) over the latency window
    preemptions: float | None  # over the preemption window
    finished: float | None  # requests finished since the server started
    ttft_p50: float | None  # seconds, over the latency window
    ttft_p95: float | None
    itl_p50: float | None
    e2e_p50: float | None

    def to_json(self) -> dict[str, float | None]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _at_or_before(scrapes: Sequence[Scrape], t: float) -> Scrape | None:
    """The newest scrape taken at or before `t`, else the oldest (a window not yet full)."""
    older = [s for s in scrapes if s.t <= t]
    return older[-1] if older else (scrapes[0] if scrapes else None)


def _delta(now: Scrape, then: Scrape | None, names: Sequence[str]) -> float | None:
    v = now.value(names)
    if v is None or then is None or then is now:
        return None
    w = then.value(names)
    return v - w if w is not None and w <= v else v  # a counter that went back: the server restarted


def derive(scrapes: Sequence[Scrape], rate_s: float = 5.0, latency_s: float = 30.0,
           preempt_s: float = 60.0) -> ReplicaPoint:
    """The point of the newest scrape in `scrapes` (oldest first), with rates over `rate_s`,
    latency quantiles and hit rate over `latency_s` and preemptions over `preempt_s`."""
    now = scrapes[-1]
    rate_from = _at_or_before(scrapes[:-1], now.t - rate_s)
    lat_from = _at_or_before(scrapes[:-1], now.t - latency_s)
    pre_from = _at_or_before(scrapes[:-1], now.t - preempt_s)

    def rate(names: Sequence[str]) -> float | None:
        d = _delta(now, rate_from, names)
        return d / (now.t - rate_from.t) if d is not None and rate_from is not None and now.t > rate_from.t else None

    def window(names: Sequence[str]) -> Histogram | None:
        h = now.histogram(names)
        return h.minus(lat_from.histogram(names) if lat_from is not None and lat_from is not now else None) if h else None

    queries, hits = _delta(now, lat_from, PREFIX_QUERIES), _delta(now, lat_from, PREFIX_HITS)
    ttft, itl, e2e = window(TTFT), window(ITL), window(E2E)
    q = lambda h, p: h.quantile(p) if h is not None else None  # noqa: E731
    return ReplicaPoint(
        t=now.t, running=now.value(RUNNING), waiting=now.value(WAITING), kv_usage=now.value(KV_USAGE),
        prompt_tps=rate(PROMPT_TOKENS), output_tps=rate(GENERATION_TOKENS),
        hit_rate=hits / queries if queries and hits is not None else None,
        preemptions=_delta(now, pre_from, PREEMPTIONS), finished=now.value(FINISHED),
        ttft_p50=q(ttft, 0.5), ttft_p95=q(ttft, 0.95), itl_p50=q(itl, 0.5), e2e_p50=q(e2e, 0.5))


def merge_scrapes(scrapes: Sequence[Scrape], t: float) -> Scrape:
    """Several replicas' scrapes as one deployment's: values summed (pool shares averaged),
    histograms with the same bounds summed bucket by bucket."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    hists: dict[str, Histogram] = {}
    for s in scrapes:
        for name, v in s.values.items():
            sums[name] = sums.get(name, 0.0) + v
            counts[name] = counts.get(name, 0) + 1
        for name, h in s.histograms.items():
            seen = hists.get(name)
            if seen is None:
                hists[name] = h
            elif seen.bounds == h.bounds:
                hists[name] = Histogram(h.bounds, tuple(a + b for a, b in zip(seen.cumulative, h.cumulative)),
                                        seen.total + h.total)
    values = {n: v / counts[n] if n in _MEANS else v for n, v in sums.items()}
    return Scrape(t, values, hists)


def derive_total(windows: Sequence[Sequence[Scrape]], rate_s: float = 5.0, latency_s: float = 30.0,
                 preempt_s: float = 60.0) -> ReplicaPoint | None:
    """One point for several replicas (each one's recent scrapes, oldest first): their scrapes at
    the same moments (now and the start of each window) merged, then `derive`d."""
    windows = [w for w in windows if len(w) >= 2]  # one scrape has no window yet: no rate of its own
    if not windows:
        return None
    now = max(w[-1].t for w in windows)
    merged = []
    for m in sorted({now - preempt_s, now - latency_s, now - rate_s}):
        # each replica's own baseline (as `derive` takes it: the oldest when the window is not yet
        # full), so that the totals lie between the replicas' figures
        olds = [_at_or_before(w[:-1], w[-1].t - (now - m)) for w in windows]
        merged.append(merge_scrapes([o for o in olds if o is not None], m))
    merged.append(merge_scrapes([w[-1] for w in windows], now))
    return derive(merged, rate_s, latency_s, preempt_s)
