"""Faults injected into a running LLMEngine, for tests: poisoned logits rows, a raising detokenizer."""
from __future__ import annotations

import math
from typing import Callable

import pytest
import torch

from engine.serving.llm_engine import LLMEngine
from engine.runner.sampler import SampleRow
from engine.core.sequence import Sequence


def poison_logits(monkeypatch: pytest.MonkeyPatch, engine: LLMEngine, is_bad: Callable[[SampleRow], bool],
                  value: float = math.nan) -> None:
    """From now on the model's logits row of every sample row with `is_bad(row)` holds `value` in
    one entry (NaN or +inf), as a fault in the forward pass of that request alone would."""
    runner, model = engine.runner, engine.runner.model
    launch, compute_logits = runner.launch, model.compute_logits
    current: list[SampleRow] = []  # the rows of the step being launched, in logits order

    def launch_and_remember(chunks, copies, rows, *rest, **feed):
        current[:] = rows
        return launch(chunks, copies, rows, *rest, **feed)

    def poisoned_logits(hidden: torch.Tensor, **kwargs) -> torch.Tensor:
        logits = compute_logits(hidden, **kwargs)  # [S, V], one row per sample row
        bad = [i for i, row in enumerate(current) if is_bad(row)]
        if bad:
            logits[bad, 7] = value
        return logits

    monkeypatch.setattr(runner, "launch", launch_and_remember)
    monkeypatch.setattr(model, "compute_logits", poisoned_logits)


def break_detokenizer(monkeypatch: pytest.MonkeyPatch, engine: LLMEngine, is_bad: Callable[[Sequence], bool]) -> None:
    """From now on making the text of a token of a sequence with `is_bad(seq)` raises."""
    detokenize = engine._detokenize

    def broken(seq: Sequence, *rest):
        if is_bad(seq):
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")
        return detokenize(seq, *rest)

    monkeypatch.setattr(engine, "_detokenize", broken)
