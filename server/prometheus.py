"""The engine's metrics in the Prometheus text exposition format (version 0.0.4), built by hand.

A pure function of a metrics history view and a block map: what `/metrics` serves.
"""
from __future__ import annotations

from engine.block_map import BlockMapSnapshot, kv_waste
from engine.metrics_history import HistogramView, HistoryView

PREFIX = "pagedchat"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def _family(name: str, kind: str, help_text: str, samples: list[tuple[str, dict[str, str], float]]) -> list[str]:
    lines = [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} {kind}"]
    for suffix, labels, value in samples:
        label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.append(f"{PREFIX}_{name}{suffix}{{{label_text}}} {_number(value)}" if label_text
                     else f"{PREFIX}_{name}{suffix} {_number(value)}")
    return lines


def _histogram(name: str, help_text: str, hist: HistogramView) -> list[str]:
    samples = [("_bucket", {"le": _number(b)}, c) for b, c in zip(hist.bounds, hist.cumulative)]
    samples.append(("_bucket", {"le": "+Inf"}, hist.count))
    samples += [("_sum", {}, hist.total), ("_count", {}, hist.count)]
    return _family(name, "histogram", help_text, samples)


def _gauge(name: str, help_text: str, value: float, labels: dict[str, str] | None = None) -> list[str]:
    return _family(name, "gauge", help_text, [("", labels or {}, value)])


def _counter(name: str, help_text: str, value: float) -> list[str]:
    return _family(name, "counter", help_text, [("", {}, value)])


def render_metrics(view: HistoryView, block_map: BlockMapSnapshot, alive: bool) -> str:
    """Latency histograms, KV usage, queue lengths and token counters, one family each."""
    stats = block_map.stats
    waste = kv_waste(stats, block_map.seqs)
    running = sum(1 for s in block_map.seqs if s.running)
    snap = view.latest
    totals = {
        "generation_tokens_total": ("Tokens generated.", snap.total_generated_tokens if snap else 0),
        "prompt_tokens_total": ("Prompt tokens computed (prefix-cache hits excluded).",
                                snap.total_prompt_tokens if snap else 0),
        "prefix_cache_hit_tokens_total": ("Prompt tokens served from the prefix cache.",
                                          snap.total_cached_tokens if snap else 0),
        "preemptions_total": ("Sequences preempted to free KV blocks.", snap.total_preemptions if snap else 0),
        "request_samples_finished_total": ("Samples (sequences) that finished.", snap.total_finished if snap else 0),
        "engine_steps_total": ("Engine steps run.", snap.step if snap else 0),
    }
    lines = _gauge("engine_up", "1 while the engine thread runs.", int(alive))
    lines += _histogram("time_to_first_token_seconds", "Time from arrival to the first token.", view.ttft_hist)
    lines += _histogram("inter_token_latency_seconds", "Time between two tokens of a sequence.", view.itl_hist)
    lines += _gauge("num_requests_running", "Sequences holding KV blocks.", running)
    lines += _gauge("num_requests_waiting", "Sequences queued for admission.", len(block_map.seqs) - running)
    # against the usable pool: the whole pool, or the cap a memory-pressure demo sets (as the dashboard)
    lines += _gauge("kv_cache_usage_ratio", "Share of the usable KV blocks in use.", stats.used / stats.cap)
    lines += _gauge("kv_cache_usable_blocks", "KV blocks the scheduler may hand out.", stats.cap)
    lines += _family("kv_cache_blocks", "gauge", "KV blocks by state.", [
        ("", {"state": "used"}, stats.used), ("", {"state": "free"}, stats.free),
        ("", {"state": "cached_free"}, stats.cached_free), ("", {"state": "shared"}, stats.shared)])
    lines += _family("kv_cache_waste_ratio", "gauge",
                     "Reserved but empty token slots: this paged cache vs a contiguous one reserving prompt + max_tokens.", [
                         ("", {"layout": "paged"}, waste.paged_fraction),
                         ("", {"layout": "contiguous"}, waste.contiguous_fraction)])
    for name, (help_text, value) in totals.items():
        lines += _counter(name, help_text, value)
    return "\n".join(lines) + "\n"
