"""Request bodies of the OpenAI-compatible API, and how they become SamplingParams.

Unknown fields (logprobs, user, presence_penalty...) are accepted and ignored, so that clients
written for OpenAI work unchanged.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from engine.sampling_params import SamplingParams


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
            return prompt[0]
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

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens
