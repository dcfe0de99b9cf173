"""The live view: a gr.HTML whose script draws the dashboard in the browser from GET /api/feed.

The server sends no figures: the browser keeps the engine's state from the feed's snapshot and
step records (ui/live/feed_state.js), draws the block map and the charts on canvases
(ui/live/live_view.js, ui/live/charts.js) a few times a second, and holds the feed open only while
the view is on screen. The script and style are served once, cached, from `ASSET_PATH`.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import gradio as gr
from fastapi import APIRouter, Response

from ui.request_colors import palette

LIVE_DIR = Path(__file__).parent / "live"
# in this order: each uses the ones before
SCRIPTS = ("feed_state.js", "charts.js", "dom.js", "concepts.js", "timeline.js", "wastes.js", "block_table.js", "kv_memory.js",
           "step_costs.js", "panels.js", "live_view.js", "fleet_view.js")
ASSET_PATH = "/live-view"


@lru_cache(maxsize=1)
def _bundle() -> tuple[str, str, str]:
    """(script, style, version): the files joined, and a hash for cache-busting URLs."""
    script = "\n".join((LIVE_DIR / name).read_text(encoding="utf-8") for name in SCRIPTS)
    style = (LIVE_DIR / "live_view.css").read_text(encoding="utf-8")
    return script, style, hashlib.sha256((script + style).encode()).hexdigest()[:12]


def live_view_router() -> APIRouter:
    """Serves the view's script and style (a day's browser cache; the URL changes with the files)."""
    router = APIRouter()
    script, style, _ = _bundle()
    cache = {"Cache-Control": "public, max-age=86400"}

    @router.get(f"{ASSET_PATH}/live.js", include_in_schema=False)
    def js() -> Response:
        return Response(script, media_type="text/javascript", headers=cache)

    @router.get(f"{ASSET_PATH}/live.css", include_in_schema=False)
    def css() -> Response:
        return Response(style, media_type="text/css", headers=cache)

    return router


def _head() -> str:
    _, _, version = _bundle()
    base = ASSET_PATH.lstrip("/")  # relative: works under a proxy's path prefix too
    return (f'<link rel="stylesheet" href="{base}/live.css?v={version}">'
            f'<script src="{base}/live.js?v={version}"></script>')


def fleet_view(presenter: bool = False, elem_id: str | None = None) -> gr.HTML:
    """The view over remote engines (server.fleet_api): replicas' health, load, latency and
    prefix-cache trees. `presenter`: large tiles and the essential columns only."""
    config = {"fleetUrl": "api/fleet", "treeUrl": "api/fleet/tree", "presenter": presenter}
    return gr.HTML("", head=_head(), elem_id=elem_id, elem_classes=["pc-live-host"], apply_default_css=False,
                   js_on_load=f"window.PagedChatFleet.mount(element, {json.dumps(config)});")


def live_view(presenter: bool = False, replay: str | None = None, elem_id: str | None = None) -> gr.HTML:
    """One live view. `presenter`: large headline tiles, the block map and throughput only;
    `replay`: the label of the recording the feed replays (a banner says so)."""
    config = {"feedUrl": "api/feed", "traceUrl": "api/feed/trace", "requestUrl": "api/request", "palette": list(palette()),
              "presenter": presenter, "replay": replay, "fps": 5}
    return gr.HTML("", head=_head(), elem_id=elem_id, elem_classes=["pc-live-host"], apply_default_css=False,
                   js_on_load=f"window.PagedChatLive.mount(element, {json.dumps(config)});")
