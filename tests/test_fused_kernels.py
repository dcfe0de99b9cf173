"""The fused elementwise kernels (RMSNorm, add+RMSNorm, q/k norm + rope, silu*up) against their
plain-torch references, and a whole model built with them against the same model without.

Without CUDA the kernels run in the Triton interpreter (TRITON_INTERPRET=1, set before any kernel
module is imported); with CUDA they run compiled. fp32 must agree to float rounding, bf16 to about
one unit in the last place: the kernels follow the references' rounding order.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton==3.6.0)")
from triton_interpreter import DEVICE  # noqa: E402  (sets TRITON_INTERPRET without CUDA)

from transformers import LlamaConfig, Qwen3Config  # noqa: E402

from engine.attention import TorchAttentionBackend  # noqa: E402
from engine.core.config import ModelConfig  # noqa: E402
from engine.runner.forward_metadata import ScheduledChunk  # noqa: E402
from engine.runner.step_inputs import build_metadata  # noqa: E402
from engine.models import build_model  # noqa: E402
from engine.models.triton_rmsnorm import add_rms_norm, ref_add_rms_norm, ref_rms_norm, rms_norm  # noqa: E402
from engine.models.triton_rotary import ref_rotate_qk, rotate_qk  # noqa: E402
from engine.models.triton_silu_mul import ref_silu_and_mul, silu_and_mul  # noqa: E402
from engine.models.triton_skinny_matmul import (  # noqa: E402
    SplitSums, Tiling, ref_skinny_linear, ref_skinny_silu_mul, skinny_linear, skinny_silu_mul,
)

DTYPES = [torch.float32, torch.bfloat16]
TOKENS = [1, 7, 33]
EPS = 1e-6


@pytest.fixture(autouse=True, scope="module")
def _round_to_nearest_bf16() -> Iterator[None]:
    """Triton 3.6's interpreter truncates fp32 -> bf16 casts; compiled kernels (cvt.rn) and torch round
    to nearest even. These kernels round on purpose, twice per value, so interpret the cast as the GPU
    does, for this file only. (Shared fixes live in triton_interpreter.py; this one may move there.)"""
    if DEVICE != "cpu":
        yield
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    cast = builder.cast_impl

    def cast_rne(self, src, dst_type):  # noqa: ANN001, ANN202
        if src.dtype.scalar != tl.float32 or dst_type.scalar != tl.bfloat16:
            return cast(self, src, dst_type)
        bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32)
        rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        rounded = np.where(np.isnan(src.data), np.uint16(0x7FC0), rounded)
        return interpreter.TensorHandle(rounded, tl.bfloat16)

    builder.cast_impl = cast_rne
    yield
    builder.cast_impl = cast


def assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """fp32: float rounding; bf16: one ulp (2^-8 relative), or 1e-3 near zero."""
    tol = dict(atol=1e-5, rtol=1e-5) if out.dtype == torch.float32 else dict(atol=1e-3, rtol=4e-3)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref.float(), **tol)


def rand(*shape: int, dtype: torch.dtype, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * scale + shift).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("hidden", [64, 96, 576])
def test_rms_norm_and_add_rms_norm_match_reference(hidden: int, tokens: int, dtype: torch.dtype) -> None:
    x = rand(tokens, hidden, dtype=dtype, seed=hidden, scale=3.0)
    w = rand(hidden, dtype=dtype, seed=1, scale=0.2, shift=1.0)
    assert_close(rms_norm(x, w, EPS), ref_rms_norm(x, w, EPS))

    residual = rand(tokens, hidden, dtype=dtype, seed=2)
    ref_residual = residual.clone()
    ref = ref_add_rms_norm(x.clone(), ref_residual, w, EPS)
    out = add_rms_norm(x, residual, w, EPS)
    assert out.data_ptr() == x.data_ptr(), "the output is written over x"
    assert_close(residual, ref_residual)
    torch.testing.assert_close(residual, ref_residual, atol=0, rtol=0)  # a single rounding of the sum: exact
    assert_close(out, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [16, 64, 128])
def test_per_head_rms_norm_of_a_strided_view(head_dim: int, dtype: torch.dtype) -> None:
    qkv = rand(7, 6, head_dim, dtype=dtype, seed=head_dim)
    w = rand(head_dim, dtype=dtype, seed=3, scale=0.2, shift=1.0)
    q = qkv[:, :4]  # [T, heads, head_dim], token stride 6 * head_dim
    assert_close(rms_norm(q, w, EPS), ref_rms_norm(q, w, EPS))


def rope_tables(tokens: int, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, 1, head_dim / 2] as RotaryEmbedding gives them, at scattered positions."""
    pos = torch.randint(0, 4096, (tokens, 1), generator=torch.Generator().manual_seed(tokens)).float()
    freqs = pos * (1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    return freqs.cos().to(dtype).unsqueeze(1).to(DEVICE), freqs.sin().to(dtype).unsqueeze(1).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("head_dim", [16, 64, 128])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_rotate_qk_matches_reference(qk_norm: bool, head_dim: int, tokens: int, dtype: torch.dtype) -> None:
    num_q, num_kv = 4, 2
    qkv = rand(tokens, num_q + 2 * num_kv, head_dim, dtype=dtype, seed=head_dim + tokens, scale=2.0)
    cos, sin = rope_tables(tokens, head_dim, dtype)
    weights = [rand(head_dim, dtype=dtype, seed=s, scale=0.2, shift=1.0) for s in (4, 5)] if qk_norm else [None, None]
    v_before = qkv[:, num_q + num_kv:].clone()
    ref_q, ref_k = ref_rotate_qk(qkv.clone(), num_q, num_kv, cos, sin, *weights, EPS)
    q, k = rotate_qk(qkv, num_q, num_kv, cos, sin, *weights, EPS)
    assert q.data_ptr() == qkv.data_ptr(), "q and k are rotated in place"
    assert_close(q, ref_q)
    assert_close(k, ref_k)
    assert torch.equal(qkv[:, num_q + num_kv:], v_before), "v is untouched"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("inter", [64, 96, 1100])
def test_silu_and_mul_matches_reference(inter: int, tokens: int, dtype: torch.dtype) -> None:
    x = rand(tokens, 2 * inter, dtype=dtype, seed=inter, scale=4.0)
    assert_close(silu_and_mul(x), ref_silu_and_mul(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 5, 16])
@pytest.mark.parametrize("out_features, in_features", [(48, 64), (1000, 300)])
def test_skinny_linear_matches_f_linear(rows: int, out_features: int, in_features: int, dtype: torch.dtype) -> None:
    """Ragged N and K (past the tiles), with and without a bias, from a strided x (a view of rows);
    K whole or cut in chunks (summed by the second kernel), the last chunk ragged."""
    x = rand(rows, 2 * in_features, dtype=dtype, seed=rows)[:, :in_features]
    w = rand(out_features, in_features, dtype=dtype, seed=out_features, scale=in_features ** -0.5)
    b = rand(out_features, dtype=dtype, seed=1)
    for bias, tile in itertools.product((None, b), (None, Tiling(32, 128, 3), Tiling(16, 64, 8))):
        out, ref = skinny_linear(x, w, bias, tile), ref_skinny_linear(x, w, bias)
        tol = dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=1e-2)
        assert out.dtype == ref.dtype and out.shape == ref.shape
        torch.testing.assert_close(out.float(), ref.float(), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 5, 16])
