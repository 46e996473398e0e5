"""Where torch's oneDNN operators compute our float32 CPU inference.

torch computes a float32 linear on CPU with MKL's sgemm and a depthwise convolution with its
own kernels; oneDNN's matmul and its convolution with a fused SiLU are faster on the AVX-512
EPYC this project is measured on (bench/mamba2_cpu.py). They sum in another order: the results
equal torch's within float32 rounding. With grad mode on (training), for other dtypes and on
other devices, torch's own operators compute.
"""

from __future__ import annotations

import torch

ONEDNN = torch.backends.mkldnn.is_available()


def computes(*tensors: torch.Tensor | None) -> bool:
    """Whether oneDNN computes on these tensors (None, an absent bias, counts as any): float32 on
    the CPU, grad mode off."""
    return (
        ONEDNN
        and not torch.is_grad_enabled()
        and all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors)
    )
