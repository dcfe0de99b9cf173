"""The event feed over HTTP: a live stream for dashboards, and a trace file for Perfetto.

GET /api/feed        server-sent events: first `snapshot` (the pool and the live sequences now,
                     with the feed index it was taken at), then `steps` events, each a JSON list of
                     the step records since the last one (coalesced every `interval` seconds, so a
                     GPU's hundred steps a second arrive as ten messages), and a `gap` event if a
                     slow reader fell behind the ring; once a second a `device` event (the
                     device's utilization: NVML on a GPU, the process's CPU share on a CPU).
                     Keep-alive comments while nothing happens.
GET /api/feed/trace  the recent window as trace-event JSON (open it in ui.perfetto.dev).
GET /api/request/ID  one live request's block tables: per sample its physical blocks in order, each
                     block's reference count and prefix-cache flag, and (unless the server keeps
                     other people's text private: `token_text="simulated"`) its token ids and
                     their text. 404 when the request is not live, or a recording plays.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any, AsyncIterator, Protocol

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from engine.serving.block_map import BlockMapSnapshot
from engine.serving.engine_info import EngineInfo
from engine.serving.request_inspection import RequestInspection
from engine.serving.request_stream import EngineDeadError
from engine.serving.engine_thread import EngineThread
from engine.serving.event_feed import SCHEMA_VERSION, EventFeed
from server.device_monitor import DeviceMonitor
from server.openai_api import SSE_HEADERS
from server.trace_events import trace_events


def snapshot_json(bm: BlockMapSnapshot, info: EngineInfo | None = None) -> dict[str, Any]:
    """The state a late joiner starts from: every block's holders, fill and cache flag, the live
    sequences, and the engine's static facts (the model's shape for the KV formula and roofline)."""
    return {"schema": SCHEMA_VERSION, "feed_index": bm.feed_index, "block_size": bm.block_size,
            "num_blocks": bm.num_blocks, "owners": [list(o) for o in bm.owners], "fill": list(bm.fill),
            "cached": list(bm.cached), "tokens_stored": bm.stats.tokens_stored,
            "engine": dataclasses.asdict(info) if info is not None else None,
            "sequences": [{"seq_id": s.seq_id, "request_id": s.request_id, "sample": s.sample_index,
                           "num_tokens": s.num_tokens, "num_prompt_tokens": s.num_prompt_tokens,
                           "limit": s.max_len, "running": s.running} for s in bm.seqs]}


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

    def inspect(self, request_id: str) -> RequestInspection | None:
        """A live request's sequences and blocks (engine.serving.request_inspection), None if unknown."""
        ...


class EngineFeed:
    """The engine thread's feed and block map as a FeedSource."""

    def __init__(self, engine: EngineThread) -> None:
        self.engine = engine
        self._monitor: DeviceMonitor | None = None  # made when first watched

    def inspect(self, request_id: str) -> RequestInspection | None:
        return self.engine.inspect(request_id)

    @property
    def feed(self) -> EventFeed | None:
        return self.engine.feed

    @property
    def alive(self) -> bool:
        return self.engine.alive

    def snapshot(self) -> dict[str, Any]:
        return snapshot_json(self.engine.block_map, self.engine.info)

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


def inspection_json(found: RequestInspection, with_text: bool) -> dict[str, Any]:
    """The block-table view's data; token ids and text only `with_text`."""
    return {"request_id": found.request_id, "block_size": found.block_size, "text": with_text, "samples": [
        {"seq_id": s.seq_id, "sample": s.sample_index, "status": s.status, "num_prompt_tokens": s.num_prompt_tokens,
         "num_tokens": s.num_tokens, "num_cached_tokens": s.num_cached_tokens,
         "token_ids": list(s.token_ids) if with_text else None,
         "token_texts": list(s.token_texts) if with_text else None, "block_table": list(s.block_table),
         "blocks": [{"block_id": b, "ref_count": r, "cached": c}
                    for b, r, c in zip(s.block_table, s.ref_counts, s.cached)]} for s in found.seqs]}


TOKEN_TEXT_POLICIES = ("all", "simulated")


def _not_found(message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "not_found_error", "param": None, "code": None}}, 404)


def build_feed_router(source: FeedSource, token_text: str = "all") -> APIRouter:
    """`token_text`: whose token text /api/request shows: every request's ("all": a presenter's
    own machine), or the simulated users' only ("simulated": a public server, where the chats are
    other people's)."""
    if token_text not in TOKEN_TEXT_POLICIES:
        raise ValueError(f"token_text must be one of {TOKEN_TEXT_POLICIES}, got {token_text!r}")
    router = APIRouter()

    @router.get("/api/request/{request_id}")
    def request(request_id: str) -> Any:  # a plain def: it waits for the engine thread in a worker thread
        inspect = getattr(source, "inspect", None)
        if inspect is None or len(request_id) > 200:
            return _not_found("no such live request")
        try:
            found = inspect(request_id)
        except TimeoutError:
            return JSONResponse({"error": {"message": "the engine is busy; try again", "type": "service_unavailable",
                                           "param": None, "code": None}}, 503)
        except EngineDeadError:
            return _not_found("the engine is not running")
        if found is None:
            return _not_found(f"{request_id!r} is not a live request")
        return JSONResponse(inspection_json(found, token_text == "all" or request_id.startswith("sim-")),
                            headers={"Cache-Control": "no-store"})

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
