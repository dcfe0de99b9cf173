"""Metrics: a per-step snapshot the engine publishes, and the latency records behind it."""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from engine.core.block_manager import BlockStats
from engine.core.sequence import Sequence


@dataclass(frozen=True)
class FinishedSample:
    """The life of one sample that finished (stop, length or error): what vLLM's per-request
    histograms observe. Times in seconds; a phase the sample never reached lasts 0."""

    finish_reason: str
    e2e: float  # arrival to finish
    queue: float  # arrival to its first admission
    prefill: float  # first admission to first token (preemptions included)
    decode: float  # first token to last token
    inference: float  # first admission to last token
    prompt_tokens: int
    generation_tokens: int
    max_tokens: int
    n: int
    # set on the last sample of its request: the most tokens any of its samples generated
    request_max_generation_tokens: int | None = None

    def observations(self) -> Iterator[tuple[str, float]]:
        """(histogram, value) pairs, keyed as in engine.serving.metrics_history.request_histograms."""
        yield from (("e2e", self.e2e), ("queue", self.queue), ("prefill", self.prefill), ("decode", self.decode),
                    ("inference", self.inference), ("prompt_tokens", self.prompt_tokens),
                    ("generation_tokens", self.generation_tokens), ("max_tokens", self.max_tokens))
        if self.generation_tokens > 1:
            yield "tpot", self.decode / (self.generation_tokens - 1)
        if self.request_max_generation_tokens is not None:
            yield from (("n", self.n), ("max_generation_tokens", self.request_max_generation_tokens))


@dataclass(frozen=True)
class MetricsSnapshot:
    """What happened in one step, plus running totals. Plain data: safe to hand to another thread."""

    step: int
    timestamp: float  # time.perf_counter() at the end of the step
    step_time: float  # seconds spent in the step (schedule + forward + sample + detokenize)
    num_running: int
    num_waiting: int
    batch_size: int  # sequences in this step's forward pass
    num_prefill_tokens: int
    num_decode_tokens: int
    num_preempted: int  # this step
    blocks: BlockStats
    ttft: tuple[float, ...]  # time to first token of the samples that got their first token now
    itl: tuple[float, ...]  # inter-token latency of every other token produced now
    total_generated_tokens: int
    total_prompt_tokens: int  # prompt tokens computed (prefix-cache hits excluded)
    total_cached_tokens: int  # prompt tokens served from the prefix cache
    total_preemptions: int
    total_finished: int
    total_queried_tokens: int = 0  # prompt tokens looked up in the prefix cache at admissions
    finished: tuple[FinishedSample, ...] = ()  # samples that finished in this step


@dataclass
class MetricsRecorder:
    """Accumulates the engine's counters and the latencies of the current step."""

    total_generated_tokens: int = 0
    total_prompt_tokens: int = 0
    total_cached_tokens: int = 0
    total_finished: int = 0
    total_queried_tokens: int = 0
    steps: int = 0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    finished: list[FinishedSample] = field(default_factory=list)
    _most_generated: dict[str, int] = field(default_factory=dict)  # per unfinished request with n > 1
    history: deque = field(default_factory=lambda: deque(maxlen=4096))

    def token(self, now: float, arrival: float, last: float | None) -> None:
        self.total_generated_tokens += 1
        if last is None:
            self.ttft.append(now - arrival)
        else:
            self.itl.append(now - last)

    def take_latencies(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        ttft, itl = tuple(self.ttft), tuple(self.itl)
        self.ttft.clear()
        self.itl.clear()
        return ttft, itl

    def finish(self, seq: Sequence, now: float, request_done: bool) -> None:
        """Note a finished sample; `request_done`: it was its request's last."""
        most = max(self._most_generated.pop(seq.request_id, 0), seq.num_output_tokens)
        if not request_done:
            self._most_generated[seq.request_id] = most
        admitted = seq.scheduled_time or seq.arrival_time
        first = seq.first_token_time or now
        last = seq.last_token_time or first
        self.finished.append(FinishedSample(
            finish_reason=seq.finish_reason.value if seq.finish_reason else "stop", e2e=now - seq.arrival_time,
            queue=admitted - seq.arrival_time, prefill=first - admitted, decode=last - first, inference=last - admitted,
            prompt_tokens=seq.num_prompt_tokens, generation_tokens=seq.num_output_tokens,
            max_tokens=seq.params.max_tokens, n=seq.params.n,
            request_max_generation_tokens=most if request_done else None))

    def forget(self, request_id: str) -> None:
        """An aborted request: no sample of it will finish any more."""
        self._most_generated.pop(request_id, None)

    def take_finished(self) -> tuple[FinishedSample, ...]:
        finished = tuple(self.finished)
        self.finished.clear()
        return finished
