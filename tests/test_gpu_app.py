"""The app on a GPU: `python app.py` serves chat, API, metrics and the dashboard there (benchmarks/gpu_app_smoke.py,
which exits 1 if any of its checks fails). Skipped without CUDA; the second test also without gradio
(carry it to the GPU machine as wheels: DEVELOPERS.md)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ROOT = Path(__file__).resolve().parent.parent


def test_python_app_py_serves_on_the_gpu(tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason="gradio is not installed here")
    done = subprocess.run([sys.executable, "benchmarks/gpu_app_smoke.py", "--users", "8", "--new-tokens", "32",
                           "--model-dir", str(tmp_path / "model")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "checks passed" in done.stdout and "FAIL" not in done.stdout
