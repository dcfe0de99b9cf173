"""An ASGI middleware that refuses request bodies over a size limit with an OpenAI-shaped 413,
before they are read (Content-Length) or as soon as a chunked body passes the limit."""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from starlette.exceptions import HTTPException

from server.errors import send_error

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _TooLarge(HTTPException):
    """Raised by `receive` past the limit: an HTTPException, so that FastAPI's body parsing lets it
    through to the app's error handler (a 413), and routes that do not catch it reach ours."""


class BodyLimit:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")  # h11 has refused malformed ones
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send, f" of {int(length):,} bytes")
        seen, started = 0, False

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge(413, self._message(""))
            return message

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await self._refuse(send, "")

    def _message(self, size: str) -> str:
        return f"the request body{size} is over this server's limit of {self.max_bytes:,} bytes"

    async def _refuse(self, send: Send, size: str) -> None:
        await send_error(send, 413, self._message(size), "request_too_large", [(b"connection", b"close")])
