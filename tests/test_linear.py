"""harness.models.linear against float64 products and F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.models.linear import Linear, linear


@pytest.mark.parametrize("shape", [(1, 1, 96), (2, 37, 96), (3, 96)])
@pytest.mark.parametrize("bias", [False, True])
@torch.no_grad()
def test_linear_is_the_product_within_float32_rounding(shape: tuple[int, ...], bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(80, 96, generator=g)
    b = torch.randn(80, generator=g) if bias else None
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    ours, theirs = linear(x, w, b), F.linear(x, w, b)
    assert ours.shape == exact.shape and ours.dtype == torch.float32
    # the rounding of a 96-term float32 sum: well within 96 * eps of the magnitudes summed
    bound = 96 * torch.finfo(torch.float32).eps * (x.abs().double() @ w.abs().double().T)
    assert ((ours.double() - exact).abs() <= bound + 1e-6).all()
    assert ((theirs.double() - exact).abs() <= bound + 1e-6).all()


@torch.no_grad()
def test_strided_inputs_and_weight_rows() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 10, 96, generator=g)[:, ::3]  # every third token: not contiguous
    w = torch.randn(200, 96, generator=g)[50:130]  # rows of a larger weight
    assert (linear(x, w, None) - F.linear(x, w)).abs().max() < 1e-4


def test_autograd_takes_f_linear() -> None:
    layer = Linear(16, 8)
    x = torch.randn(3, 16, requires_grad=True)
    layer(x).square().sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    reference = torch.autograd.grad(F.linear(x, layer.weight, layer.bias).square().sum(), x)[0]
    assert torch.equal(x.grad, reference)


def test_other_dtypes_take_f_linear() -> None:
    x, w = torch.randn(5, 16).bfloat16(), torch.randn(8, 16).bfloat16()
    with torch.no_grad():
        assert torch.equal(linear(x, w, None), F.linear(x, w))
