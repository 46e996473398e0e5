"""Linear layers whose float32 inference on CPU goes through oneDNN's matmul.

torch computes a float32 linear on CPU with MKL's sgemm; oneDNN's matmul is faster on the
AVX-512 EPYC this project is measured on: one thread, the in_proj of the 130m Mamba-2 over a
2048-token piece, 106-111 GFLOP/s against MKL's 99-103 (bench/mamba2_cpu.py times both, and
oneDNN on a prepacked weight, for its floor). It sums in another order: the results equal
F.linear's within float32 rounding. With grad mode on, for other dtypes and on other devices,
F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN = torch.backends.mkldnn.is_available()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias): x (..., k), weight (m, k), bias (m,) -> (..., m); through
    oneDNN for float32 CPU tensors with grad mode off."""
    if _onednn_takes(x, weight, bias):
        bias = None if bias is None else bias.contiguous()
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _onednn_takes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether oneDNN computes this linear: float32 on the CPU, grad mode off, k > 0, a bias
    of shape (m,) if any (oneDNN reads no broadcast bias)."""
    tensors = [x, weight] if bias is None else [x, weight, bias]
    return (
        ONEDNN
        and not torch.is_grad_enabled()
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and weight.dim() == 2
        and x.shape[-1] == weight.shape[1] > 0
        and (bias is None or bias.shape == weight.shape[:1])
    )


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) computed by `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
