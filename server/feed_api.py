"""The event feed over HTTP: a live stream for dashboards, and a trace file for Perfetto.

GET /api/feed        server-sent events: first `snapshot` (the pool and the live sequences now,
                     with the feed index it was taken at), then `steps` events, each a JSON list of
                     the step records since the last one (coalesced every `interval` seconds, so a
                     GPU's hundred steps a second arrive as ten messages), and a `gap` event if a
                     slow reader fell behind the ring; once a second a `device` event (the
                     device's utilization: NVML on a GPU, the process's CPU share on a CPU).
                     Keep-alive comments while nothing happens.
GET /api/feed/trace  the recent window as trace-event JSON (open it in ui.perfetto.dev).
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Protocol

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from engine.block_map import BlockMapSnapshot
from engine.engine_thread import EngineThread
from engine.event_feed import SCHEMA_VERSION, EventFeed
from server.device_monitor import DeviceMonitor
from server.openai_api import SSE_HEADERS
from server.trace_events import trace_events


def snapshot_json(bm: BlockMapSnapshot) -> dict[str, Any]:
    """The state a late joiner starts from: every block's holders, fill and cache flag, and the
    live sequences."""
    return {"schema": SCHEMA_VERSION, "feed_index": bm.feed_index, "block_size": bm.block_size,
            "num_blocks": bm.num_blocks, "owners": [list(o) for o in bm.owners], "fill": list(bm.fill),
            "cached": list(bm.cached),
            "sequences": [{"seq_id": s.seq_id, "request_id": s.request_id, "sample": s.sample_index,
                           "num_tokens": s.num_tokens, "num_prompt_tokens": s.num_prompt_tokens,
                           "running": s.running} for s in bm.seqs]}


def _event(kind: str, data: Any, index: int | None = None) -> str:
    head = f"event: {kind}\n" + (f"id: {index}\n" if index is not None else "")
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n"


class FeedSource(Protocol):
    """What the feed's endpoints read: the engine (EngineFeed) or a recording played back
    (server.replay.ReplaySource)."""

    @property
    def feed(self) -> EventFeed | None: ...

    @property
    def alive(self) -> bool: ...

    def snapshot(self) -> dict[str, Any]:
        """The state now (`snapshot_json`'s shape), with the feed index it was taken at."""
        ...

    def device(self) -> dict[str, Any] | None:
        """The device's utilization now (server.device_monitor), None when there is none to read."""
        ...


class EngineFeed:
    """The engine thread's feed and block map as a FeedSource."""

    def __init__(self, engine: EngineThread) -> None:
        self.engine = engine
        self._monitor: DeviceMonitor | None = None  # made when first watched

    @property
    def feed(self) -> EventFeed | None:
        return self.engine.feed

    @property
    def alive(self) -> bool:
        return self.engine.alive

    def snapshot(self) -> dict[str, Any]:
        return snapshot_json(self.engine.block_map)

    def device(self) -> dict[str, Any] | None:
        if self._monitor is None:
            self._monitor = DeviceMonitor(self.engine.info.device)
        return self._monitor.sample()


async def feed_events(source: FeedSource, interval: float = 0.1, keep_alive: float = 10.0) -> AsyncIterator[str]:
    """The SSE stream of one reader; ends when the source stops."""
    feed = source.feed
    assert feed is not None
    snapshot = source.snapshot()
    yield _event("snapshot", snapshot)
    cursor, quiet, device_at = snapshot["feed_index"], 0.0, 0.0
    while source.alive:
        if time.monotonic() - device_at >= 1.0:  # the hardware's view, once a second
            device_at = time.monotonic()
            device = await asyncio.to_thread(source.device)
            if device is not None:
                yield _event("device", device)
        first, records = feed.since(cursor)
        if first > cursor:
            yield _event("gap", {"missed": first - cursor})
            cursor = first
        if records:
            cursor = first + len(records)
            yield _event("steps", [r.to_json() for r in records], cursor - 1)
            quiet = 0.0
        elif quiet >= keep_alive:
            yield ": keep-alive\n\n"
            quiet = 0.0
        await asyncio.sleep(interval)
        quiet += interval


def build_feed_router(source: FeedSource) -> APIRouter:
    router = APIRouter()

    @router.get("/api/feed")
    async def feed() -> Any:
        if source.feed is None:
            return JSONResponse({"error": {"message": "this engine records no event feed", "type": "not_found_error",
                                           "param": None, "code": None}}, 404)
        return StreamingResponse(feed_events(source), media_type="text/event-stream", headers=SSE_HEADERS)

    @router.get("/api/feed/trace")
    def trace() -> Any:  # a plain def: FastAPI runs it in a worker thread, off the event loop
        records = source.feed.since(0)[1] if source.feed is not None else []
        return JSONResponse(trace_events(records),
                            headers={"Content-Disposition": 'attachment; filename="pagedchat-trace.json"'})

    return router
