"""Log-probabilities that requests ask for: of each drawn token (`logprobs`) and of each prompt
token given the ones before it (`prompt_logprobs`), with the k most likely alternatives.

They are the model's own distribution, log_softmax of the raw logits, before penalties, bans and
temperature (vLLM's default, `raw_logprobs`). Only the rows that ask are computed; a batch where
none asks costs one Python scan. The tensors stay on the device until the step's tokens are read,
and come over in the same non-blocking copy.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from engine.core.outputs import TokenLogprobs
from engine.runner.sampler import on_device


@dataclass(slots=True)
class LogprobTensors:
    """L rows of logprobs: the token each row scores, its logprob and rank [L], and the top-k ids
    and logprobs [L, k] (None when k = 0), most likely first."""

    chosen: torch.Tensor
    rank: torch.Tensor
    top_ids: torch.Tensor | None
    top_logprobs: torch.Tensor | None

    def map(self, f) -> "LogprobTensors":
        return LogprobTensors(*(None if t is None else f(t) for t in (getattr(self, x.name) for x in fields(self))))

    def unpack(self, ks: list[int]) -> list[TokenLogprobs]:
        """On the host: row i as TokenLogprobs with its own ks[i] alternatives."""
        top_ids = self.top_ids.tolist() if self.top_ids is not None else None
        top_lps = self.top_logprobs.tolist() if self.top_logprobs is not None else None
        return [TokenLogprobs(lp, tuple(top_ids[i][:k]) if k else (), tuple(top_lps[i][:k]) if k else (), rank)
                for i, (lp, rank, k) in enumerate(zip(self.chosen.tolist(), self.rank.tolist(), ks))]


SCORE_ROWS = 256  # rows scored at once: a step scoring thousands of prompt rows holds [256, V] temporaries


def score(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> LogprobTensors:
    """logprobs of `tokens` [L] under `logits` [L, V], their ranks, and the top k of each row
    (SCORE_ROWS rows at a time, so that the log-softmax's copy never holds all L rows)."""
    if logits.shape[0] > SCORE_ROWS:
        parts = [_score(logits[i:i + SCORE_ROWS], tokens[i:i + SCORE_ROWS], k)
                 for i in range(0, logits.shape[0], SCORE_ROWS)]
        return LogprobTensors(*(None if part[0] is None else torch.cat(part)
                                for part in zip(*((p.chosen, p.rank, p.top_ids, p.top_logprobs) for p in parts))))
    return _score(logits, tokens, k)


def _score(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> LogprobTensors:
    lsm = logits.float().log_softmax(dim=-1)  # [L, V]
    chosen = lsm.gather(1, tokens.clamp(min=0)[:, None])  # [L, 1]; an INVALID_TOKEN row fails anyway
    rank = (lsm > chosen).sum(dim=-1) + 1
    top = lsm.topk(k, dim=-1) if k else None
    return LogprobTensors(chosen[:, 0], rank, top.indices if top else None, top.values if top else None)


def sampled_logprobs(logits: torch.Tensor, asks: list[int | None],
                     tokens: torch.Tensor) -> tuple[list[int], list[int], LogprobTensors] | None:
    """For the sampled rows whose request asks (asks[i] = its k, None for no): (which rows, their
    ks, their logprobs), or None when no row asks."""
    rows = [i for i, k in enumerate(asks) if k is not None]
    if not rows:
        return None
    ks = [asks[i] for i in rows]
    idx = on_device(rows, torch.int64, logits.device)
    return rows, ks, score(logits[idx], tokens[idx], max(ks))


def prompt_logprobs(logits: torch.Tensor, targets: list[int], k: int) -> LogprobTensors:
    """Each prompt position's logits [R, V] scoring the prompt token that follows it."""
    return score(logits, on_device(targets, torch.int64, logits.device), k)
