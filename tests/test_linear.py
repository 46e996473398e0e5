"""harness.models.linear against float64 products and F.linear."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from harness.models.linear import Linear, linear
from harness.models.onednn import ONEDNN


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
def test_strided_inputs_weight_rows_and_biases() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 10, 96, generator=g)[:, ::3]  # every third token: not contiguous
    w = torch.randn(200, 96, generator=g)[50:130]  # rows of a larger weight
    biases = [
        None,
        torch.randn(160, generator=g)[::2],  # strided
        torch.randn(300, generator=g)[100:180],  # offset into a larger tensor
        torch.tensor([0.5]).expand(80),  # broadcast: F.linear takes it
        torch.tensor(0.5),  # 0-d: F.linear takes it
    ]
    for b in biases:
        assert (linear(x, w, b) - F.linear(x, w, b)).abs().max() < 1e-4


def onednn_calls(compute: Callable[[], object]) -> int:
    """How many times oneDNN's linear ran during compute()."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        compute()
    return sum(e.name == "mkldnn::_linear_pointwise" for e in prof.events())


@pytest.mark.skipif(not ONEDNN, reason="torch built without oneDNN")
def test_float32_inference_takes_onednn_and_the_rest_f_linear() -> None:
    layer = Linear(16, 8)
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert onednn_calls(lambda: layer(x)) == 1
        assert onednn_calls(lambda: layer.bfloat16()(x.bfloat16())) == 0
        assert onednn_calls(lambda: linear(x, torch.randn(8, 16), torch.tensor(1.0))) == 0
        assert onednn_calls(lambda: linear(x, torch.randn(16, 8).t(), None)) == 0  # column-major
    assert onednn_calls(lambda: layer.float()(x)) == 0  # grad mode on


def test_autograd_takes_f_linear() -> None:
    layer = Linear(16, 8)
    x = torch.randn(3, 16, requires_grad=True)
    layer(x).square().sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    reference = torch.autograd.grad(F.linear(x, layer.weight, layer.bias).square().sum(), x)[0]
    assert torch.equal(x.grad, reference)
