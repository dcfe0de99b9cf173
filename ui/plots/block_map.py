"""The block map: every physical KV block as one cell of a grid, coloured by the request holding it.

A GPU pool holds tens of thousands of blocks: past MAX_CELLS, each cell stands for a run of
consecutive blocks, coloured by the request holding most of them and shaded by how many are used,
so the figure a browser receives every second stays small whatever the pool's size.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping

import plotly.graph_objects as go

from engine.block_map import BlockMapSnapshot
from ui.plots.common import (CACHED_FREE_COLOR, FREE_COLOR, SHARED_LINE_COLOR, empty_note, layout,
                             request_color)

MAX_LEGEND_REQUESTS = 12
MAX_CELLS = 2048
SHADES = 4  # a grouped cell's used share is shown in quarters


@dataclass(frozen=True)
class BlockCell:
    block_id: int  # the cell's first block
    color: str
    request_id: str | None  # the first holder's request; None for a free block
    shared: bool  # held by more than one sequence (prefix sharing or forked samples)
    cached: bool  # registered in the prefix cache
    hover: str
    count: int = 1  # consecutive blocks the cell stands for


def blocks_per_cell(num_blocks: int) -> int:
    return max(1, math.ceil(num_blocks / MAX_CELLS))


def grid_columns(num_blocks: int) -> int:
    """Wide rather than square: the map spans the page width in a few rows."""
    return 32 if num_blocks <= 256 else 64 if num_blocks <= 2048 else 128


def _cell(bm: BlockMapSnapshot, block_id: int, color_of: Callable[[str], str]) -> BlockCell:
    holders, cached = bm.owners[block_id], bm.cached[block_id]
    if not holders:
        color = CACHED_FREE_COLOR if cached else FREE_COLOR
        state = "free, cached prefix (reusable)" if cached else "free"
        return BlockCell(block_id, color, None, False, cached, f"block {block_id}<br>{state}")
    lines = [f"block {block_id} · {bm.fill[block_id]}/{bm.block_size} slots filled"]
    request_id = None
    for seq_id in holders:
        seq = bm.seq(seq_id)
        name = seq.request_id if seq else f"seq {seq_id}"
        request_id = request_id or name
        tokens = f"{seq.num_tokens} tokens" if seq else "?"
        lines.append(f"{name} (sample {seq.sample_index if seq else '?'}): {tokens}")
    if len(holders) > 1:
        lines.append(f"shared by {len(holders)} sequences")
    if cached:
        lines.append("in the prefix cache")
    return BlockCell(block_id, color_of(request_id), request_id, len(holders) > 1, cached, "<br>".join(lines))


def _mix(color: str, background: str, share: float) -> str:
    """`color` over `background` at opacity `share`, as #rrggbb."""
    a, b = (tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in (color, background))
    return "#" + "".join(f"{round(x * share + y * (1 - share)):02x}" for x, y in zip(a, b))


def _group_cell(bm: BlockMapSnapshot, lo: int, hi: int, color_of: Callable[[str], str]) -> BlockCell:
    holders = [bm.owners[i] for i in range(lo, hi)]
    used = [h for h in holders if h]
    cached = sum(bm.cached[lo:hi])
    shared = sum(len(h) > 1 for h in used)
    names = {s.seq_id: s.request_id for s in bm.seqs}
    by_request = Counter(names.get(h[0], f"seq {h[0]}") for h in used)
    lines = [f"blocks {lo}-{hi - 1} · {len(used)}/{hi - lo} used · {sum(bm.fill[lo:hi])}/{(hi - lo) * bm.block_size}"
             " slots filled"]
    lines += [f"{name}: {n} blocks" for name, n in by_request.most_common(3)]
    if len(by_request) > 3:
        lines.append(f"and {len(by_request) - 3} more requests")
    lines.append(f"{shared} shared · {cached} in the prefix cache")
    if not used:
        color = CACHED_FREE_COLOR if 2 * cached >= hi - lo else FREE_COLOR
        return BlockCell(lo, color, None, False, cached > 0, "<br>".join(lines), hi - lo)
    request_id = by_request.most_common(1)[0][0]
    shade = math.ceil(SHADES * len(used) / (hi - lo)) / SHADES
    return BlockCell(lo, _mix(color_of(request_id), FREE_COLOR, shade), request_id, shared > 0, cached > 0,
                     "<br>".join(lines), hi - lo)


