"""Weight-only int8 / int4 quantization: the kernels against their torch reference, the embedded
model's Q4_1 grid found again, and the quality of the whole model on a text in assets/."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.serving.llm import LLM
from engine.models.quantized_linear import DENSE_ROWS, GROUP, dequantize, quantize, quantized_matmul, unpack_cpu_int4
from engine.core.sampling_params import SamplingParams

TEXT = (Path(__file__).resolve().parent.parent / "assets" / "text" / "lighthouse.txt").read_text()


@pytest.mark.parametrize("mode", ["int8", "int4", "w8a8"])
@pytest.mark.parametrize("shape", [(96, 64), (1536, 576), (576, 1536)])
def test_the_kernels_compute_the_reference_product(mode: str, shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    w = torch.randn(shape) * 0.05
    qw = quantize(w, mode, keep_grid=True)
    x = torch.randn(5, shape[1])
    ref = x @ dequantize(qw).t()
    got = quantized_matmul(x, qw)
    assert got.dtype == x.dtype and got.shape == (5, shape[0])
    assert (got - ref).abs().max() <= 0.01 * ref.abs().max()  # bf16 activations
    step = 1 / 15 if mode == "int4" else 1 / 127  # one grid step of the group's range, at most half of it lost
    span = 2 * w.abs().amax(1, keepdim=True) if mode == "int4" else w.abs().amax(1, keepdim=True)
    assert ((dequantize(qw) - w).abs() <= span * step * 0.51 + 1e-3).all()
    # a quarter (int4: an eighth) of fp32, plus scales (w8a8's in fp32)
    assert qw.nbytes < w.numel() * {"int8": 1.04, "int4": 0.63, "w8a8": 1.07}[mode]


@pytest.mark.parametrize("shape", [(192, 64), (960, 576), (576, 1536), (112, 64)])
def test_a_prefill_sized_int4_product_dequantizes_the_kernels_own_layout(shape: tuple[int, int]) -> None:
    """From DENSE_ROWS rows on, the CPU int4 product reads the grid back out of the kernel's packed
    layout and multiplies in bf16: the same grid, and the reference's product to bf16's precision.
    A width the layout's 64-row blocks do not divide keeps the kernel."""
    torch.manual_seed(1)
    w = torch.randn(shape) * 0.05
    qw = quantize(w, "int4", keep_grid=True)
    grid = unpack_cpu_int4(qw.packed, *shape)
    if shape[0] % 64:
        assert grid is None
    else:
        assert grid is not None and torch.equal(grid.t(), qw.q)
    x = torch.randn(DENSE_ROWS + 3, shape[1])
    ref = x.to(torch.bfloat16).float() @ dequantize(qw).t()
    got = quantized_matmul(x, qw)
    assert got.dtype == x.dtype and got.shape == (DENSE_ROWS + 3, shape[0])
    assert (got - ref).abs().max() <= 0.01 * ref.abs().max()
    # the same rows through the kernel (a few rows): the two paths agree to bf16's precision
    torch.testing.assert_close(got[:4], quantized_matmul(x[:4], qw), atol=0.01 * float(ref.abs().max()), rtol=0)


def test_w8a8_rows_do_not_depend_on_the_rest_of_the_batch() -> None:
    """Each row of x gets its own int8 scale and the sums are integers: a row alone and in a batch
    beside a row 100x larger give the very same logits (a scale per batch would not)."""
    torch.manual_seed(2)
    qw = quantize(torch.randn(300, 64) * 0.05, "w8a8")
    x = torch.randn(4, 64)
    x[2] *= 100
    together = quantized_matmul(x, qw)
    for i in range(4):
        assert torch.equal(quantized_matmul(x[i:i + 1], qw)[0], together[i])


def test_a_q4_1_grid_requantizes_to_itself() -> None:
    """Weights dequantized from Q4_1 (w = d * q + m over groups of 32, q in 0..15 with both ends
    used, as llama.cpp's quantizer makes them) come back on the same grid: int4 keeps the shipped
    weights, up to the bf16 rounding of each group's scale and zero."""
    torch.manual_seed(1)
    n, k = 64, 128
    q = torch.randint(0, 16, (n, k // GROUP, GROUP))
    q[..., 0], q[..., 1] = 0, 15
    d = torch.rand(n, k // GROUP, 1) * 0.01 + 1e-3
    m = -torch.rand(n, k // GROUP, 1) * 0.05
    w = (q * d + m).view(n, k)
    qw = quantize(w, "int4", keep_grid=True)
    assert torch.equal(qw.q.view(n, k // GROUP, GROUP).long(), q)
    # bf16 keeps 8 bits of each scale and zero: at most 2^-8 of |zero| + 8 scales off
    assert (dequantize(qw) - w).abs().max() <= 2**-8 * float(m.abs().max() + 16 * d.max())


def perplexity(llm: LLM) -> tuple[float, list[int]]:
    """exp(mean negative log-likelihood) of TEXT's tokens, and 32 greedy tokens after its start."""
    result = llm.generate([TEXT], SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
    nll = [-lp.token.logprob for lp in result.outputs[0].prompt_logprobs[1:]]
    greedy = llm.generate([TEXT[:400]], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))[0]
    return float(torch.tensor(nll).mean().exp()), greedy.outputs[0].token_ids


def test_the_embedded_models_perplexity_holds(embedded_model_dir: str) -> None:
    """On a text in assets/: int8 within 2% and int4 within 5% of full precision (the issue's bar);
    the greedy continuations agree for a while (the figures are in BENCHMARKS.md)."""
    full, full_tokens = perplexity(LLM(embedded_model_dir, num_blocks=192))
    for mode, bound in (("int8", 0.02), ("int4", 0.05)):
        llm = LLM(embedded_model_dir, num_blocks=192, quantization=mode)
        assert llm.engine.runner.model.weight_bytes_per_token() < (0.26 if mode == "int8" else 0.18) * 537_919_488  # of fp32
        ppl, tokens = perplexity(llm)
        assert abs(ppl / full - 1) <= bound, (mode, ppl, full)
        assert tokens[:4] == full_tokens[:4], mode


def test_int4_is_refused_up_front_on_a_gpu_older_than_sm80() -> None:
    from engine.runner.model_runner import check_quantization_supported

    cuda = torch.device("cuda")
    with pytest.raises(ValueError, match="compute capability 8.0"):
        check_quantization_supported("int4", cuda, capability=(7, 5))  # a T4
    check_quantization_supported("int4", cuda, capability=(9, 0))  # an H100
    check_quantization_supported("int8", cuda, capability=(7, 0))  # a V100 runs int8
    check_quantization_supported("int4", torch.device("cpu"))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_step_of_unfinished_chunks_alone_runs_on_quantized_weights(tmp_path: Path, mode: str) -> None:
    """Two prompts longer than the CPU's prefill chunk: the first step feeds two unfinished chunks and
    samples no row. The last layer then runs on every token (no rows to trim it to): a quantized
    product of 0 rows is not every kernel's case."""
    from benchmarks.synthetic_model import make_model_dir

    tiny = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                intermediate_size=256, vocab_size=97, tie_word_embeddings=True, max_position_embeddings=1024)
    llm = LLM(str(make_model_dir(tmp_path / "tiny", tiny, dtype=torch.float32, seed=0)), dtype="float32",
              device="cpu", quantization=mode, max_model_len=1024, num_blocks=128)
    out = llm.generate([[1 + i % 90 for i in range(300)], [2 + i % 90 for i in range(300)]],
                       SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
    for result in out:
        assert result.outputs[0].finish_reason == "length" and len(result.outputs[0].token_ids) == 2
