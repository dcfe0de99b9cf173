"""The per-row values a step's sampling reads (seeds, clipped top-k, parameters) and their tensors,
staged with the step's inputs (one copy for both).

Only the rows that draw at random need any: their temperature, top-p and min-p, their top-k, and on
a GPU the seeds of the sort-free kernel's noise. `StepInputs` stages them before the forward pass is
queued, so the sampler finds them on the device; `Sampler.sample` without them copies its own (the
path of direct calls and tests), with the same values.
"""
from __future__ import annotations

import hashlib
import importlib
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from engine.runner.staging import Stage

if TYPE_CHECKING:
    from engine.runner.sampler import SampleRow


@dataclass(frozen=True)
class SamplingTensors:
    """The R rows of a step's S that draw at random (R >= 1), their parameters on the device."""

    vocab_size: int  # the logits' width these were made for
    random_rows: torch.Tensor | None  # [R] int64 their rows among the S; None when R == S
    params: torch.Tensor  # [R, 3] float32: temperature, top_p, min_p
    top_k: torch.Tensor | None  # [R] int64 k clipped to the vocabulary (the vocabulary where 0); None if no row has one
    seeds: torch.Tensor | None  # [R] int64 noise seeds of the GPU kernel; None where it does not run


def stage_sampling(rows: list[SampleRow], vocab_size: int, device: torch.device, stage: Stage,
                   host_rng: random.Random) -> SamplingTensors | None:
    """The tensors of `rows`' random draws (None when every row is greedy: argmax needs none).

    Unseeded rows' GPU seeds come from `host_rng` (the sampler's), drawn here in row order as the
    sampler would draw them itself.
    """
    greedy = [r.greedy for r in rows]
    if all(greedy):
        return None
    picked = [i for i, g in enumerate(greedy) if not g]
    drawn = rows if len(picked) == len(rows) else [rows[i] for i in picked]
    random_rows = None if drawn is rows else stage(np.array(picked, dtype=np.int64))
    params = stage(np.array([[r.params.temperature, r.params.top_p, r.params.min_p] for r in drawn],
                            dtype=np.float32))
    top_k = None
    if any(r.params.top_k > 0 for r in drawn):
        top_k = stage(np.array([clip_top_k(r.params.top_k, vocab_size) for r in drawn], dtype=np.int64))
    seeds = None
    if device.type == "cuda" and sort_free_sampler() is not None:
        seeds = stage(gpu_seeds(drawn, host_rng).view(np.int64))
    return SamplingTensors(vocab_size, random_rows, params, top_k, seeds)


@lru_cache(maxsize=4096)
def _seed_key(seed: int) -> int:
    """A request's seed as 64 well-mixed bits (a hash: any int, and nearby seeds differ)."""
    return int.from_bytes(hashlib.blake2b(str(seed).encode(), digest_size=8).digest(), "little")


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 (wrapping): a bijection that scatters nearby inputs."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_seeds(seeds: list[int], sample_indices: list[int], steps: list[int]) -> np.ndarray:
    """[R] uint64 generator seeds, each a function of its triple (seed, sample_index, step) alone:
    distinct triples of one seed get distinct seeds (sample_index and step below 2**32), and the
    rows of a step are mixed at once (a hash per row was 1.7 us, 256 rows a step)."""
    keys = np.fromiter((_seed_key(s) for s in seeds), np.uint64, len(seeds))
    where = (np.array(sample_indices, dtype=np.uint64) << np.uint64(32)) | np.array(steps, dtype=np.uint64)
    return _mix(keys ^ _mix(where + np.uint64(0x9E3779B97F4A7C15)))


_MASK64 = 2**64 - 1


def _mix_int(z: int) -> int:
    """_mix on one Python int (numpy's call overhead is 25x the work for a lone row)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def row_seed(seed: int, sample_index: int, step: int) -> int:
    """One row's row_seeds, in plain Python (the CPU sampler's, once per seeded row)."""
    where = ((sample_index << 32) | step) & _MASK64
    return _mix_int(_seed_key(seed) ^ _mix_int((where + 0x9E3779B97F4A7C15) & _MASK64))


def gpu_seeds(rows: list[SampleRow], host_rng: random.Random) -> np.ndarray:
    """[R] uint64 seeds of the rows' noise in the GPU kernel: a seeded row's own (row_seeds), an
    unseeded row's the host generator's next 64 bits, drawn in row order."""
    seeded = np.array([r.params.seed is not None for r in rows], dtype=bool)
    out = np.zeros(len(rows), dtype=np.uint64)
    if not seeded.all():
        out[~seeded] = np.array([host_rng.getrandbits(64) for r in rows if r.params.seed is None], dtype=np.uint64)
    if seeded.any():
        mine = [r for r in rows if r.params.seed is not None]
        out[seeded] = row_seeds([r.params.seed for r in mine], [r.sample_index for r in mine], [r.step for r in mine])
    return out


def clip_top_k(k: int, vocab_size: int) -> int:
    """A row's k as the filter uses it: at most the vocabulary, the whole vocabulary where off (0)."""
    return min(k, vocab_size) if k > 0 else vocab_size


@lru_cache(maxsize=None)
def triton_function(module: str, name: str) -> Callable[..., torch.Tensor] | None:
    """A Triton kernel's launcher, imported on first use, or None where Triton does not import (the
    torch path serves)."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        return None


def sort_free_sampler() -> Callable[..., torch.Tensor] | None:
    """engine.runner.triton_sample.sample, or None where Triton does not import."""
    return triton_function("engine.runner.triton_sample", "sample")
