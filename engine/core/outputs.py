"""What the engine hands back: per-step deltas for streaming, whole results for offline use."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class TokenLogprobs(NamedTuple):
    """A drawn token's log-probability and its step's most likely alternatives (ids and
    logprobs, most likely first; as many as the request's `logprobs` asked)."""

    logprob: float
    top_ids: tuple[int, ...]
    top_logprobs: tuple[float, ...]
    rank: int = 1  # the token's place in its step's vocabulary, 1 = the most likely


@dataclass(frozen=True, slots=True)
class TokenChoice:
    """One token as a logprobs answer names it: id, text, UTF-8 bytes (a token may hold part of a
    character), log-probability."""

    token_id: int
    text: str
    bytes: tuple[int, ...]
    logprob: float


@dataclass(frozen=True, slots=True)
class Logprobs:
    """One output token's logprobs, with text: the token drawn and the most likely alternatives."""

    token: TokenChoice
    top: tuple[TokenChoice, ...]
    rank: int = 1  # the token's place among all, 1 = the most likely


@dataclass(slots=True)
class RequestOutput:
    """New text of one sample of one request since the last step. Read-only by convention: not a
    frozen dataclass, whose construction costs 4x as much (one per sequence a step, 256 wide)."""

    request_id: str
    index: int  # which of the request's n samples
    delta_text: str
    delta_token_ids: list[int]
    text: str  # everything visible so far
    num_output_tokens: int
    finished: bool
    finish_reason: str | None = None  # stop | length | abort | error
    error: str | None = None  # what went wrong, with finish_reason "error"
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache when it was scheduled
    logprobs: tuple[Logprobs, ...] | None = None  # one per token of delta_text, when the request asked
    # in a sample's first output, when asked (prompt_logprobs): None for the first prompt token, then one each
    prompt_logprobs: tuple[Logprobs | None, ...] | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[Logprobs] | None = None  # per output token, when the request asked
    prompt_logprobs: tuple[Logprobs | None, ...] | None = None  # when asked: None, then per prompt token


@dataclass
class GenerationResult:
    """One prompt's finished samples, from `LLM.generate`."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