@pytest.mark.parametrize("inter, in_features", [(48, 64), (500, 300)])
def test_skinny_silu_mul_matches_the_two_kernels(rows: int, inter: int, in_features: int, dtype: torch.dtype) -> None:
    """silu(gate) * up inside the gate-up product: the reference's values, and where the tiles are
    the same, the very values of the product kernel followed by silu_and_mul (the same rounding).
    Ragged I and K; tiles cut in chunks along K are declined (silu needs whole sums)."""
    x = rand(rows, 2 * in_features, dtype=dtype, seed=rows)[:, :in_features]
    w = rand(2 * inter, in_features, dtype=dtype, seed=inter, scale=in_features ** -0.5)
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=1e-2)
    for tile in (None, Tiling(32, 128, 1), Tiling(64, 64, 1)):
        out = skinny_silu_mul(x, w, tile)
        assert out is not None and out.dtype == dtype and out.shape == (rows, inter)
        torch.testing.assert_close(out.float(), ref_skinny_silu_mul(x, w).float(), **tol)
    half = Tiling(16, 64, 1)  # a GLU tile of 32 columns is two of 16: the same dots as the product kernel's
    torch.testing.assert_close(skinny_silu_mul(x, w, Tiling(32, 64, 1)), silu_and_mul(skinny_linear(x, w, tile=half)),
                               atol=0, rtol=0)
    assert skinny_silu_mul(x, w, Tiling(32, 64, 2)) is None and skinny_silu_mul(x, w, Tiling(16, 64, 1)) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 7])
