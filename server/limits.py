"""The server's resource bounds in one place, and the uvicorn config that applies them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import uvicorn

from server.slow_clients import deadline_protocol


@dataclass(frozen=True)
class ServerLimits:
    max_body_bytes: int = 2 * 2**20  # a request body: a 32k-token context is about 130 KB of text
    header_timeout: float = 10.0  # seconds for a request's line and headers to arrive
    body_timeout: float = 30.0  # seconds for its body to arrive after the headers
    max_connections: int = 1024  # open connections (a UI tab holds two); beyond them, HTTP 503

    def __post_init__(self) -> None:
        if min(self.max_body_bytes, self.header_timeout, self.body_timeout, self.max_connections) <= 0:
            raise ValueError("server limits must be positive")


def uvicorn_config(app: Any, host: str, port: int, limits: ServerLimits, **options: Any) -> uvicorn.Config:
    """uvicorn's config for `app` with `limits` (the body limit is the app's own middleware)."""
    return uvicorn.Config(app, host=host, port=port, log_level="warning", limit_concurrency=limits.max_connections,
                          http=deadline_protocol(limits.header_timeout, limits.body_timeout), **options)
