"""OpenAI-compatible endpoints: /v1/models, /v1/completions, /v1/chat/completions.

Streaming answers are server-sent events ending in `data: [DONE]`, as the official clients expect;
a stream that failed in the engine sends an `{"error": {...}}` event just before it.
A client that goes away, streaming or not, has its request aborted in the engine (its blocks freed
within a step) from the moment the request is accepted: while it is tokenized, queued, prefilled
or decoded.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from engine.serving.engine_thread import ChatPrompt, EngineThread, Prompt
from engine.core.outputs import Logprobs, RequestOutput
from engine.serving.prompt_encoder import PromptTooLong, check_prompt_chars
from engine.serving.request_stream import EngineDeadError, EngineOverloaded, RequestRejected, RequestStream
from engine.core.sampling_params import SamplingParams
from server.errors import clip, error_body
from server.openai_protocol import ChatCompletionRequest, CompletionRequest
from server.openai_shapes import Shape

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may buffer or cache a stream
Chunk = Callable[[RequestOutput, bool], dict[str, Any]]  # (output, first of its sample) -> choice


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind), status, headers=headers)


class _Call:
    """One API call's stream plus what its response bodies share (id, model, token counts)."""

    def __init__(self, stream: RequestStream, model: str, prefix: str, kind: str, fingerprint: str) -> None:
        self.stream, self.fingerprint = stream, fingerprint
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model
        self.kind = kind
        self.output_tokens: dict[int, int] = {}
        self.cached_tokens: int | None = None  # as the prompt was first scheduled

    def count(self, out: RequestOutput) -> None:
        self.output_tokens[out.index] = out.num_output_tokens
        if self.cached_tokens is None:
            self.cached_tokens = out.num_cached_tokens

    def usage(self) -> dict[str, Any]:
        prompt, completion = self.stream.num_prompt_tokens or 0, sum(self.output_tokens.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens or 0}}

    def body(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": self.kind, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint, "choices": choices, **extra}


class _Watch:
    """Watches one request's connection: when the client leaves, its stream is closed (the engine
    aborts the request). Runs until `stop()`; the request's body has been read by then."""

    def __init__(self, request: Request) -> None:
        self.stream: RequestStream | None = None
        self.gone = False
        self._task = asyncio.create_task(self._watch(request))

    async def _watch(self, request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self.stream is not None:
            self.stream.close()

    def follow(self, stream: RequestStream) -> None:
        self.stream = stream
        if self.gone:
            stream.close()

    def stop(self) -> None:
        self._task.cancel()


def fingerprint(engine: EngineThread) -> str:
    """OpenAI's system_fingerprint: changes when what answers changes (model, dtype, device kind,
    pool shape), so that a client can tell two backends' answers apart."""
    info = engine.info
    key = f"{info.model}|{info.model_type}|{info.dtype}|{info.device.split(':')[0]}|{info.block_size}|{info.max_model_len}"
    return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:10]


# A request the engine refuses (an id out of its vocabulary, too long a prompt) is refused within a
# step of its submission: waiting that long for its first output keeps a refusal a plain HTTP error.
# A first output that takes longer (a queue, a long prefill) does not hold a stream's headers back:
# they go out, with a keep-alive comment every KEEP_ALIVE_S seconds until the first token, so that
# no proxy or client times the connection out meanwhile.
ACCEPT_WAIT_S = 0.5
KEEP_ALIVE_S = 5.0


async def _open(engine: EngineThread, prompt: Prompt, params: SamplingParams,
                watch: _Watch) -> tuple[RequestStream, list[RequestOutput] | asyncio.Future]:
    """Submit, and wait up to ACCEPT_WAIT_S for the first output: ([it], or [] for none), else the
    wait itself, still running."""
    stream = await engine.submit_async(prompt, params)
    watch.follow(stream)
    wait = asyncio.ensure_future(anext(stream, None))
    try:
        done, _ = await asyncio.wait({wait}, timeout=ACCEPT_WAIT_S)
        if not done:
            return stream, wait
        first = wait.result()
    except BaseException:
        wait.cancel()
        stream.close()
        raise
    return stream, [] if first is None else [first]


async def _first(first: list[RequestOutput] | asyncio.Future) -> list[RequestOutput]:
    if isinstance(first, list):
        return first
    out = await first
    return [] if out is None else [out]


async def _outputs(call: _Call, first: list[RequestOutput] | asyncio.Future) -> AsyncIterator[RequestOutput]:
    for out in await _first(first):
        call.count(out)
        yield out
    async for out in call.stream:
        call.count(out)
        yield out


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _event_stream(call: _Call, first: list[RequestOutput] | asyncio.Future, choice: Chunk, include_usage: bool,
                        watch: _Watch) -> AsyncIterator[str]:
    """Chunks, then usage if asked for; if a sample failed or the engine stopped, an OpenAI-style
    `{"error": ...}` event (the openai client raises APIError with its message); then [DONE]."""
    seen: set[int] = set()
    errors: list[str] = []
    try:
        try:
            if not isinstance(first, list):  # a long wait for the first token: keep the line alive
                while not (await asyncio.wait({first}, timeout=KEEP_ALIVE_S))[0]:
                    yield ": keep-alive\n\n"
            async for out in _outputs(call, first):
                yield _sse(call.body([choice(out, out.index not in seen)]))
                seen.add(out.index)
                if out.error:
                    errors.append(out.error)
        except (EngineDeadError, RequestRejected) as exc:  # a refusal after the headers: an error event
            errors.append(str(exc))
        if include_usage:
            yield _sse(call.body([], usage=call.usage()))
        if errors:
            yield _sse(error_body(f"the request failed: {errors[0]}", "server_error"))
        yield _sse("[DONE]")
    finally:
        if not isinstance(first, list):
            first.cancel()
        watch.stop()
        call.stream.close()


async def _respond(request: Request, engine: EngineThread, prompt: Prompt, params: SamplingParams, model: str,
                   stream: bool, include_usage: bool, shape: Shape) -> Any:
    watch = _Watch(request)
    try:
        response = await _answer(watch, engine, prompt, params, model, stream, include_usage, shape)
    except BaseException:
        watch.stop()
        raise
    if not isinstance(response, StreamingResponse):
        watch.stop()  # an event stream's watch stops when the stream ends
    return response


async def _answer(watch: _Watch, engine: EngineThread, prompt: Prompt, params: SamplingParams, model: str,
                  stream: bool, include_usage: bool, shape: Shape) -> Any:
    """`shape`: what the answer shows besides the text (echo, logprobs)."""
    try:
        handle, first = await _open(engine, prompt, params, watch)
    except EngineOverloaded as exc:
        return error_response(429, str(exc), "rate_limit_error")
    except RequestRejected as exc:
        return error_response(400, str(exc))
    except EngineDeadError as exc:
        return error_response(503, str(exc), "server_error")
    if shape.chat:
        call = _Call(handle, model, "chatcmpl", "chat.completion.chunk" if stream else "chat.completion",
                     fingerprint(engine))
    else:
        call = _Call(handle, model, "cmpl", "text_completion", fingerprint(engine))
    if stream:
        events = _event_stream(call, first, shape.chunk, include_usage, watch)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    texts: dict[int, RequestOutput] = {}
    logprobs: dict[int, list[Logprobs]] = {}  # per sample: its tokens' logprobs
    prompts: dict[int, tuple[Logprobs | None, ...]] = {}  # per sample: its prompt's logprobs, if asked
    try:
        async for out in _outputs(call, first):
            texts[out.index] = out
            if out.prompt_logprobs is not None:
                prompts[out.index] = out.prompt_logprobs
            if out.logprobs:
                logprobs.setdefault(out.index, []).extend(out.logprobs)
    except RequestRejected as exc:  # refused by the engine after a long queue
        return error_response(400, str(exc))
    except EngineDeadError as exc:
        return error_response(503, str(exc), "server_error")
    finally:
        if not isinstance(first, list):
            first.cancel()
        handle.close()
    failed = [out.error for out in texts.values() if out.error]
    if failed:
        return error_response(500, f"the request failed: {failed[0]}", "server_error")
    choices = [shape.choice(texts[i], logprobs.get(i, []), prompts.get(i)) for i in sorted(texts)]
    return call.body(choices, usage=call.usage(), **shape.extra(prompts.get(0)))


def check_model(asked: str | None, model_name: str) -> JSONResponse | None:
    """A 404 in OpenAI's shape for a model this server does not serve (none named: this one)."""
    if asked in (None, "", model_name):
        return None
    return error_response(404, f"the model {clip(asked, 80)!r} does not exist; this server has {model_name!r}",
                          "not_found_error")


def build_openai_router(engine: EngineThread, model_name: str) -> APIRouter:
    """Routes serving `engine` under the name `model_name` (requests may also leave the model out)."""
    router = APIRouter()
    max_len = engine.info.max_model_len

    def refusal(body: CompletionRequest | ChatCompletionRequest) -> JSONResponse | None:
        if (unknown := check_model(body.model, model_name)) is not None:
            return unknown
        limit = body.max_tokens if isinstance(body, CompletionRequest) else body.token_limit
        if limit is not None and not 1 <= limit < max_len:
            return error_response(400, f"max_tokens must be between 1 and {max_len - 1}, got {limit}")
        try:  # before any scan of the text: a huge prompt costs the event loop nothing more
            check_prompt_chars(body.num_chars, engine.info.max_prompt_chars, max_len)
        except PromptTooLong as exc:
            return error_response(400, str(exc))
        return None

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "pagedchat", "max_model_len": max_len}
        return {"object": "list", "data": [card]}

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        if (refused := refusal(body)) is not None:
            return refused
        try:
            prompt = body.single_prompt()
            params = body.sampling_params(body.max_tokens or max_len)
            # echo: the prompt's text before the completion's (token ids given: their text)
            echo = "" if not body.echo else prompt if isinstance(prompt, str) else \
                await asyncio.to_thread(engine.detokenize, list(prompt))
        except (ValueError, RequestRejected) as exc:
            return error_response(400, str(exc))
        shape = Shape(chat=False, echo=echo, logprobs=body.logprobs, echo_logprobs=body.echo and body.logprobs is not None,
                      prompt_logprobs=body.prompt_logprobs)
        return await _respond(request, engine, prompt, params, model_name, body.stream, body.include_usage, shape)

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        if (refused := refusal(body)) is not None:
            return refused
        try:
            params = body.sampling_params(body.token_limit or max_len)
            messages = body.checked_messages()
        except ValueError as exc:
            return error_response(400, str(exc))
        prompt = ChatPrompt(messages)
        shape = Shape(chat=True, logprobs=params.logprobs, prompt_logprobs=body.prompt_logprobs)
        return await _respond(request, engine, prompt, params, model_name, body.stream, body.include_usage, shape)

    routes = {route.path: sorted(route.methods) for route in router.routes}

    @router.api_route("/v1", methods=METHODS, include_in_schema=False)
    @router.api_route("/v1/{rest:path}", methods=METHODS, include_in_schema=False)
    async def elsewhere(request: Request) -> JSONResponse:
        """Unknown routes and wrong methods under /v1, in OpenAI's error shape (not the UI's 404)."""
        path = request.url.path
        if path in routes:
            return error_response(405, f"{request.method} is not allowed on {path}; use {', '.join(routes[path])}",
                                  headers={"Allow": ", ".join(routes[path])})
        return error_response(404, f"no route {clip(path, 80)}: this server has {', '.join(routes)}", "not_found_error")

    return router
