"""How busy the engine's device is, as the hardware sees it: NVML on a GPU, this process's share of
the CPU on a CPU (never called a GPU). Read by the feed's stream once a second while someone watches.

The GPU is found by its UUID, so `cuda:N` is the engine's N-th visible device whatever
CUDA_VISIBLE_DEVICES says (NVML itself counts every GPU of the machine).
"""
from __future__ import annotations

import threading
import time
from typing import Any

import psutil


class _Nvml:
    def __init__(self, device: str) -> None:
        import pynvml  # nvidia-ml-py
        import torch

        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        pynvml.nvmlInit()
        self._nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        name = pynvml.nvmlDeviceGetName(self.handle)
        self.name = name.decode() if isinstance(name, bytes) else name

    def read(self) -> tuple[float, float, float]:
        util = self._nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
        mem = self._nvml.nvmlDeviceGetMemoryInfo(self.handle)
        return float(util), 100.0 * mem.used / mem.total, mem.used / 2**30


class _Process:
    name = "CPU (this process)"

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._cores = psutil.cpu_count() or 1
        self._total = psutil.virtual_memory().total
        self._mark = (time.monotonic(), self._cpu_seconds())
        self._share = 0.0

    def _cpu_seconds(self) -> float:
        times = self._proc.cpu_times()
        return times.user + times.system

    def read(self) -> tuple[float, float, float]:
        """CPU time over wall time since the last reading, as % of all cores (kept from the last
        reading when less than 0.2 s passed: a shorter span gives noise, not a share)."""
        now, cpu = time.monotonic(), self._cpu_seconds()
        if now - self._mark[0] >= 0.2:
            share = 100.0 * (cpu - self._mark[1]) / ((now - self._mark[0]) * self._cores)
            self._share, self._mark = min(100.0, max(0.0, share)), (now, cpu)
        rss = self._proc.memory_info().rss
        return self._share, 100.0 * rss / self._total, rss / 2**30


class DeviceMonitor:
    """`sample()` is the latest reading, taken at most once per `min_interval` seconds."""

    def __init__(self, device: str, min_interval: float = 1.0) -> None:
        self.min_interval = min_interval
        self.kind, self._reader = "cpu", _Process()
        if device.startswith("cuda"):
            try:
                self._reader, self.kind = _Nvml(device), "gpu"
            except Exception:  # noqa: BLE001 - no NVML (or no driver): the process view, labelled so
                pass
        self._lock = threading.Lock()
        self._last: dict[str, Any] | None = None

    def sample(self) -> dict[str, Any]:
        with self._lock:
            now = time.time()
            if self._last is None or now - self._last["t"] >= self.min_interval:
                compute, memory_pct, memory_gib = self._reader.read()
                self._last = {"t": now, "kind": self.kind, "name": self._reader.name, "compute_pct": compute,
                              "memory_pct": memory_pct, "memory_gib": memory_gib}
            return self._last
