"""Turn a batch of logits into next tokens, each row under its own SamplingParams.

Order of operations (the HF / vLLM convention): a grammar's mask (structured output), logit bias, presence and frequency penalties (over
the output), repetition penalty (over prompt and output), bans (min_tokens), temperature, top-k, top-p, min-p, then a
draw (on a CPU; a GPU's is below). The draw is an exponential race, argmax(probs / q) with q ~ Exponential(1)
per vocabulary entry, which picks token i with probability probs[i] and needs no cumulative sum.

A seeded row draws its noise from a generator seeded by (seed, sample_index, step) alone, so its
token depends on nothing but that triple and its own logits: the same text alone or batched, in
any order, and after a preemption recompute. Unseeded rows share one engine generator.

A row with a NaN or +inf logit, or with every logit -inf (a fault in that request alone), yields
INVALID_TOKEN instead of a token; every other row is sampled as if it were not there. Single -inf
entries are masks, and fine.

On a GPU the draw is one Triton program per row (engine/runner/triton_sample.py): it reads the
logits in the LM head's dtype, divides by the temperature as it reads, takes top-k as each row's
k-th largest logit, and top-p and min-p by rejection, with no sort and no softmax, its noise a
hash of the row's seed (row_seed for a seeded row, so still batch-independent; the host's own
generator for the others); greedy rows take a one-pass argmax (engine/runner/triton_greedy.py).
Both make the row check in the passes they make anyway. Only a batch with a grammar, bans, a bias or
penalties is widened to float32 first, to be edited. Nothing here waits for the device: per-row
parameters and index lists go over from pinned host memory without blocking (in the engine the per-row ones ride in the step's
one copy of its inputs, engine/runner/sampling_tensors.py; otherwise `on_device`), and sizes come from the
host-side parameters, never from a device value. A decode step's sampling is queued behind its
forward pass and the host goes on; tests run a mixed batch under torch.cuda.set_sync_debug_mode("error").
"""
from __future__ import annotations

import random
import math
from collections import Counter
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from engine.core.sampling_params import SamplingParams
from engine.runner.sampling_tensors import (SamplingTensors, clip_top_k, gpu_seeds, row_seed, sort_free_sampler,
                                           stage_sampling, triton_function)

if TYPE_CHECKING:
    from engine.runner.staging import Stage

# Below this a temperature is treated as greedy: dividing by it would only overflow.
MIN_TEMPERATURE = 1e-5
# Top-p first looks among this many most likely tokens per row (see apply_top_p).
TOP_P_CANDIDATES = 1024
# What a row that cannot be sampled gets: never a vocabulary id, so the engine fails that row.
INVALID_TOKEN = -1


def ref_greedy(logits: torch.Tensor, invalid: int) -> torch.Tensor:
    """Each row's argmax where its amax is finite (amax propagates NaN, is +inf if any entry is, and
    -inf only if all are), else `invalid`: the CPU's greedy step, and the GPU kernel's reference."""
    return torch.where(logits.amax(dim=-1).isfinite(), logits.argmax(dim=-1), invalid)


def greedy_kernel() -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    """engine.runner.triton_greedy.greedy (ref_greedy in one pass), or None where Triton does not import."""
    return triton_function("engine.runner.triton_greedy", "greedy")


@dataclass(slots=True)
class SampleRow:
    """One row of the logits to sample: which request, which of its samples, how far along."""

    params: SamplingParams
    token_ids: list[int]  # prompt + output so far, read by the repetition penalty
    sample_index: int = 0  # which of the request's n samples
    step: int = 0  # tokens this sample has generated so far
    banned: tuple[int, ...] = ()  # ids it may not draw now (EOS and stop ids before min_tokens)
    guide: Any = None  # structured output: its sequence's Guide (engine/runner/structured_output.py)

    @property
    def greedy(self) -> bool:
        return self.params.temperature < MIN_TEMPERATURE

    @property
    def plain_greedy(self) -> bool:
        """Greedy, and nothing changes its logits first (no grammar, bans, bias or penalties)."""
        return self.params.temperature < MIN_TEMPERATURE and self.guide is None and not self.banned \
            and not self.params.adjusts_logits


