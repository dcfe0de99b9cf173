"""uvicorn's HTTP/1.1 protocol with deadlines for slow clients (slowloris): uvicorn has none.

A connection must deliver a request's line and headers within `header_timeout` seconds of opening
(or of its last response, when kept alive), and the whole body within `body_timeout` seconds of
the headers; otherwise it is closed (the app sees a disconnect). Once a request is fully read the
deadlines are off: a long streamed answer is not cut.
"""
from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class DeadlineH11Protocol(H11Protocol):
    header_timeout = 10.0
    body_timeout = 30.0
    _deadline: asyncio.TimerHandle | None = None
    _waiting_for: Any = None  # the client state the deadline is for: h11.IDLE or h11.SEND_BODY

    def _arm(self, state: Any, seconds: float) -> None:
        self._cancel()
        self._waiting_for = state
        self._deadline = self.loop.call_later(seconds, self._expire, state)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._waiting_for = None

    def _expire(self, state: Any) -> None:
        if self.conn.their_state is state and not self.transport.is_closing():
            self.transport.close()  # connection_lost: the app's receive() gets http.disconnect

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(h11.IDLE, self.header_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.get_protocol() is not self:  # upgraded (websocket): not ours any more
            self._cancel()
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY and self._waiting_for is not h11.SEND_BODY:
            self._arm(h11.SEND_BODY, self.body_timeout)  # headers done: one deadline for the body
        elif state is not h11.IDLE and state is not h11.SEND_BODY:
            self._cancel()  # the request is all in

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm(h11.IDLE, self.header_timeout)  # the next request on a kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)


def deadline_protocol(header_timeout: float, body_timeout: float) -> type[DeadlineH11Protocol]:
    """The protocol class with these deadlines, for `uvicorn.Config(http=...)`."""
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,),
                {"header_timeout": header_timeout, "body_timeout": body_timeout})
