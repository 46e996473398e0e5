"""harness.models.linear against float64 products and F.linear."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from harness.models.linear import Linear, PackedLinear, linear, pack
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


def within_rounding(ours: torch.Tensor, x: torch.Tensor, layer: Linear) -> bool:
    """ours equals layer(x) in float64 within the rounding bound of a float32 sum."""
    w, b = layer.weight.double(), None if layer.bias is None else layer.bias.double()
    exact = F.linear(x.double(), w, b)
    bound = x.shape[-1] * torch.finfo(torch.float32).eps * (x.abs().double() @ w.abs().T)
    return bool(((ours.double() - exact).abs() <= bound + 1e-6).all())


@pytest.mark.skipif(not ONEDNN, reason="torch built without oneDNN")
def test_packed_blocks_are_the_product_and_the_state_dict_is_unchanged() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(Linear(96, 80, blocks=[32, 40, 8]), Linear(80, 16, bias=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = [Linear(96, 80, blocks=[32, 40, 8]), Linear(80, 16, bias=False)]
    for layer, source in zip(plain, model, strict=True):
        layer.load_state_dict(source.state_dict())
    first = model[0].weight
    pack(model)
    assert [type(m) for m in model] == [PackedLinear, PackedLinear]
    assert all(first is not p for p in model.parameters())  # the dense weight is let go
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    x = torch.randn(5, 33, 96)
    with torch.no_grad():
        blocks = model[0].split(x)
        assert [b.shape[-1] for b in blocks] == [32, 40, 8]
        assert all(b.is_contiguous() for b in blocks)
        assert within_rounding(torch.cat(blocks, -1), x, plain[0])
        h = torch.randn(5, 33, 80)
        assert within_rounding(model[1](h), h, plain[1])
    # grad mode: F.linear on the unpacked weight, differentiable
    (grad,) = torch.autograd.grad(model[1](h.requires_grad_(True)).sum(), h)
    torch.testing.assert_close(grad, plain[1].weight.detach().sum(0).expand_as(h))  # 16-term sums


@pytest.mark.skipif(not ONEDNN, reason="torch built without oneDNN")
def test_pack_leaves_tied_and_non_float32_layers_dense() -> None:
    embedding, head, wide = torch.nn.Embedding(10, 8), Linear(8, 10, bias=False), Linear(8, 4)
    head.weight = embedding.weight
    model = torch.nn.ModuleList([embedding, head, wide.double(), Linear(8, 4)])
    pack(model)
    assert [type(m) for m in model[1:]] == [Linear, Linear, PackedLinear]


@pytest.mark.skipif(not ONEDNN, reason="torch built without oneDNN")
def test_packed_gradients_keep_no_dense_weight() -> None:
    torch.manual_seed(0)
    dense = Linear(96, 80, blocks=[50, 30])
    packed = pack(torch.nn.Sequential(Linear(96, 80, blocks=[50, 30])))[0]
    packed.bias.data.copy_(dense.bias.detach())
    packed.packed = [
        torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 8)
        for w in dense.weight.detach().split([50, 30])
    ]
    x = torch.randn(4, 96, requires_grad=True)
    saved: list[int] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out = torch.cat(packed.split(x), -1)
    assert max(saved, default=0) < dense.weight.numel() * 50 // 80  # no block of the weight kept
    x_grad, bias_grad = torch.autograd.grad(out.square().sum(), [x, packed.bias])
    expected = torch.autograd.grad(dense(x).square().sum(), [x, dense.bias])
    torch.testing.assert_close(x_grad, expected[0])
    torch.testing.assert_close(bias_grad, expected[1])
