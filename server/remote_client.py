"""Requests to remote engines over their OpenAI-compatible API: the remote mode's chat (async) and
load generator (blocking threads) send through here.

Each request goes to the replica `RemoteFleet.pick` names. One that cannot be reached (refused, a
timeout before the answer starts, HTTP 502/503) is marked down and the next one is tried, so a
replica stopped between two polls costs nobody an answer; an answer cut off half-way fails with a
message naming the replica (its tokens cannot be moved). Errors are the engine's own kinds:
EngineOverloaded (HTTP 429), RequestRejected (any other refusal, or a cut-off answer),
EngineDeadError (no replica reachable at all).
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator, Iterator

import httpx

from engine.serving.engine_thread import ChatPrompt
from engine.serving.request_stream import EngineDeadError, EngineOverloaded, RequestRejected
from engine.core.sampling_params import SamplingParams
from server.remote_fleet import RemoteFleet, Replica

TIMEOUT = httpx.Timeout(connect=3.0, read=120.0, write=10.0, pool=10.0)
_RETRY_STATUS = (502, 503)


def chat_body(model: str | None, prompt: ChatPrompt, params: SamplingParams) -> dict[str, Any]:
    """The /v1/chat/completions body (streamed) for a prompt and its sampling parameters (vLLM's
    extensions only when set: an OpenAI-only server never sees them otherwise)."""
    body = {"model": model or "default", "messages": [dict(m) for m in prompt.messages], "stream": True,
            "n": params.n, "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens}
    if params.seed is not None:
        body["seed"] = params.seed
    if params.ignore_eos:
        body["ignore_eos"] = True
    if params.min_tokens:
        body["min_tokens"] = params.min_tokens
    return body


def sse_chunk(line: str) -> dict[str, Any] | None:
    """A stream line's chunk; None for a blank line, a comment or [DONE]; RequestRejected for an
    error event."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    chunk = json.loads(data)
    if isinstance(chunk, dict) and chunk.get("error"):
        err = chunk["error"]
        raise RequestRejected(str(err.get("message") if isinstance(err, dict) else err))
    return chunk if isinstance(chunk, dict) else None


def delta_text(chunk: dict[str, Any], sample: int = 0) -> str:
    for choice in chunk.get("choices") or []:
        if choice.get("index", 0) == sample:
            return (choice.get("delta") or {}).get("content") or ""
    return ""


def _refusal(response: httpx.Response, body: bytes) -> Exception:
    try:
        message = json.loads(body).get("error", {}).get("message") or body.decode(errors="replace")
    except (ValueError, AttributeError):
        message = body.decode(errors="replace")[:300]
    if response.status_code == 429:
        return EngineOverloaded(message)
    return RequestRejected(f"the engine refused the request (HTTP {response.status_code}): {message}")


def _no_replica(tried: list[str]) -> EngineDeadError:
    where = ", ".join(tried) if tried else "none is up"
    return EngineDeadError(f"no remote engine could take the request (tried: {where})")


class RemoteStream:
    """A streamed answer from one replica, read by a blocking thread; `close()` from any thread."""

    def __init__(self, replica: Replica, response: httpx.Response, client: httpx.Client) -> None:
        """Takes over the replica's in-flight count (`Replica.begin`), ended by `close()`."""
        self.replica, self._response, self._client = replica, response, client
        self.closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for line in self._response.iter_lines():
                chunk = sse_chunk(line)
                if chunk is not None:
                    yield chunk
        except httpx.HTTPError as exc:
            if not self.closed:
                raise RequestRejected(f"the engine at {self.replica.spec.url} stopped mid-answer ({exc})") from exc
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._response.close()
            self._client.close()
        finally:
            self.replica.end()


class RemoteEngine:
    """What the load generator needs of an engine (`submit`), and the chat's async stream."""

    def __init__(self, fleet: RemoteFleet) -> None:
        self.fleet = fleet
        self.headers = fleet.replicas[0].headers

    def submit(self, prompt: ChatPrompt, params: SamplingParams, request_id: str) -> RemoteStream:
        tried: list[str] = []
        while (replica := self.fleet.pick({r.index for r in self.fleet.replicas if r.spec.url in tried})) is not None:
            tried.append(replica.spec.url)
            client = httpx.Client(timeout=TIMEOUT, headers={**self.headers, "X-Request-Id": request_id})
            replica.begin()
            try:
                request = client.build_request("POST", f"{replica.spec.url}/v1/chat/completions",
                                               json=chat_body(replica.model, prompt, params))
                response = client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout) as exc:
                replica.end()
                client.close()
                replica.mark_down(f"a request failed: {type(exc).__name__}")
                continue
            if response.status_code == 200:
                return RemoteStream(replica, response, client)
            body = response.read()
            response.close()
            client.close()
            replica.end()
            if response.status_code in _RETRY_STATUS:
                replica.mark_down(f"HTTP {response.status_code}")
                continue
            raise _refusal(response, body)
        raise _no_replica(tried)

    async def chat(self, prompt: ChatPrompt, params: SamplingParams, request_id: str) -> AsyncIterator[str]:
        """The first sample's text as it streams (deltas)."""
        tried: list[str] = []
        async with httpx.AsyncClient(timeout=TIMEOUT, headers={**self.headers, "X-Request-Id": request_id}) as client:
            while (replica := self.fleet.pick({r.index for r in self.fleet.replicas if r.spec.url in tried})) is not None:
                tried.append(replica.spec.url)
                with replica.request():
                    try:
                        async with client.stream("POST", f"{replica.spec.url}/v1/chat/completions",
                                                 json=chat_body(replica.model, prompt, params)) as response:
                            if response.status_code in _RETRY_STATUS:
                                replica.mark_down(f"HTTP {response.status_code}")
                                continue
                            if response.status_code != 200:
                                raise _refusal(response, await response.aread())
                            started = False
                            try:
                                async for line in response.aiter_lines():
                                    chunk = sse_chunk(line)
                                    if chunk is not None:
                                        started = True
                                        yield delta_text(chunk)
                            except httpx.HTTPError as exc:
                                if not started:
                                    raise httpx.ConnectError(str(exc)) from exc
                                raise RequestRejected(f"the engine at {replica.spec.url} stopped mid-answer; "
                                                      "ask again: the next answer goes to a replica that is up") from exc
                            return
                    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                        replica.mark_down(f"a request failed: {type(exc).__name__}")
                        continue
        raise _no_replica(tried)
