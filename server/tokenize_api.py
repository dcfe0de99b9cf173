"""vLLM's utility endpoints: POST /tokenize, POST /detokenize and GET /version.

    POST /tokenize    {"prompt": "text" | [ids]} or {"messages": [...]} (through the chat template,
                      ready for the answer, as a chat request would be encoded)
                      -> {"count", "max_model_len", "tokens"}
    POST /detokenize  {"tokens": [ids]} -> {"prompt": text}
    GET  /version     -> {"version"}
Bad input gets the same OpenAI-shaped 400 as /v1; tokenizing runs in a worker thread.
"""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import ConfigDict, Field, model_validator

from engine import __version__
from engine.serving.engine_thread import ChatPrompt, EngineThread
from engine.serving.prompt_encoder import check_prompt_chars, check_text
from engine.serving.request_stream import RequestRejected
from server.openai_api import check_model, error_response
from server.openai_protocol import ChatMessage, _Strict


class TokenizeRequest(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    model: str | None = None
    prompt: str | list[int] | None = None
    messages: list[ChatMessage] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either a prompt or messages")
        return self


class DetokenizeRequest(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    model: str | None = None
    tokens: list[int] = Field(max_length=1_000_000)


def build_tokenize_router(engine: EngineThread, model_name: str) -> APIRouter:
    router = APIRouter()
    info = engine.info

    @router.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> Any:
        if (refused := check_model(body.model, model_name)) is not None:
            return refused
        try:
            if body.messages is not None:
                messages = tuple(m.plain() for m in body.messages)
                for m in messages:
                    check_text(m["content"], "a message")
                check_prompt_chars(sum(len(m["content"]) for m in messages), info.max_prompt_chars,
                                   info.max_model_len)
                prompt: Any = ChatPrompt(messages)
            else:
                prompt = body.prompt
                if isinstance(prompt, str):
                    check_text(prompt, "the prompt")
                    check_prompt_chars(len(prompt), info.max_prompt_chars, info.max_model_len)
            tokens = await asyncio.to_thread(engine.tokenize, prompt)
        except (ValueError, RequestRejected) as exc:
            return error_response(400, str(exc))
        return {"count": len(tokens), "max_model_len": info.max_model_len, "tokens": tokens}

    @router.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> Any:
        if (refused := check_model(body.model, model_name)) is not None:
            return refused
        try:
            text = await asyncio.to_thread(engine.detokenize, body.tokens)
        except RequestRejected as exc:
            return error_response(400, str(exc))
        return {"prompt": text}

    @router.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    return router
