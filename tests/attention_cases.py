"""Random paged-attention steps shared by the attention backend and kernel tests."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from engine.runner.forward_metadata import ForwardMetadata, ScheduledChunk
from engine.runner.step_inputs import build_metadata


@dataclass
class AttentionCase:
    """One step over a paged cache whose earlier tokens (each sequence's cached prefix) are written.

    The cache is full of `poison` everywhere else, including this step's slots: store_kv must fill them.
    """

    meta: ForwardMetadata
    cache: torch.Tensor  # [2, num_blocks, block_size, kv_heads, head_dim]
    q: torch.Tensor  # [T, heads, head_dim]
    new_k: torch.Tensor  # [T, kv_heads, head_dim], this step's keys, to store
    new_v: torch.Tensor
    full_k: list[torch.Tensor]  # per sequence [context_len, kv_heads, head_dim]: prefix + new
    full_v: list[torch.Tensor]
    qs: list[torch.Tensor]  # per sequence [query_len, heads, head_dim]

    @property
    def flat_cache(self) -> torch.Tensor:
        """[2, num_slots, kv_heads, head_dim] view of the cache."""
        return self.cache.view(2, -1, *self.cache.shape[-2:])

    def stored_cache(self) -> torch.Tensor:
        """A copy of the cache with this step's K/V written too (what store_kv must produce)."""
        cache = self.cache.clone()
        flat = cache.view(2, -1, *cache.shape[-2:])
        flat[0, self.meta.slot_mapping], flat[1, self.meta.slot_mapping] = self.new_k, self.new_v
        return cache


def build_case(
    specs: list[tuple[int, int]], block_size: int, group: int, seed: int, *,
    num_kv_heads: int = 2, head_dim: int = 16, dtype: torch.dtype = torch.float32,
    shared_prefix: int = 0, poison: float = float("nan"), spare_blocks: int = 3,
) -> AttentionCase:
    """specs: (cached prefix length, query length) per sequence, all in one step.

    Block tables are random, non-contiguous blocks. With shared_prefix > 0 (a multiple of block_size,
    at most every prefix) all sequences start with the same tokens in the same physical blocks, as
    the prefix cache would give them.
    """
    assert shared_prefix % block_size == 0 and all(p >= shared_prefix for p, _ in specs)
    gen = torch.Generator().manual_seed(seed)
    heads = num_kv_heads * group
    shared_blocks = shared_prefix // block_size
    need = [math.ceil((p + n) / block_size) - shared_blocks for p, n in specs]
    num_blocks = shared_blocks + sum(need) + spare_blocks  # spare blocks stay poisoned
    cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), poison, dtype=dtype)
    flat = cache.view(2, -1, num_kv_heads, head_dim)
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    shared_table, perm = perm[:shared_blocks], perm[shared_blocks:]

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    shared_k, shared_v = randn(shared_prefix, num_kv_heads, head_dim), randn(shared_prefix, num_kv_heads, head_dim)
    chunks, full_k, full_v, qs = [], [], [], []
    for (prefix, n), blocks in zip(specs, need):
        table, perm = shared_table + perm[:blocks], perm[blocks:]
        own = prefix + n - shared_prefix
        k = torch.cat([shared_k, randn(own, num_kv_heads, head_dim)])
        v = torch.cat([shared_v, randn(own, num_kv_heads, head_dim)])
        slots = torch.tensor([table[p // block_size] * block_size + p % block_size for p in range(prefix)],
                             dtype=torch.int64)
        flat[0, slots], flat[1, slots] = k[:prefix], v[:prefix]
        chunks.append(ScheduledChunk([0] * n, prefix, table, 1))
        full_k.append(k)
        full_v.append(v)
        qs.append(randn(n, heads, head_dim))
    meta = build_metadata(chunks, block_size, "cpu")
    new_k = torch.cat([k[p:] for k, (p, _) in zip(full_k, specs)])
    new_v = torch.cat([v[p:] for v, (p, _) in zip(full_v, specs)])
    return AttentionCase(meta, cache, torch.cat(qs), new_k, new_v, full_k, full_v, qs)


def random_specs(rng: random.Random, num_seqs: int, max_len: int = 40) -> list[tuple[int, int]]:
    """A shuffled mix of decodes, fresh prefills and prefill chunks over a cached prefix."""
    kinds = [
        lambda: (rng.randint(0, max_len), 1),  # decode (prefix 0: a one-token prompt)
        lambda: (0, rng.randint(2, max_len)),  # prefill
        lambda: (rng.randint(1, max_len), rng.randint(2, max(2, max_len // 2))),  # chunk after a cached prefix
    ]
    specs = [kinds[i % 3]() for i in range(num_seqs)]
    rng.shuffle(specs)
    return specs
