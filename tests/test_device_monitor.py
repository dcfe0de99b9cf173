"""The device's utilization in the feed: the process's CPU share on a CPU (labelled so, never a
GPU), and on a GPU the engine's own card, found by UUID whatever CUDA_VISIBLE_DEVICES says."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from server.device_monitor import DeviceMonitor


def test_on_a_cpu_it_reads_this_process_and_says_so() -> None:
    monitor = DeviceMonitor("cpu", min_interval=0.0)
    sample = monitor.sample()
    assert sample["kind"] == "cpu" and "CPU" in sample["name"]
    assert 0.0 <= sample["compute_pct"] <= 100.0 and 0.0 < sample["memory_pct"] <= 100.0
    again = DeviceMonitor("cpu", min_interval=60.0)
    assert again.sample() is again.sample()  # at most once per interval


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_it_reads_the_engines_card_through_nvml() -> None:
    import pynvml

    monitor = DeviceMonitor("cuda:0", min_interval=0.0)
    sample = monitor.sample()
    assert sample["kind"] == "gpu" and sample["name"] == torch.cuda.get_device_name(0)
    assert 0.0 <= sample["compute_pct"] <= 100.0 and sample["memory_gib"] > 0
    pynvml.nvmlInit()
    if pynvml.nvmlDeviceGetCount() > 1:  # the last card, seen as cuda:0 through CUDA_VISIBLE_DEVICES
        last = pynvml.nvmlDeviceGetCount() - 1
        code = ("from server.device_monitor import DeviceMonitor; import pynvml;"
                "m = DeviceMonitor('cuda:0'); print(pynvml.nvmlDeviceGetIndex(m._reader.handle))")
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "CUDA_VISIBLE_DEVICES": str(last)},
                             capture_output=True, text=True, check=True).stdout.split()[-1]
        assert int(out) == last


def test_a_cpu_share_is_a_share_even_between_close_readings() -> None:
    """Two readings a moment apart, the process busy between them: never above 100% of the cores."""
    monitor = DeviceMonitor("cpu", min_interval=0.0)
    for _ in range(20):
        sum(k * k for k in range(20_000))  # busy
        assert 0.0 <= monitor.sample()["compute_pct"] <= 100.0
    import time
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        pass
    assert monitor.sample()["compute_pct"] > 0
