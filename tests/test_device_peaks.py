"""The device's peaks for the roofline: none on a CPU; on a GPU, a bandwidth and a FLOP rate
within what any datacentre card of the last decade can do."""
from __future__ import annotations

import pytest
import torch

from engine.runner.device_peaks import measure_peaks


def test_a_cpu_has_no_measured_peaks() -> None:
    assert measure_peaks(torch.device("cpu"), torch.float32) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_measures_its_bandwidth_and_flop_rate() -> None:
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    peaks = measure_peaks(torch.device("cuda"), dtype, copy_mib=256, n=4096, repeats=3)
    assert 1e11 < peaks.bandwidth < 2e13  # 100 GB/s to 20 TB/s
    assert 1e12 < peaks.flops < 1e16  # 1 TFLOP/s to 10 PFLOP/s
