"""From Hugging Face checkpoint names to our parameters, fused projections included.

HF keeps q/k/v and gate/up as separate matrices; we stack them along the output rows:
qkv_proj = [q (heads*d); k (kv_heads*d); v (kv_heads*d)], gate_up_proj = [gate (I); up (I)].
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from engine.core.config import ModelConfig

# HF projection name -> (our fused parameter's module name, shard index within it)
FUSED: dict[str, tuple[str, int]] = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
# buffers some older checkpoints carry; we compute our own
IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
_PROJ = re.compile(r"^(.*\.)(q_proj|k_proj|v_proj|gate_proj|up_proj)\.(weight|bias)$")


def shard_rows(config: ModelConfig) -> dict[str, list[int]]:
    """Rows of each shard of each fused module, in stacking order."""
    d = config.head_dim
    return {
        "qkv_proj": [config.num_heads * d, config.num_kv_heads * d, config.num_kv_heads * d],
        "gate_up_proj": [config.intermediate_size, config.intermediate_size],
    }


def map_name(hf_name: str) -> tuple[str, int | None]:
    """'model.layers.3.self_attn.k_proj.weight' -> ('model.layers.3.self_attn.qkv_proj.weight', 1).

    Names of unfused parameters map to themselves with shard None.
    """
    m = _PROJ.match(hf_name)
    if m is None:
        return hf_name, None
    prefix, proj, kind = m.groups()
    fused, shard = FUSED[proj]
    return f"{prefix}{fused}.{kind}", shard


def expected_keys(model: nn.Module, config: ModelConfig) -> set[tuple[str, int | None]]:
    """Every (parameter, shard) that a complete checkpoint must provide."""
    rows = shard_rows(config)
    keys: set[tuple[str, int | None]] = set()
    for name, _ in model.named_parameters():
        module = name.rsplit(".", 2)[-2]
        if module in rows:
            keys.update((name, i) for i in range(len(rows[module])))
        else:
            keys.add((name, None))
    return keys


def load_into(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy (HF name, tensor) pairs into `model` (which has a `.config: ModelConfig`).

    lm_head.weight is skipped when the embeddings are tied. Raises ValueError listing unexpected
    names, shape mismatches, and parameters (or fused shards) that no tensor provided.
    """
    config: ModelConfig = model.config
    rows = shard_rows(config)
    params = dict(model.named_parameters())
    loaded: set[tuple[str, int | None]] = set()
    unexpected: list[str] = []
    for hf_name, tensor in weights:
        if IGNORED.match(hf_name) or (config.tie_word_embeddings and hf_name == "lm_head.weight"):
            continue
        name, shard = map_name(hf_name)
        if name not in params:
            unexpected.append(hf_name)
            continue
        dst = params[name].data
        if shard is not None:
            sizes = rows[name.rsplit(".", 2)[-2]]
            dst = dst.narrow(0, sum(sizes[:shard]), sizes[shard])
        if dst.shape != tensor.shape:
            raise ValueError(f"{hf_name}: checkpoint shape {tuple(tensor.shape)}, model expects {tuple(dst.shape)}")
        dst.copy_(tensor)
        loaded.add((name, shard))
    missing = sorted(n if s is None else f"{n}[shard {s}]" for n, s in expected_keys(model, config) - loaded)
    if unexpected or missing:
        raise ValueError(f"checkpoint does not match the model: unexpected {_preview(unexpected)}, "
                         f"missing {_preview(missing)}")


def _preview(names: list[str], limit: int = 10) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "none"
