"""The device's measured peaks, for a live roofline: memory bandwidth (a large device-to-device
copy) and matrix-product FLOP/s (a large square product in the serving dtype). Measured once when
the engine starts on a GPU (about a second); a CPU gets none (its figures vary too much with what
else runs to serve as a roof)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DevicePeaks:
    bandwidth: float  # bytes read + written a second
    flops: float  # FLOP a second


def _best_of(fn, repeats: int, sync) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def measure_peaks(device: torch.device, dtype: torch.dtype, copy_mib: int = 1024, n: int = 8192,
                  repeats: int = 5) -> DevicePeaks | None:
    """None off a GPU. The copy counts its bytes twice (read and write), as a roofline's traffic does."""
    if device.type != "cuda":
        return None
    sync = torch.cuda.synchronize
    src = torch.empty(copy_mib * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = _best_of(lambda: dst.copy_(src), repeats, sync)
    bandwidth = 2 * src.numel() / seconds
    del src, dst
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = _best_of(lambda: a @ b, repeats, sync)
    flops = 2 * n**3 / seconds
    del a, b
    torch.cuda.empty_cache()
    return DevicePeaks(bandwidth, flops)
