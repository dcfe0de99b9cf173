"""Request bodies of the OpenAI-compatible API, and how they become SamplingParams.

Unknown fields (logprobs, user, presence_penalty...) are accepted and ignored, so that clients
written for OpenAI work unchanged.
"""
from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from engine.sampling_params import SamplingParams


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls and DEL, less tab and newlines


def check_text(text: str, what: str) -> str:
    """`text` unchanged, or ValueError for control characters or lone surrogates (invalid UTF-8)."""
    if _CONTROL.search(text):
        raise ValueError(f"{what} contains control characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8") from None
    return text


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # vLLM extension
    min_p: float | None = None  # vLLM extension
    repetition_penalty: float | None = None  # vLLM extension
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = False  # vLLM extension
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling_params(self, max_tokens: int) -> SamplingParams:
        """Raises ValueError for values the engine does not accept."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        given: dict[str, Any] = {k: getattr(self, k) for k in ("temperature", "top_p", "top_k", "min_p",
                                                                "repetition_penalty") if getattr(self, k) is not None}
        return SamplingParams(n=self.n, max_tokens=max_tokens, stop=stop, seed=self.seed, ignore_eos=self.ignore_eos,
                              **given)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str]
    max_tokens: int | None = 16  # OpenAI's default for completions

    def single_prompt(self) -> str | list[int]:
        """The one prompt of this request (batches of several prompts are refused)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ValueError("send one prompt per request")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError("the prompt is empty")
            check_text(prompt, "the prompt")
        return prompt


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def plain(self) -> dict[str, str]:
        """role and text, with content parts joined (only text parts are understood)."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        return {"role": self.role, "content": content or ""}


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None

    def checked_messages(self) -> tuple[dict[str, str], ...]:
        """The plain messages; ValueError when there is no message or the last one says nothing."""
        messages = tuple(m.plain() for m in self.messages)
        if not messages or not messages[-1]["content"].strip():
            raise ValueError("the last message is empty")
        for m in messages:
            check_text(m["content"], "a message")
        return messages

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens
