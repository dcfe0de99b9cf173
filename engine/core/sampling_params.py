"""Per-request sampling parameters, validated where they are built."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from engine.core.guided_decoding import GuidedDecoding

MAX_N = 16
MAX_LOGPROBS = 20  # alternatives per token, as OpenAI's top_logprobs and vLLM's default max_logprobs


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token, and when to stop.

    temperature 0 means greedy. top_k 0 (or -1) and top_p 1 and min_p 0 disable those filters.
    `seed` makes a request's samples reproducible whatever else is in the batch.
    """

    n: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0  # OpenAI's: minus this from each token already in the output
    frequency_penalty: float = 0.0  # OpenAI's: minus this times the token's count in the output
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit), -100 to 100
    seed: int | None = None
    max_tokens: int = 256
    min_tokens: int = 0  # vLLM's: no EOS or stop token id is drawn before this many output tokens
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False  # vLLM's: the stop string (or stop token's text) ends the text
    skip_special_tokens: bool = True  # vLLM's: special tokens' text is left out of the output text
    logprobs: int | None = None  # each output token's logprob and this many most likely alternatives'
    prompt_logprobs: int | None = None  # vLLM's: the same for each prompt token after the first (no prefix cache)
    guided: GuidedDecoding | None = None  # structured output: a grammar every sample follows
    # any of logit_bias, the penalties: the sampler's batch skips their passes when no row has one
    adjusts_logits: bool = field(init=False, repr=False, compare=False)
    # a penalty or a grammar: a row's logits depend on the tokens drawn so far (read on the host)
    reads_output: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        bias = dict(self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias)
        object.__setattr__(self, "logit_bias", tuple(sorted((int(t), float(b)) for t, b in bias.items())))
        if self.top_k == -1:
            object.__setattr__(self, "top_k", 0)
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {str(value)[:40]}")
        if not 1 <= self.n <= MAX_N:
            raise ValueError(f"n must be between 1 and {MAX_N}, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (or -1 to disable), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be between -2 and 2, got {getattr(self, name)}")
        for token, b in self.logit_bias:
            if not (math.isfinite(b) and -100.0 <= b <= 100.0):
                raise ValueError(f"logit_bias values must be between -100 and 100, got {str(b)[:40]} for {token}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                raise ValueError(f"{name} must be between 0 and {MAX_LOGPROBS}, got {value}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens must be between 0 and max_tokens ({self.max_tokens}), got {self.min_tokens}")
        penalised = bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)
        object.__setattr__(self, "adjusts_logits", bool(self.logit_bias) or penalised)
        object.__setattr__(self, "reads_output", penalised or self.guided is not None)
        if self.guided is not None and not isinstance(self.guided, GuidedDecoding):
            raise ValueError("guided must be a GuidedDecoding")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
