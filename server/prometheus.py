"""What `/metrics` serves: the engine's own counters and histograms, through prometheus_client.

A `Collector` reads the engine's metrics history and block map at each scrape; nothing is counted
twice. It yields vLLM's families (the `vllm:` prefix, labels `model_name` and `engine`, vLLM's names,
types and bucket bounds, as vllm/v1/metrics/loggers.py has them), which vLLM's Grafana dashboard
reads, and PagedChat's own (`pagedchat_`: engine up, KV blocks by state, waste, ...).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            InfoMetricFamily, Metric)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from engine.serving.block_map import BlockMapSnapshot, kv_waste
from engine.serving.engine_info import EngineInfo
from engine.serving.metrics_history import HistogramView, HistoryView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENGINE_INDEX = "0"  # vLLM labels each engine core; this server has one

# vLLM's family for each histogram of engine.serving.metrics_history.request_histograms
VLLM_HISTOGRAMS = {
    "e2e": ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds."),
    "queue": ("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request."),
    "inference": ("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request."),
    "prefill": ("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request."),
    "decode": ("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request."),
    "tpot": ("vllm:request_time_per_output_token_seconds", "Histogram of time_per_output_token_seconds per request."),
    "prompt_tokens": ("vllm:request_prompt_tokens", "Number of prefill tokens processed."),
    "generation_tokens": ("vllm:request_generation_tokens", "Number of generation tokens processed."),
    "max_generation_tokens": ("vllm:request_max_num_generation_tokens",
                              "Histogram of maximum number of requested generation tokens."),
    "n": ("vllm:request_params_n", "Histogram of the n request parameter."),
    "max_tokens": ("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter."),
    "iteration_tokens": ("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step."),
}


def _histogram(name: str, doc: str, hist: HistogramView, labels: dict[str, str]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    buckets = [(floatToGoString(b), c) for b, c in zip(hist.bounds, hist.cumulative)] + [("+Inf", hist.count)]
    family.add_metric(list(labels.values()), buckets, hist.total)
    return family


def _one(kind: type, name: str, doc: str, value: float, labels: dict[str, str]) -> Metric:
    family = kind(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def vllm_families(view: HistoryView, block_map: BlockMapSnapshot, info: EngineInfo,
                  model_name: str) -> Iterator[Metric]:
    """vLLM's families, each with labels model_name and engine."""
    labels = {"model_name": model_name, "engine": ENGINE_INDEX}
    snap, point = view.latest, view.points[-1] if view.points else None
    stats = block_map.stats
    yield _one(GaugeMetricFamily, "vllm:num_requests_running", "Number of requests in model execution batches.",
               point.num_running if point else 0, labels)
    yield _one(GaugeMetricFamily, "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
               point.num_waiting if point else 0, labels)
    # against the usable pool (a memory-pressure demo's cap, else the whole pool); the second name is
    # the one before vLLM 0.9, which vLLM's Grafana dashboard still reads
    usage = stats.used / stats.cap
    yield _one(GaugeMetricFamily, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage,
               labels)
    yield _one(GaugeMetricFamily, "vllm:gpu_cache_usage_perc",
               "GPU KV-cache usage. 1 means 100 percent usage. DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
               usage, labels)
    counters = {
        "vllm:prefix_cache_queries": ("Prefix cache queries, in terms of number of queried tokens.",
                                      snap.total_queried_tokens if snap else 0),
        "vllm:prefix_cache_hits": ("Prefix cache hits, in terms of number of cached tokens.",
                                   snap.total_cached_tokens if snap else 0),
        "vllm:num_preemptions": ("Cumulative number of preemption from the engine.",
                                 snap.total_preemptions if snap else 0),
        # computed or found in the prefix cache (a prompt recomputed after a preemption counts again)
        "vllm:prompt_tokens": ("Number of prefill tokens processed.",
                               snap.total_prompt_tokens + snap.total_cached_tokens if snap else 0),
        "vllm:generation_tokens": ("Number of generation tokens processed.",
                                   snap.total_generated_tokens if snap else 0),
    }
    for name, (doc, value) in counters.items():
        yield _one(CounterMetricFamily, name, doc, value, labels)
    success = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                  labels=[*labels, "finished_reason"])
    for reason, count in view.finished.items():
        success.add_metric([*labels.values(), reason], count)
    yield success
    yield _histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                     view.ttft_hist, labels)
    yield _histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                     view.itl_hist, labels)
    # vLLM V1 observed every token's latency under this name before inter_token_latency (the dashboard reads it)
    yield _histogram("vllm:time_per_output_token_seconds",
                     "Histogram of time per output token in seconds. "
                     "DEPRECATED: Use vllm:inter_token_latency_seconds instead.", view.itl_hist, labels)
    for key, (name, doc) in VLLM_HISTOGRAMS.items():
        yield _histogram(name, doc, view.request_hists[key], labels)
    config = InfoMetricFamily("vllm:cache_config", "Information of the LLMEngine CacheConfig")
    # vLLM's labels are its CacheConfig's fields and engine; model_name is ours, as on every other family
    config.add_metric([], {"block_size": str(info.block_size), "cache_dtype": info.dtype,
                           "enable_prefix_caching": str(info.prefix_caching), "num_gpu_blocks": str(info.num_blocks),
                           **labels})
    yield config


