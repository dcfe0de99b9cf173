"""Metrics: a per-step snapshot the engine publishes, and the latency records behind it."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.block_manager import BlockStats


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


@dataclass
class MetricsRecorder:
    """Accumulates the engine's counters and the latencies of the current step."""

    total_generated_tokens: int = 0
    total_prompt_tokens: int = 0
    total_cached_tokens: int = 0
    total_finished: int = 0
    steps: int = 0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
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
