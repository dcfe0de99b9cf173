"""Per-token latency (TTFT and inter-token histograms with p50 / p95) and throughput over time."""
from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.metrics_history import HistoryView
from ui.plots.common import DECODE_COLOR, PREFILL_COLOR, empty_note, layout, percentile, seconds_ago


@dataclass(frozen=True)
class LatencySummary:
    """Milliseconds over the recent window; NaN where nothing was measured."""

    ttft_p50: float
    ttft_p95: float
    itl_p50: float
    itl_p95: float
    num_ttft: int
    num_itl: int


def recent(samples: tuple[tuple[float, float], ...], now: float, window_s: float) -> list[float]:
    return [v for t, v in samples if t >= now - window_s]


def latency_summary(view: HistoryView, window_s: float = 60.0) -> LatencySummary:
    ttft = [1000 * v for v in recent(view.ttft, view.now, window_s)]
    itl = [1000 * v for v in recent(view.itl, view.now, window_s)]
    return LatencySummary(percentile(ttft, 50), percentile(ttft, 95), percentile(itl, 50), percentile(itl, 95),
                          len(ttft), len(itl))


def _histogram(fig: go.Figure, values: list[float], col: int, color: str, name: str) -> None:
    fig.add_trace(go.Histogram(x=values, name=name, marker_color=color, nbinsx=30, showlegend=False), row=1, col=col)
    for q, dash in ((50, "solid"), (95, "dash")):
        if values:
            fig.add_vline(x=percentile(values, q), line={"color": "#111827", "dash": dash, "width": 1.5},
                          row=1, col=col)


def latency_figure(view: HistoryView, window_s: float = 60.0) -> go.Figure:
    """Histograms of the last `window_s` seconds; solid line p50, dashed line p95."""
    s = latency_summary(view, window_s)
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        f"TTFT ms: p50 {s.ttft_p50:.0f} · p95 {s.ttft_p95:.0f}",
        f"inter-token ms: p50 {s.itl_p50:.0f} · p95 {s.itl_p95:.0f}"))
    _histogram(fig, [1000 * v for v in recent(view.ttft, view.now, window_s)], 1, PREFILL_COLOR, "TTFT")
    _histogram(fig, [1000 * v for v in recent(view.itl, view.now, window_s)], 2, DECODE_COLOR, "ITL")
    fig.update_yaxes(title_text="count", row=1, col=1)
    layout(fig, f"Per-token latency, last {window_s:.0f} s (solid p50, dashed p95)", height=320)
    if not s.num_ttft and not s.num_itl:
        empty_note(fig, "no tokens in this window")
    return fig


def throughput_figure(view: HistoryView, window_s: float = 120.0) -> go.Figure:
    """Top: prefill and decode tokens/s. Bottom: batch size, running and waiting sequences."""
    points = [p for p in view.points if p.t >= view.now - window_s]
    x = [seconds_ago(p.t, view.now) for p in points]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("tokens / s", "sequences"))
    per_s = 1.0 / view.bucket_s
    fig.add_trace(go.Scatter(x=x, y=[p.prefill_tokens * per_s for p in points], name="prefill tok/s",
                             line={"color": PREFILL_COLOR}), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=[p.decode_tokens * per_s for p in points], name="decode tok/s",
                             line={"color": DECODE_COLOR}), row=1, col=1)
    for name, values, color in (("max batch size", [p.max_batch_size for p in points], "#7c3aed"),
                                ("running", [p.num_running for p in points], "#16a34a"),
                                ("waiting", [p.num_waiting for p in points], "#dc2626")):
        fig.add_trace(go.Scatter(x=x, y=values, name=name, line={"color": color, "shape": "hv"}), row=2, col=1)
    fig.update_xaxes(range=[-window_s, 0])
    layout(fig, "Throughput and batch (x: seconds ago)", height=420)
    if not points:
        empty_note(fig, "no engine steps yet")
    return fig
