"""Serve an ASGI app in the foreground until Ctrl-C (SIGINT) or SIGTERM, then shut down cleanly.

Plain `uvicorn.run` raises the signal again once it has shut down: SIGTERM then kills the process
before any clean-up runs (exit 143, the engine thread never stopped) and Ctrl-C ends in a
KeyboardInterrupt. Here the first signal runs `on_shutdown` (the app stops its engine, so open
streams end at once with an error event), uvicorn finishes the open responses for at most `grace`
seconds, and `serve` returns: the process exits 0, as for any shutdown that was asked for. A second
Ctrl-C skips the wait.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import Any, Callable, Iterator

import uvicorn

from server.limits import ServerLimits, uvicorn_config

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _StreamsCutAtGrace(logging.Filter):
    """Once shutdown has begun, a connection still open at the grace timeout (a UI tab's queue
    stream waits for events forever) is cut on purpose: one info line, not an error and a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, asyncio.CancelledError):
            return False
        if "graceful shutdown exceeded" in record.getMessage():
            log.info("closed the connections still open after the grace period (UI sessions)")
            return False
        return True


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None],
                 stop_when: Callable[[], bool] | None = None) -> None:
        super().__init__(config)
        self.on_shutdown = on_shutdown
        self.stop_when = stop_when
        self.shut_down = False

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick (every 0.1 s): also shut down once `stop_when()` says so."""
        if self.stop_when is not None and not self.should_exit and self.stop_when():
            log.error("shutting down: the server cannot serve any more")
            self.should_exit = True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handlers (first signal: shut down; second Ctrl-C: force), without raising the
        signal again afterwards. Called on the main thread by `run`."""
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info("shutting down")
        # off the event loop: the engine thread hands its last outputs to this loop while it stops
        await asyncio.to_thread(self.on_shutdown)
        self.shut_down = True
        logging.getLogger("uvicorn.error").addFilter(_StreamsCutAtGrace())
        await super().shutdown(sockets)


def serve(app: Any, host: str, port: int, on_shutdown: Callable[[], None], grace: float = 3.0,
          stop_when: Callable[[], bool] | None = None, limits: ServerLimits = ServerLimits()) -> None:
    """Serve `app` on host:port until SIGINT or SIGTERM, or until `stop_when()` is true (checked
    10 times a second); `on_shutdown` runs once, also when the server fails to start (a port in
    use: then uvicorn exits with status 1)."""
    server = _Server(uvicorn_config(app, host, port, limits, timeout_graceful_shutdown=grace), on_shutdown, stop_when)
    try:
        server.run()
    finally:
        if not server.shut_down:
            on_shutdown()
