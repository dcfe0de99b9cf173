"""Utilization over time: GPU (NVML) or, on a CPU run, the process's CPU share, plus engine busy time."""
from __future__ import annotations

import plotly.graph_objects as go

from ui.plots.common import empty_note, layout, seconds_ago
from ui.utilization import UtilizationView


def utilization_figure(view: UtilizationView, window_s: float = 120.0) -> go.Figure:
    """Three lines in %: compute (GPU or CPU, as labelled), memory, and the engine's busy fraction."""
    samples = [s for s in view.samples if s.t >= view.now - window_s]
    x = [seconds_ago(s.t, view.now) for s in samples]
    fig = go.Figure()
    for name, values, color in (
        (view.compute_label, [s.compute_pct for s in samples], "#ea580c"),
        (view.memory_label, [s.memory_pct for s in samples], "#0891b2"),
        ("engine busy % (time inside steps)", [s.engine_busy_pct for s in samples], "#4f46e5"),
    ):
        fig.add_trace(go.Scatter(x=x, y=values, name=name, mode="lines", line={"color": color, "width": 2}))
    fig.update_yaxes(range=[0, 105], title_text="%")
    fig.update_xaxes(range=[-window_s, 0])
    title = "GPU utilization, NVML" if view.kind == "gpu" else "CPU utilization (a CPU run: no GPU)"
    if samples:
        last = samples[-1]
        title += f" · {last.memory_gib:.2f} GiB (x: seconds ago)"
    layout(fig, title, height=320)
    if not samples:
        empty_note(fig, "no samples yet")
    return fig
