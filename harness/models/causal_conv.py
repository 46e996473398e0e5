"""The Mamba families' depthwise causal convolution and SiLU, carrying its last inputs.

    out_t = silu(bias + sum_{j < k} w_j in_{t - k + 1 + j})      in_{-k+1} .. in_{-1}: the state

over channels-last inputs one tap at a time (depthwise F.conv1d is slow on CPU, worst for single
tokens), BLOCK tokens at a time: a block's taps and its SiLU pass over memory still in cache
(on a 2048-token piece of the 130m Mamba-2, 4.9 ms per layer instead of 6.5-7.8 ms for whole
tensors; bench/mamba2_cpu.py). Each block is computed out of place (differentiable) and copied
into the outputs, one per channel section: Mamba-2's x, B and C come out contiguous (the passes
over x in its scan and D skip cost twice as much over a strided slice of the conv's output).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 256  # tokens per block


def causal_conv(
    x: torch.Tensor, state: torch.Tensor, conv: nn.Conv1d, sections: Sequence[int] = ()
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """x (b, l, d), state (b, d, k - 1) the k - 1 inputs before x, conv a depthwise nn.Conv1d
    (weight (d, 1, k)) -> silu(conv) split into the channel sections (all d channels in one by
    default), each contiguous (b, l, d_i); the last k - 1 inputs (b, d, k - 1), a copy (it does
    not keep x alive)."""
    weight = conv.weight[:, 0].t().contiguous()  # (k, d): a strided tap slows every pass
    bias = conv.bias
    (b, l, d), k = x.shape, weight.shape[0]
    sections = list(sections) or [d]
    outs = [x.new_empty(b, l, d_i) for d_i in sections]
    before = state.transpose(1, 2)  # (b, k - 1, d)
    first = min(k - 1, l)  # the outputs whose window reaches into the state
    blocks = [(0, first, torch.cat([before, x[:, :first]], dim=1))]
    starts = range(first, l, BLOCK)
    blocks += [(lo, min(lo + BLOCK, l), x[:, lo - k + 1 : lo + BLOCK]) for lo in starts]
    for lo, hi, window in blocks:
        for out, part in zip(outs, _taps(window, weight, bias).split(sections, -1), strict=True):
            out[:, lo:hi] = part
    end = torch.cat([before, x[:, max(l - k + 1, 0) :]], dim=1)  # the window's last inputs
    return outs, end[:, end.shape[1] - k + 1 :].transpose(1, 2).contiguous()


def _taps(window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """window (b, k - 1 + t, d) -> silu(conv) of its last t positions (b, t, d)."""
    k = weight.shape[0]
    t = window.shape[1] - k + 1
    if bias is None:
        out = window[:, :t] * weight[0]
    else:
        out = torch.addcmul(bias, weight[0], window[:, :t])
    for j in range(1, k):
        out.addcmul_(weight[j], window[:, j : j + t])
    return F.silu(out, inplace=True)
