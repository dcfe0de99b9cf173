"""Per-token latency (TTFT and inter-token histograms with p50 / p95) and throughput over time."""
from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.metrics_history import HistoryView
from ui.plots.common import (DECODE_COLOR, PREFILL_COLOR, bucket_grid, empty_note, held, layout, ms_text,
                             percentile, seconds_ago)


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
        f"TTFT ms: p50 {ms_text(s.ttft_p50)} · p95 {ms_text(s.ttft_p95)}",
        f"inter-token latency (ITL; TPOT is its mean per request) ms: p50 {ms_text(s.itl_p50)} · "
        f"p95 {ms_text(s.itl_p95)}"))
    _histogram(fig, [1000 * v for v in recent(view.ttft, view.now, window_s)], 1, PREFILL_COLOR, "TTFT")
    _histogram(fig, [1000 * v for v in recent(view.itl, view.now, window_s)], 2, DECODE_COLOR, "ITL")
    fig.update_yaxes(title_text="count", row=1, col=1)
    layout(fig, f"Per-token latency, last {window_s:.0f} s (solid p50, dashed p95)", height=320)
    if not s.num_ttft and not s.num_itl:
        empty_note(fig, "no tokens in this window")
    return fig


def throughput_figure(view: HistoryView, window_s: float = 120.0) -> go.Figure:
    """Top: prefill and decode tokens/s, from the engine's token counts in each bucket (0 where no
    step ended). Bottom: batch size, running and waiting sequences, held as steps between changes."""
    grid = bucket_grid(view.points, view.now, view.bucket_s, window_s)
    points = [p for _, p in grid if p is not None]
    x = [seconds_ago(t, view.now) for t, _ in grid]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("tokens / s", "sequences"))
    per_s = 1.0 / view.bucket_s
    for name, field, color in (("prefill tok/s", "prefill_tokens", PREFILL_COLOR),
                               ("decode tok/s", "decode_tokens", DECODE_COLOR)):
        rates = [getattr(p, field) * per_s if p else 0.0 for _, p in grid]
        fig.add_trace(go.Scatter(x=x, y=rates, name=name, line={"color": color, "shape": "hv"}), row=1, col=1)
    states = held(grid)
    for name, field, color in (("max batch size", "max_batch_size", "#7c3aed"), ("running", "num_running", "#16a34a"),
                               ("waiting", "num_waiting", "#dc2626")):
        values = [getattr(p, field) if p else None for p in states]
        fig.add_trace(go.Scatter(x=x, y=values, name=name, line={"color": color, "shape": "hv"}), row=2, col=1)
    fig.update_xaxes(range=[-window_s, 0])
    layout(fig, "Throughput and batch (x: seconds ago)", height=420)
    if not points:
        empty_note(fig, "no engine steps yet")
    return fig
