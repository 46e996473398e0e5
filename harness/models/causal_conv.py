"""The Mamba families' depthwise causal convolution and SiLU, carrying its last inputs.

    out_t = silu(bias + sum_{j < k} w_j in_{t - k + 1 + j})      in_{-k+1} .. in_{-1}: the state

The input comes in channel sections (Mamba-2's x and [B, C], each a product of its own), and
each section's output is a tensor of its own, contiguous when its input is (the scan's passes
over a strided x cost twice as much). Two ways to compute a section:
- float32 inference on CPU (harness.models.onednn): oneDNN's depthwise convolution with the SiLU
  fused, over the contiguous input read as a channels-last image, zero-padded; the first k - 1
  outputs, whose windows reach into the state, are computed by taps and written over the padded
  ones. On a 2048-token piece of the 130m Mamba-2, alone, 3.7 ms per layer against 4.9-5.5 ms by
  taps; within a 4K forward 0.3-0.6% faster (two paired runs).
- otherwise (training, other dtypes and devices), one tap at a time, BLOCK tokens at a time: a
  block's taps and its SiLU pass over memory still in cache (depthwise F.conv1d is slow on CPU,
  worst for single tokens). Each block is computed out of place (differentiable) and copied in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harness.models import onednn

BLOCK = 256  # tokens per block


def causal_conv(
    parts: Sequence[torch.Tensor], state: torch.Tensor, conv: nn.Conv1d
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """parts the input's channel sections (b, l, d_i) with sum d_i = d, state (b, d, k - 1) the
    k - 1 inputs before them, conv a depthwise nn.Conv1d (weight (d, 1, k)) -> silu(conv) of
    each section (b, l, d_i); the last k - 1 inputs (b, d, k - 1), a copy (it keeps no input
    alive)."""
    weight, bias = conv.weight[:, 0], conv.bias  # (d, k), (d,) or None
    k = weight.shape[1]
    outs, ends, lo = [], [], 0
    for x in parts:
        hi = lo + x.shape[-1]
        w, b = weight[lo:hi], None if bias is None else bias[lo:hi]
        before = state[:, lo:hi].transpose(1, 2)  # (b, k - 1, d_i)
        section = _fused if _onednn_takes(x, w, b) else _blocked
        outs.append(section(x, before, w, b))
        ends.append(torch.cat([before, x[:, max(x.shape[1] - k + 1, 0) :]], dim=1))
        lo = hi
    return outs, torch.cat([end[:, end.shape[1] - k + 1 :] for end in ends], -1).mT.contiguous()


def _onednn_takes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether oneDNN computes this section: see onednn.computes; some output's window lies
    wholly past the state (single tokens are all taps)."""
    return onednn.computes(x, weight, bias) and x.shape[1] >= weight.shape[1]


def _fused(
    x: torch.Tensor, before: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x (b, l, d), before (b, k - 1, d), weight (d, k) -> silu(conv) (b, l, d) by oneDNN."""
    (b, l, d), k = x.shape, weight.shape[1]
    image = x.contiguous().mT[:, :, None]  # (b, d, 1, l): channels-last, no copy
    taps = weight[:, None, None].contiguous()  # (d, 1, 1, k)
    padding, stride, dilation = [0, k - 1], [1, 1], [1, 1]
    out = torch.ops.mkldnn._convolution_pointwise(
        image, taps, bias, padding, stride, dilation, d, "swish", [], ""
    )  # (b, d, 1, l + k - 1) channels-last: output t sees inputs t - k + 1 .. t, zero before 0
    out = out[:, :, 0, :l].mT  # (b, l, d): contiguous for one sequence
    if b > 1:
        out = out.contiguous()  # each sequence's rows are followed by the k - 1 padded outputs
    out[:, : k - 1] = _taps(torch.cat([before, x[:, : k - 1]], dim=1), weight.t(), bias)
    return out


def _blocked(
    x: torch.Tensor, before: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x (b, l, d), before (b, k - 1, d), weight (d, k) -> silu(conv) (b, l, d) by taps."""
    (b, l, d), k = x.shape, weight.shape[1]
    weight = weight.t().contiguous()  # (k, d): a strided tap slows every pass
    out = x.new_empty(b, l, d)
    first = min(k - 1, l)  # the outputs whose window reaches into the state
    blocks = [(0, first, torch.cat([before, x[:, :first]], dim=1))]
    starts = range(first, l, BLOCK)
    blocks += [(lo, min(lo + BLOCK, l), x[:, lo - k + 1 : lo + BLOCK]) for lo in starts]
    for lo, hi, window in blocks:
        out[:, lo:hi] = _taps(window, weight, bias)
    return out


def _taps(window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """window (b, k - 1 + t, d), weight (k, d) -> silu(conv) of its last t positions (b, t, d)."""
    k = weight.shape[0]
    t = window.shape[1] - k + 1
    if bias is None:
        out = window[:, :t] * weight[0]
    else:
        out = torch.addcmul(bias, weight[0], window[:, :t])
    for j in range(1, k):
        out.addcmul_(weight[j], window[:, j : j + t])
    return F.silu(out, inplace=True)
