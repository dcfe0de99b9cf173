"""A sequence: one sample of one request, its tokens, and how far its KV cache has been computed."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from engine.core.sampling_params import SamplingParams


# A token still being sampled on the device (overlapped scheduling: the next step is planned and
# launched before this one's tokens reach the host). Never a vocabulary id; the step that feeds it
# reads the sampled id on the device, and it is replaced as soon as the host has it.
PENDING = -2
NO_LIMIT = 1 << 62


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the model's context length
    ABORT = "abort"
    ERROR = "error"  # serving this sequence raised; the others carry on


@dataclass(eq=False)
class Sequence:
    """Tokens of one sample (prompt + generated) and its place in the KV cache.

    `num_computed_tokens` counts tokens whose K/V are in the cache; the tokens after them are fed in
    the next steps (a whole prompt, a prefill chunk, or the one newest token of a decode).
    A request with n > 1 starts as one sequence; when its prompt is done it forks into n.
    """

    seq_id: int
    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    arrival_time: float
    sample_index: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at the last admission
    num_preemptions: int = 0
    forked: bool = False  # the n - 1 siblings have been made (only ever True for sample 0)
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    scheduled_time: float | None = None  # time.perf_counter() at its first admission (a preemption keeps it)
    first_token_time: float | None = None
    last_token_time: float | None = None
    children: list["Sequence"] = field(default_factory=list, repr=False)
    new_logprobs: Any = field(default=None, repr=False)  # the newest token's TokenLogprobs, if asked for
    # structured output: its Guide (engine/runner/structured_output.py), made at its first sampling; a fork
    # gets none and replays its own output into a fresh one; a preemption keeps it (outputs are kept)
    guide: Any = field(default=None, repr=False)
    # prompt_logprobs, when asked: one TokenLogprobs per prompt token after the first, filled as the
    # prompt's chunks are computed (a recompute after a preemption adds none twice)
    prompt_logprobs: list[Any] = field(default_factory=list, repr=False)
    # the most tokens it may hold (prompt + max_tokens, within the context): a step is never planned
    # for a sequence whose PENDING token is its last
    token_limit: int = NO_LIMIT

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Asked for its prompt's logprobs and not all computed yet (so its prompt skips the cache)."""
        return self.params.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens - 1

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def has_pending_token(self) -> bool:
        return bool(self.token_ids) and self.token_ids[-1] == PENDING

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def samples_at_prompt_end(self) -> int:
        """How many next tokens to draw when the prompt's last token is computed: n before the fork."""
        return 1 if self.forked or self.sample_index else self.params.n

    def fork(self, seq_id: int, sample_index: int, first_token: int) -> "Sequence":
        """A sibling sample sharing everything computed so far, with its own first token."""
        child = Sequence(
            seq_id=seq_id, request_id=self.request_id, token_ids=self.token_ids[:-1] + [first_token],
            num_prompt_tokens=self.num_prompt_tokens, params=self.params, arrival_time=self.arrival_time,
            sample_index=sample_index, status=self.status, num_computed_tokens=self.num_computed_tokens,
            num_cached_tokens=self.num_cached_tokens, scheduled_time=self.scheduled_time,
            first_token_time=self.first_token_time,
            last_token_time=self.last_token_time, prompt_logprobs=self.prompt_logprobs,
            token_limit=self.token_limit,
        )
        return child
