"""Linear layers whose float32 inference on CPU goes through oneDNN's matmul.

torch computes a float32 linear on CPU with MKL's sgemm; oneDNN's matmul (what torch.compile
emits for CPU linears) is faster on the AVX-512 EPYC this project is measured on: one thread,
the 130m Mamba-2's projections over a 2048-token piece, 109-111 GFLOP/s against MKL's 99-103
(bench/mamba2_cpu.py times both for its floor). It sums in another order: the results equal
F.linear's within float32 rounding. Autograd, other dtypes and other devices take F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN = torch.backends.mkldnn.is_available()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias): x (..., k), weight (m, k), bias (m,) -> (..., m); through
    oneDNN for float32 on CPU when autograd does not record."""
    if (
        ONEDNN
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and not torch.is_grad_enabled()
    ):
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) computed by `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
