"""The KV-cache size of one token, explained with the served model's own numbers."""
from __future__ import annotations

from engine.serving.engine_info import EngineInfo


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"


def kv_formula_markdown(info: EngineInfo, model_name: str) -> str:
    """Markdown: 2 x layers x kv_heads x head_dim x bytes, then per block and for the whole pool."""
    per_token = info.kv_bytes_per_token
    tokens = info.num_blocks * info.block_size
    return "\n".join([
        "### KV cache: bytes per token",
        "Every token keeps one key and one value vector per layer and per KV head:",
        "",
        "`bytes/token = 2 (K and V) × layers × kv_heads × head_dim × bytes per element`",
        "",
        f"For **{model_name}** ({info.model_type}, {info.dtype} on {info.device}):",
        "",
        f"`2 × {info.num_layers} × {info.num_kv_heads} × {info.head_dim} × {info.dtype_bytes}"
        f" = {per_token:,} bytes` = **{human_bytes(per_token)} per token**.",
        "",
        f"- one block of {info.block_size} tokens: {human_bytes(info.kv_bytes_per_block)}",
        f"- the pool: {info.num_blocks:,} blocks = {tokens:,} token slots = {human_bytes(info.kv_pool_bytes)}",
        f"- one sequence at the full context ({info.max_model_len:,} tokens):"
        f" {human_bytes(per_token * info.max_model_len)}. Reserving that up front for every request is what a"
        " contiguous cache does; the paged cache hands out one block at a time instead.",
    ])