def pagedchat_families(view: HistoryView, block_map: BlockMapSnapshot, alive: bool) -> Iterator[Metric]:
    """PagedChat's own families, unlabelled unless a label says which part."""
    stats, snap = block_map.stats, view.latest
    waste = kv_waste(stats, block_map.seqs)
    running = sum(1 for s in block_map.seqs if s.running)
    yield _one(GaugeMetricFamily, "pagedchat_engine_up", "1 while the engine thread runs.", int(alive), {})
    yield _histogram("pagedchat_time_to_first_token_seconds", "Time from arrival to the first token.",
                     view.ttft_hist, {})
    yield _histogram("pagedchat_inter_token_latency_seconds", "Time between two tokens of a sequence.",
                     view.itl_hist, {})
    yield _one(GaugeMetricFamily, "pagedchat_num_requests_running", "Sequences holding KV blocks.", running, {})
    yield _one(GaugeMetricFamily, "pagedchat_num_requests_waiting", "Sequences queued for admission.",
               len(block_map.seqs) - running, {})
    yield _one(GaugeMetricFamily, "pagedchat_kv_cache_usage_ratio", "Share of the usable KV blocks in use.",
               stats.used / stats.cap, {})
    yield _one(GaugeMetricFamily, "pagedchat_kv_cache_usable_blocks", "KV blocks the scheduler may hand out.",
               stats.cap, {})
    blocks = GaugeMetricFamily("pagedchat_kv_cache_blocks", "KV blocks by state.", labels=["state"])
    for state in ("used", "free", "cached_free", "shared"):
        blocks.add_metric([state], getattr(stats, state))
    yield blocks
    wasted = GaugeMetricFamily("pagedchat_kv_cache_waste_ratio", "Reserved but empty token slots: this paged cache "
                               "vs a contiguous one reserving prompt + max_tokens.", labels=["layout"])
    wasted.add_metric(["paged"], waste.paged_fraction)
    wasted.add_metric(["contiguous"], waste.contiguous_fraction)
    yield wasted
    counters = {
        "pagedchat_generation_tokens_total": ("Tokens generated.", snap.total_generated_tokens if snap else 0),
        "pagedchat_prompt_tokens_total": ("Prompt tokens computed (prefix-cache hits excluded).",
                                          snap.total_prompt_tokens if snap else 0),
        "pagedchat_prefix_cache_hit_tokens_total": ("Prompt tokens served from the prefix cache.",
                                                    snap.total_cached_tokens if snap else 0),
        "pagedchat_preemptions_total": ("Sequences preempted to free KV blocks.",
                                        snap.total_preemptions if snap else 0),
        "pagedchat_request_samples_finished_total": ("Samples (sequences) that finished.",
                                                     snap.total_finished if snap else 0),
        "pagedchat_engine_steps_total": ("Engine steps run.", snap.step if snap else 0),
    }
    for name, (doc, value) in counters.items():
        yield _one(CounterMetricFamily, name, doc, value, {})


class EngineCollector(Collector):
    """Both sets of families, read from an EngineThread (typed loosely: anything with `history`,
    `block_map`, `info` and `alive`) at each scrape."""

    def __init__(self, engine: Any, model_name: str) -> None:
        self.engine, self.model_name = engine, model_name

    def collect(self) -> Iterator[Metric]:
        view, block_map = self.engine.history.view(), self.engine.block_map
        yield from vllm_families(view, block_map, self.engine.info, self.model_name)
        yield from pagedchat_families(view, block_map, self.engine.alive)


def metrics_registry(engine: Any, model_name: str) -> CollectorRegistry:
    """A registry of its own (never the global one: one process may serve several apps)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, model_name))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The text exposition format, version 0.0.4."""
    return generate_latest(registry)
