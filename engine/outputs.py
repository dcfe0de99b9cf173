"""What the engine hands back: per-step deltas for streaming, whole results for offline use."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestOutput:
    """New text of one sample of one request since the last step."""

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


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class GenerationResult:
    """One prompt's finished samples, from `LLM.generate`."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
