"""One request's outbox: the engine thread pushes its outputs, one consumer reads them.

A consumer reads either synchronously (a plain thread: `for out in stream`) or from an asyncio
event loop (`async for out in stream`), chosen when the stream is made. Iteration ends after the
last sample finished; it raises `RequestRejected` for a request the engine refused and
`EngineDeadError` when the engine thread died.
"""
from __future__ import annotations

import asyncio
import queue
from typing import AsyncIterator, Callable, Iterator

from engine.core.outputs import RequestOutput


class RequestRejected(ValueError):
    """The engine refused the request (empty or too long a prompt, bad parameters...)."""


class EngineOverloaded(RequestRejected):
    """The waiting queue is full: try again later (HTTP 429)."""


class DeviceFailure(RuntimeError):
    """The device can run nothing more (a lost CUDA context): the engine must stop."""


class EngineDeadError(RuntimeError):
    """The engine thread is not running: no request can be served."""


_END = object()  # pushed after a request's last output


class RequestStream:
    """Outputs of one request, in order. Call `close()` when done reading: it aborts the request
    in the engine if it is still running (a closed browser tab, a stop button, a gone client)."""

    def __init__(self, request_id: str, abort: Callable[[str], None],
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.request_id = request_id
        self.num_prompt_tokens: int | None = None  # set by the engine thread on admission
        self.finished = False
        self._abort = abort
        self._loop = loop
        self._sync: queue.SimpleQueue | None = None if loop else queue.SimpleQueue()
        self._async: asyncio.Queue | None = asyncio.Queue() if loop else None

    # ---- the engine thread's side --------------------------------------------------------------
    def push(self, item: RequestOutput | BaseException | object) -> bool:
        """Hand over an output, an exception or the end marker. False if the reader is gone."""
        if self._sync is not None:
            self._sync.put(item)
            return True
        try:
            self._loop.call_soon_threadsafe(self._async.put_nowait, item)
        except RuntimeError:  # the reader's event loop is closed
            return False
        return True

    def end(self) -> None:
        self.push(_END)

    # ---- the reader's side ---------------------------------------------------------------------
    def _accept(self, item: object) -> RequestOutput:
        if item is _END:
            self.finished = True
            raise StopIteration
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        return item  # type: ignore[return-value]

    def __iter__(self) -> Iterator[RequestOutput]:
        if self._sync is None:
            raise TypeError("this stream was made for an event loop: use `async for`")
        return self

    def __next__(self) -> RequestOutput:
        if self.finished:
            raise StopIteration
        return self._accept(self._sync.get())

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        if self._async is None:
            raise TypeError("this stream was made for a thread: use `for`")
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        try:
            return self._accept(await self._async.get())
        except StopIteration:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Stop reading; abort the request in the engine unless it already finished."""
        if not self.finished:
            self.finished = True
            self._abort(self.request_id)

    def __enter__(self) -> "RequestStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
