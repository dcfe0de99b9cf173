"""KV memory over time: used / cached-free / free blocks, and the slots wasted, paged vs contiguous."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.metrics_history import HistoryView
from ui.plots.common import (CACHED_COLOR, CONTIGUOUS_COLOR, FREE_COLOR, PAGED_COLOR, USED_COLOR, bucket_grid,
                             empty_note, held, layout, seconds_ago)


def kv_memory_figure(view: HistoryView, window_s: float = 120.0) -> go.Figure:
    """Top: blocks by state (stacked). Bottom: % of reserved token slots that hold no token, for our
    paged pool and for a contiguous cache reserving each live sequence's max length up front."""
    points = [p for p in view.points if p.t >= view.now - window_s]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12, row_heights=[0.55, 0.45],
                        subplot_titles=("blocks", "reserved but empty slots (%)"))
    x = [seconds_ago(p.t, view.now) for p in points]
    for name, color, values in (
        ("used", USED_COLOR, [p.blocks.used for p in points]),
        ("cached, free", CACHED_COLOR, [p.blocks.cached_free for p in points]),
        ("free", FREE_COLOR, [p.blocks.free for p in points]),
    ):
        fig.add_trace(go.Scatter(x=x, y=values, name=name, stackgroup="blocks", mode="lines",
                                 line={"width": 0.5, "color": color}, fillcolor=color), row=1, col=1)
    grid = bucket_grid(view.points, view.now, view.bucket_s, window_s)
    gx = [seconds_ago(t, view.now) for t, _ in grid]
    for name, color, field in (("paged (ours)", PAGED_COLOR, "paged_fraction"),
                               ("contiguous, max length", CONTIGUOUS_COLOR, "contiguous_fraction")):
        values = [100 * getattr(p.waste, field) if p else None for p in held(grid)]  # steps, held between changes
        fig.add_trace(go.Scatter(x=gx, y=values, name=name, mode="lines",
                                 line={"color": color, "width": 2, "shape": "hv"}), row=2, col=1)
    fig.update_yaxes(range=[0, 100], row=2, col=1)
    fig.update_xaxes(range=[-window_s, 0])
    waste = view.latest_waste
    title = "KV memory (x: seconds ago)"
    if waste is not None and waste.contiguous_reserved:
        title += (f" · empty reserved slots: paged {100 * waste.paged_fraction:.1f}%"
                  f" vs contiguous {100 * waste.contiguous_fraction:.1f}%")
    layout(fig, title, height=420)
    if not points:
        empty_note(fig, "no engine steps yet")
    return fig