class Sampler:
    """Pick one next token per row of a logits batch."""

    def __init__(self, generator_seed: int = 0) -> None:
        self._generator_seed = generator_seed
        self._generators: dict[torch.device, torch.Generator] = {}  # engine stream per device
        self._seeded: dict[torch.device, torch.Generator] = {}  # reseeded for each seeded row
        self._host_rng = random.Random(generator_seed)  # unseeded rows' seeds for the GPU kernel

    def sample(self, logits: torch.Tensor, rows: list[SampleRow],
               staged: SamplingTensors | None = None) -> torch.Tensor:
        """Return the next token of each row, [S] int64, from logits [S, V] (float32, or the LM
        head's 16-bit output, widened here where a row needs more than an argmax); INVALID_TOKEN
        for a row that cannot be sampled (see the module docstring).

        `staged`: the rows' per-row tensors, already on the device (`stage`, through StepInputs);
        without them they are copied here. The caller's logits are never modified. The check (made
        on the logits as finally edited) costs no host sync: on a GPU it rides in the kernels' passes.
        """
        assert logits.dim() == 2 and logits.shape[0] == len(rows), (logits.shape, len(rows))
        assert staged is None or staged.vocab_size == logits.shape[1], "staged for another vocabulary"
        if all(r.plain_greedy for r in rows):  # argmax and the check, in one pass on a GPU
            kernel = greedy_kernel() if logits.is_cuda else None
            return (kernel or ref_greedy)(logits, INVALID_TOKEN)
        on_gpu = logits.is_cuda and sort_free_sampler() is not None
        guided = any(r.guide is not None for r in rows)
        adjusted = any(r.banned or r.params.adjusts_logits for r in rows)
        if not on_gpu or guided or adjusted:
            logits = logits.float()  # edited below, or read by torch's ops (the GPU kernels read any dtype)
        if guided:  # a grammar allowing nothing fails its row (the check)
            from engine.runner.structured_output import apply_guides  # llguidance only where a grammar is used
            logits = apply_guides(logits, rows)
        if adjusted:  # one pass over the batch, not four
            logits = apply_repetition_penalty(apply_output_penalties(apply_logit_bias(logits, rows), rows), rows)
            logits = apply_bans(logits, rows)
        if on_gpu:  # the kernels check each row themselves, in the passes they make anyway
            return self._sample_gpu(logits, rows, staged)
        # [S]: amax propagates NaN, is +inf if any entry is, and -inf only if all are
        sane = logits.amax(dim=-1).isfinite()
        tokens = self._sample(logits, rows, staged)
        return torch.where(sane, tokens, INVALID_TOKEN)  # rows are independent: a bad one harms none

    def stage(self, rows: list[SampleRow], vocab_size: int, device: torch.device,
              stage: Stage) -> SamplingTensors | None:
        """The rows' per-row tensors through `stage` (a Stage: StepInputs' one copy), for `sample`;
        None when every row is greedy. Draws the unseeded rows' GPU seeds now, in `sample`'s stead."""
        return stage_sampling(rows, vocab_size, device, stage, self._host_rng)

    def _sample_gpu(self, logits: torch.Tensor, rows: list[SampleRow], staged: SamplingTensors | None) -> torch.Tensor:
        """The GPU's way: greedy rows by the one-pass argmax, the others by the sort-free kernel, which
        reads the logits in their dtype and applies temperature, top-k, top-p and min-p itself. Each
        kernel gives INVALID_TOKEN for a row it cannot sample."""
        greedy = [r.greedy for r in rows]
        if all(greedy):
            return greedy_kernel()(logits, INVALID_TOKEN)
        device = logits.device
        idx_t = None
        if any(greedy):
            idx_t = staged.random_rows if staged is not None else on_device(
                [i for i, g in enumerate(greedy) if not g], torch.int64, device)
            rows = [r for r in rows if not r.greedy]
        # [R, 3] temperature, top_p, min_p and [R] seeds: staged with the step's inputs, or copied here
        floats = staged.params if staged is not None else on_device(
            [[r.params.temperature, r.params.top_p, r.params.min_p] for r in rows], torch.float32, device)
        seeds = staged.seeds if staged is not None else None
        if seeds is None:
            seeds = on_device(gpu_seeds(rows, self._host_rng).view(np.int64).tolist(), torch.int64, device)
        picked = logits if idx_t is None else logits[idx_t]
        kth = None
        top_k = [r.params.top_k for r in rows]
        if any(k > 0 for k in top_k):
            kth = kth_largest(picked, top_k, None if staged is None else staged.top_k)
        tokens = sort_free_sampler()(picked, floats[:, 0], floats[:, 1], floats[:, 2], seeds, kth, INVALID_TOKEN)
        if idx_t is None:
            return tokens
        out = greedy_kernel()(logits, INVALID_TOKEN)  # [S]; the sampled rows overwritten
        out[idx_t] = tokens
        return out

    def _sample(self, logits: torch.Tensor, rows: list[SampleRow], staged: SamplingTensors | None) -> torch.Tensor:
        greedy = [r.greedy for r in rows]
        if all(greedy):  # fast path: no softmax, no sort, no noise
            return logits.argmax(dim=-1)
        if not any(greedy):
            return self._sample_random(logits, rows, staged)
        out = logits.argmax(dim=-1)  # [S]; sampled rows overwritten below
        idx = [i for i, g in enumerate(greedy) if not g]
        idx_t = staged.random_rows if staged is not None else on_device(idx, torch.int64, logits.device)
        out[idx_t] = self._sample_random(logits[idx_t], [rows[i] for i in idx], staged)
        return out

    def _sample_random(self, logits: torch.Tensor, rows: list[SampleRow],
                       staged: SamplingTensors | None) -> torch.Tensor:
        """Temperature, filters and the exponential race for rows that all sample (the CPU's way)."""
        device = logits.device
        # [S, 3] temperature, top_p, min_p: staged with the step's inputs, or in one pinned buffer, one copy
        floats = staged.params.to(logits.dtype) if staged is not None else on_device(
            [[r.params.temperature, r.params.top_p, r.params.min_p] for r in rows], logits.dtype, device)
        logits = logits.div(floats[:, :1])  # [S, V], a fresh tensor the filters may edit in place
        top_k = [r.params.top_k for r in rows]
        if any(k > 0 for k in top_k):
            apply_top_k(logits, top_k, None if staged is None else staged.top_k)
        top_p = [r.params.top_p for r in rows]
        if any(p < 1.0 for p in top_p):
            apply_top_p(logits, top_p)
        min_p = [r.params.min_p for r in rows]
        if any(p > 0.0 for p in min_p):
            apply_min_p(logits, min_p, floats[:, 2])
        probs = logits.softmax(dim=-1)  # [S, V]; filtered entries are exactly 0
        q = self._exponential_noise(probs, rows)
        return probs.div_(q).argmax(dim=-1)

    def _exponential_noise(self, like: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
        """Exponential(1) noise shaped like `like` [S, V]; seeded rows get their own stream."""
        q = torch.empty_like(like)
        seeded = [i for i, r in enumerate(rows) if r.params.seed is not None]
        if not seeded:
            q.uniform_(generator=self._engine_generator(like.device))
        else:
            unseeded = [i for i, r in enumerate(rows) if r.params.seed is None]
            if unseeded:
                noise = torch.empty(len(unseeded), like.shape[1], device=like.device, dtype=like.dtype)
                noise.uniform_(generator=self._engine_generator(like.device))
                q[on_device(unseeded, torch.int64, like.device)] = noise
            gen = self._seeded_generator(like.device)
            for i in seeded:  # one generator per row is the price of batch-independence
                r = rows[i]
                gen.manual_seed(row_seed(r.params.seed, r.sample_index, r.step))
                q[i].uniform_(generator=gen)  # q[i] is a contiguous [V] view, as if alone
        # -log U is Exponential(1), and on the CPU 5x faster than exponential_. U in [0, 1): U = 0
        # gives q = inf, a score of 0 (never NaN); U < 1 keeps q > 0, so no division by zero.
        return q.log_().neg_()

    def _engine_generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(self._generator_seed)
            self._generators[device] = gen
        return self._generators[device]

    def _seeded_generator(self, device: torch.device) -> torch.Generator:
        if device not in self._seeded:
            self._seeded[device] = torch.Generator(device=device)
        return self._seeded[device]


def on_device(data: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list as a tensor on `device`; on a GPU through pinned memory and a non-blocking copy,
    so that the host does not wait for the work queued before it (a pageable copy would)."""
    host = torch.tensor(data, dtype=dtype)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def apply_logit_bias(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
    """Add each row's logit_bias to its tokens (OpenAI's; -100 all but bans a token, 100 all but
    forces it); a new tensor if any row has one, else `logits` itself."""
    idx = [i for i, r in enumerate(rows) if r.params.logit_bias]
    if not idx:
        return logits
    pairs = [(i, t, b) for i in idx for t, b in rows[i].params.logit_bias]
    device = logits.device
    row_of = on_device([p[0] for p in pairs], torch.int64, device)
    cols = on_device([p[1] for p in pairs], torch.int64, device)
    bias = on_device([p[2] for p in pairs], logits.dtype, device)
    out = logits.clone()
    out[row_of, cols] += bias  # (row, token) pairs are unique: a dict's keys
    return out


def apply_bans(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
    """-inf for each row's banned ids (a row whose every id is banned fails, as any row without a
    finite logit does); a new tensor if any row bans one, else `logits` itself."""
    pairs = [(i, t) for i, r in enumerate(rows) for t in r.banned]
    if not pairs:
        return logits
    out = logits.clone()
    index = (on_device([p[0] for p in pairs], torch.int64, logits.device),
             on_device([p[1] for p in pairs], torch.int64, logits.device))
    out.index_put_(index, logits.new_full((len(pairs),), float("-inf")))  # a Python scalar would be copied over
    return out


def apply_output_penalties(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
    """OpenAI's presence and frequency penalties, over each row's output so far (not its prompt):
    logit -= frequency_penalty x count + presence_penalty x (count > 0), as vLLM applies them."""
    idx = [i for i, r in enumerate(rows) if r.step and (r.params.presence_penalty or r.params.frequency_penalty)]
    if not idx:
        return logits
    entries = []
    for i in idx:
        p = rows[i].params
        for token, count in Counter(rows[i].token_ids[-rows[i].step:]).items():
            entries.append((i, token, p.frequency_penalty * count + p.presence_penalty))
    device = logits.device
    row_of = on_device([e[0] for e in entries], torch.int64, device)
    cols = on_device([e[1] for e in entries], torch.int64, device)
    penalty = on_device([e[2] for e in entries], logits.dtype, device)
    out = logits.clone()
    out[row_of, cols] -= penalty
    return out


def apply_repetition_penalty(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
    """Penalise every token already in a row's prompt or output; returns a new tensor if any row
    has a penalty, else `logits` itself.

    Positive logits are divided by the penalty and negative ones multiplied, so a penalty > 1
    always makes a seen token less likely (the CTRL / HF / vLLM convention).
    """
    idx = [i for i, r in enumerate(rows) if r.params.repetition_penalty != 1.0 and r.token_ids]
    if not idx:
        return logits
    device = logits.device
    # [T] each: a row, a token and its penalty per seen token, built on the host (a repeat_interleave
    # on the device would have to read its counts back)
    row_of = on_device([i for i in idx for _ in rows[i].token_ids], torch.int64, device)
    cols = on_device(list(chain.from_iterable(rows[i].token_ids for i in idx)), torch.int64, device)
    penalty = on_device([rows[i].params.repetition_penalty for i in idx for _ in rows[i].token_ids],
                        logits.dtype, device)
    seen = logits[row_of, cols]  # [T]; only the seen entries, never a dense [S, V] pass
    out = logits.clone()
    # A token seen twice is written twice with the same value, so the repeat is harmless.
    out[row_of, cols] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return out


def kth_largest(logits: torch.Tensor, top_k: list[int], ks: torch.Tensor | None = None) -> torch.Tensor:
    """[S] float32: each row's k-th largest logit (ties count: the k-th value of a descending sort),
    -inf for a row whose k is 0 (off) or the whole vocabulary. A topk of the largest k, no full sort;
    the size comes from the host, never from a device value.

    ks: the rows' clipped ks [S] int64 on the device, if already there (staged)."""
    vocab = logits.shape[1]
    host_ks = [clip_top_k(k, vocab) for k in top_k]
    if ks is None:
        ks = on_device(host_ks, torch.int64, logits.device)
    # the largest k that filters: a row without top-k (k = the vocabulary) must not make every row sort it all
    k_max = max((k for k in host_ks if k < vocab), default=1)
    top_values = logits.topk(k_max, dim=-1).values  # [S, k_max], descending
    kth = top_values.gather(1, (ks.clamp(max=k_max) - 1)[:, None])[:, 0].float()
    return kth.masked_fill(ks == vocab, -math.inf)  # a disabled row keeps everything


