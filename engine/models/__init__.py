"""Model registry: which of our model classes runs a given transformers `model_type`."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from engine.attention.backend import AttentionBackend
from engine.core.config import ModelConfig
from engine.models.llama import LlamaForCausalLM

# Mistral runs as full attention (its sliding window ignored); Qwen2 differs by q/k/v bias,
# Qwen3 by per-head q/k norms, both carried by ModelConfig flags.
MODEL_REGISTRY: dict[str, type[LlamaForCausalLM]] = {
    "llama": LlamaForCausalLM,
    "mistral": LlamaForCausalLM,
    "qwen2": LlamaForCausalLM,
    "qwen3": LlamaForCausalLM,
}


def build_model(
    model_config: ModelConfig, backend: AttentionBackend, dtype: torch.dtype, device: torch.device | str,
    fused: bool | None = None,
) -> LlamaForCausalLM:
    """An inference-only model with uninitialised parameters of `dtype` on `device`; call load_weights next.

    fused: the elementwise ops (norms, rope, silu*up) as Triton kernels; by default on CUDA only,
    where triton is present and the kernels compile. The CPU path runs their plain-torch references.
    """
    if fused is None:
        fused = torch.device(device).type == "cuda"
    cls = MODEL_REGISTRY.get(model_config.model_type)
    if cls is None:
        raise ValueError(f"unsupported model type {model_config.model_type!r}; "
                         f"supported: {', '.join(sorted(MODEL_REGISTRY))}")
    with torch.device(device), _default_dtype(dtype):
        model = cls(model_config, backend, fused)
    return model.requires_grad_(False).eval()


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


__all__ = ["MODEL_REGISTRY", "LlamaForCausalLM", "build_model"]
