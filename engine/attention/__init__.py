"""Attention backends behind one interface; `get_backend` picks one by name.

Triton is imported only when its backend is asked for, so the CPU path never needs it, and tests can
set TRITON_INTERPRET before the kernels are defined.
"""
from __future__ import annotations

import os
import warnings

import torch

from engine.attention.backend import AttentionBackend
from engine.attention.torch_backend import TorchAttentionBackend

BACKENDS = ("auto", "torch", "triton")


def get_backend(name: str, device: torch.device | str) -> AttentionBackend:
    """"torch" everywhere; "triton" on CUDA (or on the CPU under TRITON_INTERPRET=1, for tests);
    "auto" is "triton" on CUDA when Triton imports, "torch" elsewhere."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    on_cuda = torch.device(device).type == "cuda"
    if name == "torch" or (name == "auto" and not on_cuda):
        return TorchAttentionBackend()
    try:
        from engine.attention.triton_backend import TritonAttentionBackend
    except ImportError as err:
        if name == "auto":
            warnings.warn(f"triton does not import ({err}); using the torch attention backend on {device}")
            return TorchAttentionBackend()
        raise ImportError(f"the triton attention backend needs the triton package: {err}") from err
    if not on_cuda and os.environ.get("TRITON_INTERPRET", "0").lower() not in ("1", "true", "on"):
        raise ValueError(f"the triton attention backend runs on CUDA devices, not {device} "
                         "(set TRITON_INTERPRET=1 to run its kernels in the interpreter)")
    return TritonAttentionBackend()


__all__ = ["AttentionBackend", "TorchAttentionBackend", "get_backend"]
