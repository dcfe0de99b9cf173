"""The event feed over HTTP: a live stream for dashboards, and a trace file for Perfetto.

GET /api/feed        server-sent events: first `snapshot` (the pool and the live sequences now,
                     with the feed index it was taken at), then `steps` events, each a JSON list of
                     the step records since the last one (coalesced every `interval` seconds, so a
                     GPU's hundred steps a second arrive as ten messages), and a `gap` event if a
                     slow reader fell behind the ring. Keep-alive comments while nothing happens.
GET /api/feed/trace  the recent window as trace-event JSON (open it in ui.perfetto.dev).
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from engine.block_map import BlockMapSnapshot
from engine.engine_thread import EngineThread
from engine.event_feed import SCHEMA_VERSION
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


async def feed_events(engine: EngineThread, interval: float = 0.1, keep_alive: float = 10.0) -> AsyncIterator[str]:
    """The SSE stream of one reader; ends when the engine stops."""
    feed = engine.feed
    bm = engine.block_map
    yield _event("snapshot", snapshot_json(bm))
    cursor, quiet = bm.feed_index, 0.0
    while engine.alive:
        first, records = feed.since(cursor)
        if first > cursor:
            yield _event("gap", {"missed": first - cursor})
        if records:
            cursor = first + len(records)
            yield _event("steps", [r.to_json() for r in records], cursor - 1)
            quiet = 0.0
        elif quiet >= keep_alive:
            yield ": keep-alive\n\n"
            quiet = 0.0
        await asyncio.sleep(interval)
        quiet += interval


def build_feed_router(engine: EngineThread) -> APIRouter:
    router = APIRouter()

    @router.get("/api/feed")
    async def feed() -> Any:
        if engine.feed is None:
            return JSONResponse({"error": {"message": "this engine records no event feed", "type": "not_found_error",
                                           "param": None, "code": None}}, 404)
        return StreamingResponse(feed_events(engine), media_type="text/event-stream", headers=SSE_HEADERS)

    @router.get("/api/feed/trace")
    def trace() -> Any:  # a plain def: FastAPI runs it in a worker thread, off the event loop
        records = engine.feed.since(0)[1] if engine.feed is not None else []
        return JSONResponse(trace_events(records),
                            headers={"Content-Disposition": 'attachment; filename="pagedchat-trace.json"'})

    return router
