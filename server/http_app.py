"""One FastAPI app carrying the HTTP API (/v1/*, /health, /metrics) and, mounted at /, the Gradio UI."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from fastapi.responses import JSONResponse, Response

from engine.serving.engine_thread import EngineThread
from server.access import AccessControl
from server.body_limit import BodyLimit
from server.feed_api import EngineFeed, build_feed_router
from server.limits import ServerLimits
from server.openai_api import build_openai_router, error_response
from server.fleet_api import build_fleet_router
from server.remote_fleet import RemoteFleet
from server.replay import ReplaySource
from server.tokenize_api import build_tokenize_router
from server.prometheus import CONTENT_TYPE, metrics_registry, render_metrics

# Gradio's defaults run one event at a time per listener and 40 events in all: far below what
# continuous batching serves. Each listener may run UI_CONCURRENCY events; all of them together
# (chats, dashboard refreshes, buttons) UI_WORKERS.
UI_CONCURRENCY = 128
UI_WORKERS = 256


def build_http_app(engine: EngineThread, model_name: str, ui: Any | None = None, limits: ServerLimits = ServerLimits(),
                   allowed_hosts: list[str] | None = None, api_key: str | None = None,
                   routers: list[Any] = (), token_text: str = "all") -> FastAPI:
    """The API routes for `engine`; `ui` (a gr.Blocks) is queued and mounted at / when given.
    `token_text`: whose token text the block-table view may show (server.feed_api).

    Every request passes the access check (Host among `allowed_hosts`, None for any; the API key
    on /v1 if set) and the body limit first. `routers` (the UI's own assets) go in before the UI."""
    app = FastAPI(title="PagedChat", docs_url="/api-docs", redoc_url=None)
    app.include_router(build_openai_router(engine, model_name))
    app.include_router(build_tokenize_router(engine, model_name))
    app.include_router(build_feed_router(EngineFeed(engine), token_text))
    for router in routers:
        app.include_router(router)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(AccessControl, allowed_hosts=allowed_hosts or ["*"], api_key=api_key)  # the outermost

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        """Malformed JSON and wrong types: OpenAI's 400 body instead of FastAPI's 422."""
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = str(first.get("msg", "malformed")).removeprefix("Value error, ")
        return error_response(400, f"invalid request body: {where or 'body'}: {message}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        """FastAPI's own refusals (a body that is not UTF-8, an unknown route) in OpenAI's error shape."""
        if exc.status_code == 400:
            return error_response(400, f"invalid request body: {exc.detail}")
        return error_response(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404 else
                              "invalid_request_error")

    @app.get("/health")
    async def health() -> JSONResponse:
        if engine.alive:
            return JSONResponse({"status": "ok", "model": model_name})
        return JSONResponse({"status": "dead", "error": str(engine.error or "stopped")}, 503)

    registry = metrics_registry(engine, model_name)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(render_metrics(registry), media_type=CONTENT_TYPE)

    return _mount_ui(app, ui) if ui is not None else app


def build_replay_app(source: ReplaySource, label: str, ui: Any, limits: ServerLimits = ServerLimits(),
                     allowed_hosts: list[str] | None = None, routers: list[Any] = ()) -> FastAPI:
    """A recording played back: the feed's endpoints, /health and the UI (no engine, no /v1)."""
    app = _ui_only_app("PagedChat (replay)", [build_feed_router(source), *routers], limits, allowed_hosts)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok" if source.alive else "stopped", "replay": label})

    return _mount_ui(app, ui)


def build_remote_app(fleet: RemoteFleet, ui: Any, limits: ServerLimits = ServerLimits(),
                     allowed_hosts: list[str] | None = None, routers: list[Any] = ()) -> FastAPI:
    """The UI over remote engines: the fleet's endpoints, /health and the UI (the chat sends to the
    engines themselves; their own /v1 stays where it is)."""
    app = _ui_only_app("PagedChat (remote engines)", [build_fleet_router(fleet), *routers], limits, allowed_hosts)

    @app.get("/health")
    async def health() -> JSONResponse:
        replicas = [{"url": r.spec.url, "state": r.state} for r in fleet.replicas]
        up = fleet.alive
        return JSONResponse({"status": "ok" if up else "no engine up", "replicas": replicas}, 200 if up else 503)

    return _mount_ui(app, ui)


def _ui_only_app(title: str, routers: list[Any], limits: ServerLimits, allowed_hosts: list[str] | None) -> FastAPI:
    """An app with no /v1 of its own (a replay, a UI over remote engines): `routers`, the body limit
    and the Host check (no API key: there is no API to guard)."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None)
    for router in routers:
        app.include_router(router)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(AccessControl, allowed_hosts=allowed_hosts or ["*"], api_key=None)
    return app


def _mount_ui(app: FastAPI, ui: Any) -> FastAPI:
    import gradio as gr

    ui.max_threads = UI_WORKERS  # read by queue(): it sizes the queue's worker pool
    ui.queue(default_concurrency_limit=UI_CONCURRENCY)
    # the UI takes no files: uploads are refused (the body limit holds for every route anyway)
    return gr.mount_gradio_app(app, ui, path="/", footer_links=["api"], max_file_size=1)
