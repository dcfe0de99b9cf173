"""Attention backends behind one interface; `get_backend` picks one by name."""
from __future__ import annotations

import torch

from engine.attention.backend import AttentionBackend
from engine.attention.torch_backend import TorchAttentionBackend

BACKENDS = ("auto", "torch", "triton")


def get_backend(name: str, device: torch.device | str) -> AttentionBackend:
    """"torch" everywhere; "auto" is "torch" for now; "triton" is not written yet."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "triton":
        raise NotImplementedError(
            f"the triton attention backend is not implemented yet (device {device}); use 'torch' or 'auto'"
        )
    return TorchAttentionBackend()


__all__ = ["AttentionBackend", "TorchAttentionBackend", "get_backend"]
