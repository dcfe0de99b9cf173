"""OpenAI's error shape, for every layer that refuses a request: the API's handlers, and the ASGI
middlewares in front of them (access, body limit) that answer before any route runs."""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

MAX_MESSAGE = 300  # characters of an error message: it may quote what the client sent
Send = Callable[[dict[str, Any]], Awaitable[None]]


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": clip(message), "type": kind, "param": None, "code": code}}


async def send_error(send: Send, status: int, message: str, code: str,
                     headers: list[tuple[bytes, bytes]] | tuple = ()) -> None:
    """The whole response of a raw ASGI app refusing a request, in OpenAI's shape."""
    body = json.dumps(error_body(message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
