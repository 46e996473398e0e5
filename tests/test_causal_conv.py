"""The causal convolution, by taps and by oneDNN, against torch's own depthwise F.conv1d over the
whole sequence."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.models import causal_conv as module
from harness.models.causal_conv import causal_conv
from harness.models.onednn import ONEDNN

pytestmark = pytest.mark.usefixtures("one_thread")


def depthwise(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv1d:
    """A depthwise nn.Conv1d with taps weight (k, d) and bias (d,) or None."""
    k, d = weight.shape
    conv = nn.Conv1d(d, d, k, groups=d, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(weight.t()[:, None])
        if bias is not None:
            conv.bias.copy_(bias)
    return conv.requires_grad_(False)


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (b, k - 1 + l, d) the state's inputs then the new ones -> silu(conv) of the last l."""
    d = x.shape[-1]
    out = F.conv1d(x.transpose(1, 2), weight.t()[:, None], bias, groups=d)  # (b, d, l)
    return F.silu(out).transpose(1, 2)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("length", [1, 2, 3, 5, 21])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("grad", [True, False], ids=["taps", "inference"])
def test_causal_conv_matches_conv1d_and_carries_its_inputs(
    k: int, length: int, with_bias: bool, grad: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "BLOCK", 4)  # several blocks, the last one short
    g = torch.Generator().manual_seed(k * 100 + length)
    b, d = 2, 6
    before = torch.randn(b, k - 1, d, generator=g)
    x = torch.randn(b, length, d, generator=g)
    weight = torch.randn(k, d, generator=g)
    bias = torch.randn(d, generator=g) if with_bias else None
    with torch.set_grad_enabled(grad):
        (out,), state = causal_conv([x], before.transpose(1, 2), depthwise(weight, bias))
    whole = torch.cat([before, x], dim=1)
    assert torch.allclose(out, reference(whole, weight, bias), atol=1e-6)
    assert torch.equal(state, whole[:, whole.shape[1] - k + 1 :].transpose(1, 2))


@pytest.mark.parametrize("grad", [True, False], ids=["taps", "inference"])
def test_causal_conv_in_pieces_equals_one_pass(grad: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 600, 5, generator=g)
    weight, bias = torch.randn(4, 5, generator=g), torch.randn(5, generator=g)
    state, conv = torch.randn(2, 5, 3, generator=g), depthwise(weight, bias)
    with torch.set_grad_enabled(grad):
        (whole,), end = causal_conv([x], state, conv)
        pieces, carried = [], state
        for lo, hi in [(0, 1), (1, 3), (3, 6), (6, 263), (263, 600)]:
            (piece,), carried = causal_conv([x[:, lo:hi]], carried, conv)
            pieces.append(piece)
    # the same sums, rounded alike up to a fused multiply-add (vector body against scalar tail of
    # a short piece), and by oneDNN for all but a piece's first k - 1 outputs
    assert torch.allclose(torch.cat(pieces, dim=1), whole, atol=1e-6)
    assert torch.equal(carried, end)


def test_causal_conv_is_differentiable() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 600, 5, generator=g, requires_grad=True)
    weight, bias = torch.randn(4, 5, generator=g), torch.randn(5, generator=g)
    (whole,), _ = causal_conv([x], torch.zeros(1, 5, 3), depthwise(weight, bias))
    (grad,) = torch.autograd.grad(whole.square().sum(), x)
    padded = torch.cat([torch.zeros(1, 3, 5), x], dim=1)
    (expected,) = torch.autograd.grad(reference(padded, weight, bias).square().sum(), x)
    assert torch.allclose(grad, expected, atol=1e-5)


@torch.no_grad()
def test_causal_conv_sections_are_the_channels_of_one_pass() -> None:
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(2, 300, 9, generator=g)[..., :7]  # a strided input, as a projection's slice
    conv = depthwise(torch.randn(4, 7, generator=g), torch.randn(7, generator=g))
    state = torch.randn(2, 7, 3, generator=g)
    (whole,), end = causal_conv([rows], state, conv)
    parts = [rows[..., :4].contiguous(), rows[..., 4:5].contiguous(), rows[..., 5:]]
    sections, split_end = causal_conv(parts, state, conv)
    assert [s.shape[-1] for s in sections] == [4, 1, 2]
    assert all(s.is_contiguous() for s in sections)
    assert torch.allclose(torch.cat(sections, dim=-1), whole, atol=1e-6)
    assert torch.equal(split_end, end)


def onednn_convolutions(compute: Callable[[], object]) -> int:
    """How many times oneDNN's convolution ran during compute()."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        compute()
    return sum(e.name == "mkldnn::_convolution_pointwise" for e in prof.events())


@pytest.mark.skipif(not ONEDNN, reason="torch built without oneDNN")
def test_float32_inference_of_more_than_the_state_takes_onednn() -> None:
    weight, bias = torch.randn(4, 8), torch.randn(8)
    conv, wide = depthwise(weight, bias), depthwise(weight.double(), bias.double())
    state, x = torch.zeros(1, 8, 3), torch.randn(1, 16, 8)
    with torch.no_grad():
        assert onednn_convolutions(lambda: causal_conv([x[..., :5], x[..., 5:]], state, conv)) == 2
        assert onednn_convolutions(lambda: causal_conv([x[:, :3]], state, conv)) == 0  # all taps
        assert onednn_convolutions(lambda: causal_conv([x.double()], state.double(), wide)) == 0
    assert onednn_convolutions(lambda: causal_conv([x], state, conv)) == 0  # grad mode
