"""Serve an ASGI app with uvicorn on a background thread (tests, notebooks), and stop it cleanly."""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from server.limits import ServerLimits, uvicorn_config


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None,
                 limits: ServerLimits = ServerLimits()) -> None:
        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn_config(app, self.host, self.port, limits, timeout_graceful_shutdown=2))
        self._thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving. Long-lived streams (Gradio's heartbeats) are cancelled without a traceback."""
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        self.server.should_exit = True
        self._thread.join(timeout)
