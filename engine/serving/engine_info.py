"""Static facts about a built engine (model shape, device, pool size), read once, shared freely."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EngineInfo:
    model: str  # what the engine was asked to run ("embedded", a folder or a hub id)
    model_type: str
    device: str
    dtype: str  # torch dtype name without the "torch." prefix
    dtype_bytes: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    kv_bytes_per_token: int  # 2 x layers x kv_heads x head_dim x dtype_bytes
    block_size: int
    num_blocks: int
    max_model_len: int
    max_num_seqs: int
    max_prompt_chars: int  # a longer prompt cannot fit max_model_len tokens (no token is longer)
    # for a live roofline (0 in recordings made before these existed)
    hidden_size: int = 0
    num_params: int = 0
    matmul_params: int = 0  # weights a token meets in a product: 2 FLOPs each
    peak_bandwidth: float = 0.0  # the device's measured bytes/s (0: not measured, a CPU)
    peak_flops: float = 0.0  # its measured FLOP/s in the serving dtype
    quantization: str = ""  # weight-only int8 | int4, "" for the model's dtype
    weight_bytes: int = 0  # weights one decode step reads, as stored (0: not recorded)
    prefix_caching: bool = True

    @property
    def kv_bytes_per_block(self) -> int:
        return self.kv_bytes_per_token * self.block_size

    @property
    def kv_pool_bytes(self) -> int:
        return self.kv_bytes_per_block * self.num_blocks


def engine_info(engine: Any) -> EngineInfo:
    """Read from an `LLMEngine` (typed loosely so this module imports no torch)."""
    runner, mc = engine.runner, engine.model_config
    dtype_bytes = runner.dtype.itemsize
    peaks = getattr(runner, "peaks", None)
    return EngineInfo(
        model=engine.config.model, model_type=mc.model_type, device=str(runner.device),
        dtype=str(runner.dtype).removeprefix("torch."), dtype_bytes=dtype_bytes, num_layers=mc.num_layers,
        num_kv_heads=mc.num_kv_heads, head_dim=mc.head_dim, kv_bytes_per_token=mc.kv_bytes_per_token(dtype_bytes),
        block_size=engine.config.cache.block_size, num_blocks=runner.num_blocks,
        max_model_len=engine.max_model_len, max_num_seqs=engine.config.scheduler.max_num_seqs,
        max_prompt_chars=engine.prompts.max_chars, hidden_size=mc.hidden_size, num_params=mc.num_params(),
        matmul_params=mc.matmul_params(),
        peak_bandwidth=peaks.bandwidth if peaks else 0.0, peak_flops=peaks.flops if peaks else 0.0,
        quantization=runner.quantization or "", weight_bytes=runner.model.weight_bytes_per_token(),
        prefix_caching=engine.config.cache.enable_prefix_caching,
    )