def test_add_rms_norm_adds_up_split_sums_as_the_sum_kernel_does(rows: int, dtype: torch.dtype) -> None:
    """A product left as its K chunks' sums, added up inside add_rms_norm: the same residual and the
    same output, bit for bit, as the sum kernel followed by add_rms_norm; with and without a bias."""
    hidden, k = 96, 300
    x = rand(rows, k, dtype=dtype, seed=3)
    w = rand(hidden, k, dtype=dtype, seed=4, scale=k ** -0.5)
    norm_w = rand(hidden, dtype=dtype, seed=5, scale=0.2, shift=1.0)
    residual = rand(rows, hidden, dtype=dtype, seed=6)
    for bias in (None, rand(hidden, dtype=dtype, seed=7)):
        sums = skinny_linear(x, w, bias, Tiling(16, 64, 3), defer_sum=True)
        assert isinstance(sums, SplitSums) and sums.parts.shape == (3, rows, hidden)
        fused_res, unfused_res = residual.clone(), residual.clone()
        out = add_rms_norm(sums, fused_res, norm_w, EPS)
        ref = add_rms_norm(sums.total(), unfused_res, norm_w, EPS)
        assert torch.equal(fused_res, unfused_res), "the residual"
        assert torch.equal(out, ref), "the output"
        # against F.linear's product: a unit in the last place of bf16 there can carry through the sum
        tol = dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=1e-2)
        torch.testing.assert_close(out, ref_add_rms_norm(ref_skinny_linear(x, w, bias), residual.clone(), norm_w, EPS),
                                   **tol)
    whole = skinny_linear(x, w, None, Tiling(16, 64, 1), defer_sum=True)
    assert isinstance(whole, torch.Tensor), "a product over all of K has nothing to defer"


def test_launchers_reject_bad_input() -> None:
    x = rand(3, 64, dtype=torch.float32, seed=0)
    with pytest.raises(AssertionError, match="weight"):
        rms_norm(x, rand(32, dtype=torch.float32, seed=0), EPS)
    with pytest.raises(AssertionError, match="dtype"):
        rms_norm(x, rand(64, dtype=torch.bfloat16, seed=0), EPS)
    with pytest.raises(AssertionError, match="unit stride"):
        silu_and_mul(rand(128, 3, dtype=torch.float32, seed=0).t())
    cos, sin = rope_tables(3, 16, torch.float32)
    with pytest.raises(AssertionError, match="1..16"):
        skinny_linear(rand(17, 64, dtype=torch.float32, seed=0), rand(32, 64, dtype=torch.float32, seed=0))
    with pytest.raises(AssertionError, match="not \\[T"):
        rotate_qk(rand(3, 7, 16, dtype=torch.float32, seed=0), 4, 2, cos, sin, None, None, EPS)


# ---------------------------------------------------------------- the whole model

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6)
CONFIGS = {
    "llama": lambda: LlamaConfig(**TINY),
    "qwen3": lambda: Qwen3Config(**TINY, head_dim=24, tie_word_embeddings=False),
}


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fused_model_matches_unfused(name: str, split: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefill beside a chunk over a cached prefix, then a decode step: the same logits either way.
    split: the skinny kernels cut o_proj's and down_proj's K in chunks (whose sums the next
    add_rms_norm adds up), and gate-up's not (silu*up inside it); the tiny model's own tiles cut none."""
    if split:
        from engine.models import triton_skinny_matmul

        monkeypatch.setattr(triton_skinny_matmul, "tiling",
                            lambda n, k: Tiling(32, 32, 1) if n == 2 * TINY["intermediate_size"] else Tiling(16, 32, 2))
    config = ModelConfig.from_hf(CONFIGS[name]())
    models = [build_model(config, TorchAttentionBackend(), torch.float32, DEVICE, fused=f) for f in (False, True)]
    assert models[1].fused and not models[0].fused
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in models[0].named_parameters():
            scale = 0.2 if p.dim() == 1 else 1.0 if "embed" in n else p.shape[1] ** -0.5
            p.copy_(torch.randn(p.shape, generator=gen) * scale + (1.0 if "norm" in n else 0.0))
    models[1].load_state_dict(models[0].state_dict())
    shape = (2, 16, 4, config.num_kv_heads, config.head_dim)
    caches = [[torch.zeros(shape, device=DEVICE) for _ in range(config.num_layers)] for _ in models]
    steps = [[ScheduledChunk(list(range(3, 14)), 0, [5, 2, 9], 1), ScheduledChunk([7, 8, 9, 10, 11], 0, [0, 4], 1)],
             [ScheduledChunk([20], 11, [5, 2, 9], 1), ScheduledChunk([30, 31, 32], 5, [0, 4], 1)]]
    for chunks in steps:
        meta = build_metadata(chunks, 4, DEVICE)
        with torch.inference_mode():
            unfused, fused = (m.compute_logits(m(meta.input_ids, meta.positions, c, meta))
                              for m, c in zip(models, caches))
        torch.testing.assert_close(fused, unfused, atol=1e-4, rtol=1e-4)
