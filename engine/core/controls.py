"""Live controls of a running engine for stage demos: how it batches, how much of the KV pool it may
use, and how slowly it steps. Plain data, validated where built."""
from __future__ import annotations

import math
from dataclasses import dataclass

BATCHING_MODES = ("continuous", "static")
MAX_STEP_DELAY_S = 1.0


@dataclass(frozen=True)
class Controls:
    """What a presenter may change while the engine serves.

    batching      continuous: newcomers join the running batch at any step; static: a new batch
                  forms only once the running one has drained (the pre-vLLM way)
    block_cap     at most this many KV blocks in use at once (None: the whole pool); a small cap
                  simulates memory pressure, so the scheduler preempts
    step_delay_s  a pause after every step (slow motion), 0 to 1 s; the engine thread keeps
                  handling submits and aborts during it
    """

    batching: str = "continuous"
    block_cap: int | None = None
    step_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.batching not in BATCHING_MODES:
            raise ValueError(f"batching must be one of {', '.join(BATCHING_MODES)}, got {self.batching!r}")
        if self.block_cap is not None and (isinstance(self.block_cap, bool) or not isinstance(self.block_cap, int)
                                           or self.block_cap < 1):
            raise ValueError(f"block_cap must be a whole number of blocks >= 1 (or None), got {self.block_cap!r}")
        delay = self.step_delay_s
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) \
                or not 0.0 <= delay <= MAX_STEP_DELAY_S:
            raise ValueError(f"step_delay_s must be between 0 and {MAX_STEP_DELAY_S:g} seconds, got {delay!r}")
