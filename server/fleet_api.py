"""The remote engines' state over HTTP, for the fleet view (ui/live/fleet_view.js).

GET /api/fleet          server-sent events: once a second a `fleet` event, every replica's state
                        (up, down since when and why, model, requests in flight from here) and its
                        metric points since the last event (the first event: the whole history).
GET /api/fleet/tree/N   replica N's prefix-cache tree from its KV events: joined segments with their
                        token text (server.remote_fleet.Replica.tree_json). 404 for no such replica.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from server.openai_api import SSE_HEADERS
from server.remote_fleet import RemoteFleet


async def fleet_events(fleet: RemoteFleet, interval: float = 1.0) -> AsyncIterator[str]:
    since = [0.0] * len(fleet.replicas)  # per replica: the newest point sent
    while True:
        state = fleet.state_json(since)
        for r in state["replicas"]:
            if r["points"]:
                since[r["index"]] = r["points"][-1]["t"]
        yield f"event: fleet\ndata: {json.dumps(state, separators=(',', ':'))}\n\n"
        await asyncio.sleep(interval)


def build_fleet_router(fleet: RemoteFleet) -> APIRouter:
    router = APIRouter()

    @router.get("/api/fleet")
    async def feed() -> Any:
        return StreamingResponse(fleet_events(fleet), media_type="text/event-stream", headers=SSE_HEADERS)

    @router.get("/api/fleet/tree/{index}")
    def tree(index: int) -> Any:  # a plain def: text look-ups wait on the replica in a worker thread
        found = fleet.tree_json(index)
        if found is None:
            return JSONResponse({"error": {"message": f"no replica {index}", "type": "not_found_error",
                                           "param": None, "code": None}}, 404)
        return JSONResponse(found, headers={"Cache-Control": "no-store"})

    return router
