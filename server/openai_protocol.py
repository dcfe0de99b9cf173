"""Request bodies of the OpenAI-compatible API, and how they become SamplingParams.

Every field is typed strictly, as OpenAI's own API does: no string for a number, no number for a
boolean, no NaN or infinity, integers within 64 bits. Roles come from OpenAI's set (developer is
read as system); content parts are text parts. A violation is a ValidationError, which the app
answers with a 400 naming the field. OpenAI's advisory fields (user, metadata) are accepted and
change nothing; any other field this server does not implement is refused with a 400 naming it.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.serving.prompt_encoder import check_text
from engine.core.sampling_params import MAX_LOGPROBS, SamplingParams
from server.structured_output_request import StructuredOutputFields


ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 32  # stop strings per request
MAX_LOGIT_BIAS = 300  # tokens a logit_bias may name (OpenAI's limit)
INT64 = 2**63


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


# Fields OpenAI documents as advisory, or that mean nothing here: accepted, and they change nothing.
ADVISORY = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls"})
# Fields this server does not implement, with the values that ask for nothing (clients send them
# with their defaults). Any other value is refused with a 400 naming the field; so is any field
# neither here nor in the request's model: nothing is accepted and silently ignored.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "echo": (False,), "suffix": ("",), "best_of": (1,),
    "tools": ([],), "tool_choice": ("none",), "functions": ([],),
    "function_call": ("none",),
    "modalities": (["text"],), "tool_calls": ([],), "refusal": (), "annotations": ([],), "tool_call_id": (), "prediction": (), "audio": (), "reasoning_effort": (), "web_search_options": (),
}


def refuse_unimplemented(extra: dict[str, Any] | None) -> None:
    """ValueError naming the first field (beyond the model's own) that asks for what is not built."""
    for name, value in (extra or {}).items():
        if name in ADVISORY or value is None or value in NEUTRAL.get(name, ()):
            continue
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        what = "is not supported by this server" if name in NEUTRAL else "is not a parameter this server knows"
        raise ValueError(f"'{name}' {what} (got {shown})")


class _Common(_Strict, StructuredOutputFields):  # response_format and vLLM's guided_*
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = Field(None, ge=-1, lt=INT64)  # vLLM extension
    min_p: float | None = None  # vLLM extension
    repetition_penalty: float | None = None  # vLLM extension
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string, as OpenAI sends it) -> bias
    n: int = Field(1, ge=-INT64, lt=INT64)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-INT64, lt=2 * INT64)
    ignore_eos: bool = False  # vLLM extension
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop_token_ids: list[int] | None = None  # vLLM extension
    min_tokens: int = Field(0, ge=-INT64, lt=INT64)  # vLLM extension
    include_stop_str_in_output: bool = False  # vLLM extension
    skip_special_tokens: bool = True  # vLLM extension
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # vLLM extension (not streamed)

    @model_validator(mode="after")
    def _nothing_ignored(self) -> "_Common":
        refuse_unimplemented(self.model_extra)
        if self.prompt_logprobs is not None and self.stream:  # as vLLM
            raise ValueError("'prompt_logprobs' is not available when streaming")
        return self

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        strings = [stop] if isinstance(stop, str) else stop or []
        if len(strings) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(strings)}")
        for text in strings:
            if not text:
                raise ValueError("stop strings must not be empty")
            check_text(text, "a stop string")
        return stop

    def sampling_params(self, max_tokens: int) -> SamplingParams:
        """Raises ValueError for values the engine does not accept."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        given: dict[str, Any] = {k: getattr(self, k) for k in ("temperature", "top_p", "top_k", "min_p",
                                                                "repetition_penalty", "presence_penalty",
                                                                "frequency_penalty") if getattr(self, k) is not None}
        if self.logit_bias:
            if len(self.logit_bias) > MAX_LOGIT_BIAS:
                raise ValueError(f"logit_bias holds at most {MAX_LOGIT_BIAS} tokens, got {len(self.logit_bias)}")
            try:
                given["logit_bias"] = {int(token): bias for token, bias in self.logit_bias.items()}
            except ValueError:
                raise ValueError("logit_bias keys must be token ids") from None
        return SamplingParams(n=self.n, max_tokens=max_tokens, stop=stop, seed=self.seed, ignore_eos=self.ignore_eos,
                              stop_token_ids=tuple(self.stop_token_ids or ()), min_tokens=self.min_tokens,
                              include_stop_str_in_output=self.include_stop_str_in_output,
                              skip_special_tokens=self.skip_special_tokens, logprobs=self.num_logprobs,
                              prompt_logprobs=self.num_prompt_logprobs, guided=self.guided_decoding(), **given)

    @property
    def num_logprobs(self) -> int | None:
        """Alternatives asked for each output token (0: only the token's own logprob), None for none."""
        return None

    @property
    def num_prompt_logprobs(self) -> int | None:
        """The same for each prompt token (which then skips the prefix cache)."""
        return self.prompt_logprobs

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=-INT64, lt=INT64)  # OpenAI's default for completions
    echo: bool = False  # the prompt's text before each completion's
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # legacy completions: alternatives per token

    @field_validator("logprobs", mode="before")
    @classmethod
    def _false_is_none(cls, value: Any) -> Any:
        return None if value is False else value  # clients send the chat API's `false` here too

    @property
    def num_logprobs(self) -> int | None:
        return self.logprobs

    @property
    def num_prompt_logprobs(self) -> int | None:
        """echo with logprobs shows the prompt's tokens' logprobs too (OpenAI's legacy completions)."""
        asked = [k for k in (self.prompt_logprobs, self.logprobs if self.echo else None) if k is not None]
        return max(asked) if asked else None

    @property
    def num_chars(self) -> int:
        """Characters of text in the prompt (0 for token ids): bounds its tokens from below."""
        prompt = self.prompt[0] if isinstance(self.prompt, list) and self.prompt else self.prompt
        return len(prompt) if isinstance(prompt, str) else 0

    def single_prompt(self) -> str | list[int]:
        """The one prompt of this request (batches of several prompts are refused)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise ValueError("send one prompt per request")
            prompt = prompt[0]
        if not prompt or isinstance(prompt, str) and not prompt.strip():
            raise ValueError("the prompt is empty")
        if isinstance(prompt, str):
            check_text(prompt, "the prompt")
        return prompt


class ChatMessage(_Strict):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _nothing_ignored(self) -> "ChatMessage":
        refuse_unimplemented(self.model_extra)
        return self

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role in ("tool", "function"):
            raise ValueError(f"{role} messages are not supported: this server does not call tools")
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role[:40]!r}")
        return role

    @field_validator("content")
    @classmethod
    def _text_parts(cls, content: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        for part in content if isinstance(content, list) else ():
            kind = part.get("type")
            if kind != "text":
                if isinstance(kind, str) and kind.split("_")[0] in ("image", "input", "audio", "video", "file"):
                    raise ValueError(f"{kind[:40]} content parts are not supported: this is a text-only model")
                raise ValueError(f"content parts must have type 'text', got {str(kind)[:40]!r}")
            if not isinstance(part.get("text"), str):
                raise ValueError("a text content part needs a string `text`")
        return content

    def plain(self) -> dict[str, str]:
        """role (developer read as system) and text, with text parts joined."""
        content = self.content
        if content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        if isinstance(content, list):
            content = "".join(part["text"] for part in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content or ""}


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage]
    max_tokens: int | None = Field(None, ge=-INT64, lt=INT64)
    max_completion_tokens: int | None = Field(None, ge=-INT64, lt=INT64)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:  # as OpenAI answers it
            raise ValueError("'top_logprobs' needs 'logprobs' set to true")
        return self

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def num_chars(self) -> int:
        """Characters of text in all messages: bounds the prompt's tokens from below."""
        return sum(len(m.content) if isinstance(m.content, str) else
                   sum(len(p["text"]) for p in m.content or ()) for m in self.messages)

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
        """max_completion_tokens, else the older max_tokens (0 is a value: refused, not unlimited)."""
        return self.max_tokens if self.max_completion_tokens is None else self.max_completion_tokens