def apply_top_k(logits: torch.Tensor, top_k: list[int], ks: torch.Tensor | None = None) -> None:
    """Keep each row's k largest logits (k 0 keeps all), in place, without a full sort; ties with
    the k-th value are kept. ks: as kth_largest's."""
    logits.masked_fill_(logits < kth_largest(logits, top_k, ks)[:, None].to(logits.dtype), -math.inf)


def apply_top_p(logits: torch.Tensor, top_p: list[float]) -> None:
    """Nucleus filter, in place: keep the smallest set of most likely tokens whose mass reaches p.

    A token is dropped when the mass of the tokens sorted before it is already >= p, so the most
    likely token always stays. A full sort of a 50k vocabulary dominates a CPU step, so each row
    first tries its TOP_P_CANDIDATES largest logits; only a row whose candidates hold less than p
    of the mass is sorted in full. Which path a row takes depends on its own logits alone.
    """
    device, vocab = logits.device, logits.shape[1]
    idx = on_device([i for i, p in enumerate(top_p) if p < 1.0], torch.int64, device)
    ps = on_device([p for p in top_p if p < 1.0], logits.dtype, device)[:, None]
    sub = logits[idx]  # [P, V], the rows that filter
    filtered, covered = _nucleus(sub, ps, min(TOP_P_CANDIDATES, vocab))
    if not covered.all():
        rest = (~covered).nonzero().squeeze(1)
        filtered[rest] = _nucleus(sub[rest], ps[rest], vocab)[0]
    logits[idx] = filtered


