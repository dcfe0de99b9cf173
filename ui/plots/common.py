"""What the plot builders share: colours, percentiles, the time axis, one layout."""
from __future__ import annotations

import math
import zlib
from typing import Any, Sequence

import plotly.graph_objects as go

# A request's colour depends on its id only, so it stays put from one refresh to the next.
REQUEST_PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#7f3c8d", "#11a579", "#3969ac", "#f2b701", "#e73f74", "#80ba5a", "#e68310", "#008695", "#cf1c90",
    "#f97b72", "#4b4b8f", "#2e91e5", "#e15f99", "#1ca71c", "#fb0d0d", "#da16ff", "#b68100", "#750d86",
    "#eb663b", "#511cfb", "#00a08b",
)
FREE_COLOR = "#e5e7eb"  # grey: never written, or evicted
CACHED_FREE_COLOR = "#bfdbfe"  # pale blue: free, but still holding a reusable prefix
SHARED_LINE_COLOR = "#111827"
USED_COLOR, CACHED_COLOR = "#2563eb", "#93c5fd"
PAGED_COLOR, CONTIGUOUS_COLOR = "#16a34a", "#dc2626"
PREFILL_COLOR, DECODE_COLOR = "#f59e0b", "#2563eb"


def request_color(request_id: str) -> str:
    return REQUEST_PALETTE[zlib.crc32(request_id.encode()) % len(REQUEST_PALETTE)]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def seconds_ago(t: float, now: float) -> float:
    return round(t - now, 3)


def bucket_grid(points: Sequence[Any], now: float, bucket_s: float, window_s: float) -> list[tuple[float, Any]]:
    """Every bucket of the window up to the last complete one, as (start, its point or None): a
    bucket in which no step ended is there too, so that a rate reads 0 there rather than being
    drawn straight across the gap. The bucket still filling is left out (its rate would read low)."""
    by_start = {round(p.t / bucket_s): p for p in points}
    last = math.floor(now / bucket_s) - 1  # the newest complete bucket
    first = max(last - int(window_s / bucket_s) + 1, min(by_start, default=last + 1))
    return [(k * bucket_s, by_start.get(k)) for k in range(first, last + 1)]


def held(grid: list[tuple[float, Any]]) -> list[Any]:
    """Each bucket's point, or the last one before it where no step ended: a state (blocks, queue
    lengths) holds until the next step changes it, idle or during a long step alike. Drawn as
    steps ("hv"), never as a slope from one value to a distant other."""
    out, last = [], None
    for _, point in grid:
        last = point or last
        out.append(last)
    return out


def ms_text(value: float) -> str:
    """Milliseconds for a title: a dash where nothing was measured, never 'nan'."""
    return "–" if math.isnan(value) else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def layout(fig: go.Figure, title: str, height: int = 320) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01, "font": {"size": 15}}, height=height,
                      margin={"l": 50, "r": 20, "t": 60, "b": 30}, template="plotly_white",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.12, "x": 0}, uirevision="keep")
    return fig


def empty_note(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font={"size": 14, "color": "#6b7280"})
    return fig