def _color_lookup(colors: Mapping[str, str] | None) -> Callable[[str], str]:
    return lambda request_id: (colors or {}).get(request_id) or request_color(request_id)


def block_cells(bm: BlockMapSnapshot, colors: Mapping[str, str] | None = None) -> list[BlockCell]:
    """One cell per physical block in block-id order; past MAX_CELLS blocks, one per run of
    blocks_per_cell consecutive blocks. `colors`: each live request's colour (ui.request_colors);
    a request not in it gets one from its id."""
    color_of = _color_lookup(colors)
    group = blocks_per_cell(bm.num_blocks)
    if group == 1:
        return [_cell(bm, i, color_of) for i in range(bm.num_blocks)]
    return [_group_cell(bm, lo, min(lo + group, bm.num_blocks), color_of) for lo in range(0, bm.num_blocks, group)]


def _heatmap(cells: list[BlockCell], cols: int) -> go.Heatmap:
    palette = sorted({c.color for c in cells})
    index = {color: i for i, color in enumerate(palette)}
    rows = math.ceil(len(cells) / cols)
    z: list[list[float | None]] = [[None] * cols for _ in range(rows)]
    text: list[list[str]] = [[""] * cols for _ in range(rows)]
    for i, c in enumerate(cells):
        r, k = divmod(i, cols)
        z[r][k], text[r][k] = index[c.color] + 0.5, c.hover
    k = len(palette)
    scale = [[pos, color] for i, color in enumerate(palette) for pos in (i / k, (i + 1) / k)]
    return go.Heatmap(z=z, text=text, hovertemplate="%{text}<extra></extra>", colorscale=scale, zmin=0, zmax=k,
                      showscale=False, xgap=2, ygap=2, name="blocks")


def _legend(fig: go.Figure, cells: list[BlockCell], color_of: Callable[[str], str]) -> None:
    entries = [("free", FREE_COLOR, "square"), ("cached, free", CACHED_FREE_COLOR, "square"),
               ("shared (refcount > 1)", "white", "square-open")]
    requests = list(dict.fromkeys(c.request_id for c in cells if c.request_id))
    entries += [(r, color_of(r), "square") for r in requests[:MAX_LEGEND_REQUESTS]]
    for name, color, symbol in entries:
        line = {"color": SHARED_LINE_COLOR, "width": 2} if symbol == "square-open" else {"width": 0}
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, showlegend=True,
                                 marker={"color": color if symbol == "square" else SHARED_LINE_COLOR,
                                         "symbol": symbol, "size": 12, "line": line}))


def block_map_figure(bm: BlockMapSnapshot, colors: Mapping[str, str] | None = None) -> go.Figure:
    """Cells left to right, top to bottom from block 0; shared blocks outlined in black. `colors`:
    see block_cells."""
    cells = block_cells(bm, colors)
    cols = grid_columns(len(cells))
    fig = go.Figure(_heatmap(cells, cols))
    shared = [i for i, c in enumerate(cells) if c.shared]
    fig.add_trace(go.Scatter(
        x=[i % cols for i in shared], y=[i // cols for i in shared], mode="markers",
        name="shared", showlegend=False, hoverinfo="skip",
        marker={"symbol": "square-open", "size": 12, "color": SHARED_LINE_COLOR, "line": {"width": 2}}))
    _legend(fig, cells, _color_lookup(colors))
    s = bm.stats
    title = (f"KV block map: {s.used} used ({s.shared} shared) · {s.cached_free} cached-free · {s.free} free"
             f" of {s.total} blocks × {bm.block_size} tokens")
    group = blocks_per_cell(bm.num_blocks)
    if group > 1:
        title += f" · a cell is {group} blocks, shaded by the share used"
    rows = math.ceil(len(cells) / cols)
    layout(fig, title, height=min(900, max(200, 120 + 22 * rows)))
    fig.update_xaxes(visible=False, range=[-0.5, cols - 0.5])
    fig.update_yaxes(visible=False, range=[rows - 0.5, -0.5])
    if not cells:
        empty_note(fig, "no KV blocks")
    return fig