def _nucleus(logits: torch.Tensor, ps: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-p over each row's k largest logits: the filtered rows [R, V] (dropped = -inf), and
    [R] bool, whether the k candidates hold mass >= p (if not, the row is wrong for this k)."""
    values, order = logits.topk(k, dim=-1)  # [R, k], descending
    probs = (values - logits.logsumexp(dim=-1, keepdim=True)).exp()  # [R, k], over the full row
    mass = probs.cumsum(dim=-1)  # [R, k]
    kept = values.masked_fill(mass - probs >= ps, -math.inf)
    filtered = torch.full_like(logits, -math.inf).scatter_(1, order, kept)
    if k == logits.shape[1]:  # every token was a candidate
        return filtered, torch.ones(len(logits), dtype=torch.bool, device=logits.device)
    return filtered, mass[:, -1] >= ps[:, 0]


def apply_min_p(logits: torch.Tensor, min_p: list[float], ps: torch.Tensor | None = None) -> None:
    """Drop tokens whose probability is below min_p times the row's top probability, in place.

    p_i / p_max = exp(l_i - l_max), so this needs no softmax and ignores earlier filters.
    """
    if ps is None:
        ps = on_device(min_p, logits.dtype, logits.device)
    threshold = logits.amax(dim=-1, keepdim=True) + ps.log()[:, None]  # log 0 = -inf keeps all
    logits.masked_fill_(logits < threshold, -math.inf)
