"""int8 / int4 weight-only kernels on CUDA (tinygemm for int4) against the torch reference, and a
quantized engine on the GPU. Skipped where there is no CUDA device."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.synthetic_model import make_model_dir  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402
from engine.models.quantized_linear import dequantize, quantize, quantized_matmul  # noqa: E402


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("shape", [(1536, 576), (576, 1536), (3072, 1024), (49152, 576)])
def test_cuda_kernels_compute_the_reference_product(mode: str, shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    w = torch.randn(shape, device="cuda") * 0.05
    qw = quantize(w, mode, keep_grid=True)
    x = torch.randn(7, shape[1], device="cuda", dtype=torch.bfloat16)
    ref = x.float() @ dequantize(qw).t()
    got = quantized_matmul(x, qw).float()
    assert (got - ref).abs().max() <= 0.02 * ref.abs().max()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_quantized_engine_runs_with_graphs_and_mostly_agrees(mode: str, tmp_path: Path) -> None:
    path = make_model_dir(tmp_path / "q3", dtype=torch.bfloat16, seed=3)
    prompts = [[5, 6, 7, 8, 9] * 20, [11, 12, 13] * 7]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    plain = LLM(str(path), num_blocks=256, max_model_len=512)
    full = [r.outputs[0].token_ids for r in plain.generate(prompts, params)]
    full_bytes = plain.engine.runner.model.weight_bytes_per_token()
    del plain
    llm = LLM(str(path), num_blocks=256, max_model_len=512, quantization=mode)
    assert llm.engine.runner.graphs is not None
    out = [r.outputs[0].token_ids for r in llm.generate(prompts, params)]
    assert all(len(o) == 16 for o in out)
    assert llm.engine.runner.model.weight_bytes_per_token() < 0.55 * full_bytes  # bf16 -> int8 / int4
    if mode == "int8":  # random weights have flat logits: only the first tokens are a fair comparison
        assert sum(a[0] == b[0] for a, b in zip(out, full)) >= 1
