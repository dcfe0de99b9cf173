"""The CPU's blocked weight layout gives F.linear's products within fp32 rounding (bit for bit from 16
rows on a 2-core EPYC, not on a 2-core Xeon: MKL picks its kernels by CPU); padding of odd output
sizes is invisible; empty and large inputs take F.linear."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.models.blocked_matmul import BLOCK, MAX_ROWS, block_weight, blocked_linear
from engine.models.layers import Linear


@pytest.mark.parametrize("n, k", [(960, 576), (49152 // 8, 576), (576, 1536), (100, 48), (33, 64)])
@pytest.mark.parametrize("rows", [1, 3, 7, 16, 33, 64])
def test_blocked_product_equals_f_linear(n: int, k: int, rows: int) -> None:
    gen = torch.Generator().manual_seed(n * rows)
    w, x = torch.randn(n, k, generator=gen), torch.randn(rows, k, generator=gen)
    blocked = block_weight(w)
    assert blocked.shape == (-(-n // BLOCK), k, BLOCK) and blocked.is_contiguous()
    out, ref = blocked_linear(x, blocked, n), F.linear(x, w)
    assert out.shape == (rows, n) and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * k ** 0.5)


def test_padded_panels_hold_zeros_past_the_outputs() -> None:
    w = torch.randn(33, 8)
    blocked = block_weight(w)
    assert blocked.shape == (2, 8, BLOCK)
    assert torch.equal(blocked[1, :, 1:], torch.zeros(8, BLOCK - 1))  # columns 33..63
    assert torch.equal(blocked[0].t(), w[:BLOCK]) and torch.equal(blocked[1, :, 0], w[32])


@pytest.mark.parametrize("rows", [0, 1, 16, MAX_ROWS, MAX_ROWS + 1, 300])
def test_packed_linear_with_bias_matches_unpacked(rows: int) -> None:
    torch.manual_seed(rows)
    layer = Linear(48, 80, bias=True)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.randn(rows, 48)
    with torch.no_grad():
        ref = layer(x)
        layer.pack()
        out = layer(x)
    assert out.shape == (rows, 80)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    if rows == 0 or rows > MAX_ROWS:  # F.linear itself
        assert torch.equal(out, ref)
