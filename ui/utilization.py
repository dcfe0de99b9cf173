"""Hardware utilization samples: NVML on a GPU; on a CPU the process's CPU share, never called GPU.

Sampled on demand (by the dashboard's refresh), at most once per `min_interval` seconds, so an
unwatched server spends nothing on it.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import psutil


@dataclass(frozen=True)
class UtilSample:
    t: float  # time.perf_counter()
    compute_pct: float  # GPU utilization, or this process's CPU time as % of all cores
    memory_pct: float  # GPU memory used, or this process's resident memory, as % of the total
    memory_gib: float
    engine_busy_pct: float  # share of wall time the engine spent inside steps


@dataclass(frozen=True)
class UtilizationView:
    kind: str  # "gpu" or "cpu"
    compute_label: str
    memory_label: str
    samples: tuple[UtilSample, ...]
    now: float


class _Nvml:
    def __init__(self, index: int) -> None:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.name = pynvml.nvmlDeviceGetName(self._handle)

    def read(self) -> tuple[float, float, float]:
        util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
        mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return float(util), 100.0 * mem.used / mem.total, mem.used / 2**30


class _Process:
    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # the first call only sets the reference point
        self._cores = psutil.cpu_count() or 1
        self._total = psutil.virtual_memory().total

    def read(self) -> tuple[float, float, float]:
        rss = self._proc.memory_info().rss
        return self._proc.cpu_percent(None) / self._cores, 100.0 * rss / self._total, rss / 2**30


class UtilizationMonitor:
    """Keeps the last few minutes of samples; `device` is the engine's (\"cpu\", \"cuda\", \"cuda:1\")."""

    def __init__(self, device: str, busy_fraction: Callable[[], float], min_interval: float = 0.5,
                 keep: int = 360) -> None:
        self._busy = busy_fraction
        self._min_interval = min_interval
        self._lock = threading.Lock()
        self._samples: deque[UtilSample] = deque(maxlen=keep)
        self._reader: _Nvml | _Process = _Process()
        self.kind = "cpu"
        if device.startswith("cuda"):
            try:
                self._reader = _Nvml(int(device.split(":")[1]) if ":" in device else 0)
                self.kind = "gpu"
            except Exception:  # noqa: BLE001 - no NVML: fall back to the process view, labelled so
                pass

    def sample(self) -> None:
        now = time.perf_counter()
        with self._lock:
            if self._samples and now - self._samples[-1].t < self._min_interval:
                return
            compute, mem_pct, mem_gib = self._reader.read()
            self._samples.append(UtilSample(now, compute, mem_pct, mem_gib, 100.0 * self._busy()))

    def view(self) -> UtilizationView:
        if self.kind == "gpu":
            labels = (f"GPU utilization % ({self._reader.name})", "GPU memory used %")
        else:
            labels = ("process CPU % of all cores (CPU run: no GPU)", "process memory % of RAM")
        with self._lock:
            return UtilizationView(self.kind, labels[0], labels[1], tuple(self._samples), time.perf_counter())
