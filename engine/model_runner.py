"""Runs one step on the device: block copies, the forward pass over the flattened batch, sampling."""
from __future__ import annotations

import torch

from engine.attention import get_backend
from engine.config import CacheConfig, EngineConfig, ModelConfig
from engine.forward_metadata import ScheduledChunk, build_metadata
from engine.model_loader import load_model
from engine.sampler import SampleRow, Sampler

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


class ModelRunner:
    """Owns the weights, the KV cache tensors and the sampler; knows nothing of scheduling."""

    def __init__(self, config: EngineConfig, model_path: str) -> None:
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.backend = get_backend(config.attention_backend, self.device)
        self.model, self.model_config = load_model(model_path, self.backend, self.dtype, self.device)
        self.block_size = config.cache.block_size
        self.num_blocks = self._count_blocks(config.cache, self.model_config)
        # per layer [2 (K, V), num_blocks, block_size, kv_heads, head_dim]
        shape = (2, self.num_blocks, self.block_size, self.model_config.num_kv_heads, self.model_config.head_dim)
        self.kv_caches = [torch.zeros(shape, dtype=self.dtype, device=self.device)
                          for _ in range(self.model_config.num_layers)]
        self.sampler = Sampler(config.seed)

    @property
    def kv_bytes_per_token(self) -> int:
        return self.model_config.kv_bytes_per_token(torch.finfo(self.dtype).bits // 8)

    def _count_blocks(self, cache: CacheConfig, model: ModelConfig) -> int:
        if cache.num_blocks is not None:
            return cache.num_blocks
        per_block = model.kv_bytes_per_token(torch.finfo(self.dtype).bits // 8) * cache.block_size
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = free * cache.gpu_memory_fraction
        else:
            budget = cache.cpu_kv_gib * 2**30
        return max(1, int(budget // per_block))

    @torch.inference_mode()
    def execute(self, chunks: list[ScheduledChunk], copies: list[tuple[int, int]], rows: list[SampleRow]) -> list[int]:
        """One forward pass; returns one sampled token per row (rows follow the chunks' samples)."""
        self._copy_blocks(copies)
        meta = build_metadata(chunks, self.block_size, self.device)
        hidden = self.model(meta.input_ids, meta.positions, self.kv_caches, meta)
        if not rows:
            return []
        logits = self.model.compute_logits(hidden[meta.logits_indices])
        return self.sampler.sample(logits, rows).tolist()

    def _copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], device=self.device)
        dst = torch.tensor([d for _, d in copies], device=self.device)
        for cache in self.kv_caches:
            cache[:, dst] = cache[:, src]
