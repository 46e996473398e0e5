"""Linear layers whose float32 inference on CPU goes through oneDNN's matmul.

On the 130m Mamba-2's in_proj over a 2048-token piece, one thread (bench/mamba2_cpu.py times
all three for its floor): MKL's sgemm (torch's F.linear) 96-103 GFLOP/s, oneDNN on the weight as
it is 106-107, oneDNN on a weight reordered once into its blocked layout 111-113. A model
evaluated on CPU (models.base.RecurrentLM) has its projections packed: `pack` swaps each
`Linear` for a `PackedLinear` holding that layout instead of the dense weight (the same size).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.models import onednn
from harness.models.recurrence import piece_tokens


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias): x (..., k), weight (m, k), bias (m,) -> (..., m); through
    oneDNN for float32 CPU tensors with grad mode off."""
    if _onednn_takes(x, weight, bias):
        return _onednn_product(x, weight, bias)
    return F.linear(x, weight, bias)


def _onednn_takes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether oneDNN computes this linear: see onednn.computes; a contiguous weight (oneDNN's
    matmul on a column-major one is ~100x slower than MKL's), k > 0, a bias of shape (m,) if any
    (oneDNN reads no broadcast bias)."""
    return (
        onednn.computes(x, weight, bias)
        and weight.dim() == 2
        and weight.is_contiguous()
        and x.shape[-1] == weight.shape[1] > 0
        and (bias is None or bias.shape == weight.shape[:1])
    )


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) computed by `linear`, whose output rows may
    come in blocks, one product each (`split`), so that each block is contiguous."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, blocks: Sequence[int] = ()
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.blocks = list(blocks) or [out_features]  # rows per product, in order
        assert sum(self.blocks) == out_features, f"blocks {blocks} do not sum to {out_features}"

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (..., in) -> one output (..., m_i) per block of rows: the same sums as forward."""
        rows, biases = self.weight.split(self.blocks), _block_biases(self.bias, self.blocks)
        return [linear(x, w, b) for w, b in zip(rows, biases, strict=True)]


def _block_biases(bias: torch.Tensor | None, blocks: list[int]) -> list[torch.Tensor | None]:
    """A bias (m,) or None split into the rows of each block."""
    return [None] * len(blocks) if bias is None else list(bias.split(blocks))


class PackedLinear(nn.Module):
    """A float32 CPU `Linear` for evaluation whose weight is held in oneDNN's blocked layout, one
    packed tensor per block, in place of the dense weight (the same size); state_dict writes the
    dense weight back under its name. Differentiable in its input (a calibration differentiates
    through the model), not in its weight. Not for deepcopy, `.to()` or load_state_dict: the
    packed tensors are neither parameters nor buffers (pack a copy made before)."""

    def __init__(self, layer: Linear) -> None:
        super().__init__()
        self.in_features, self.out_features, self.blocks = (
            layer.in_features,
            layer.out_features,
            layer.blocks,
        )
        hint = piece_tokens(torch.device("cpu"))  # the rows of the inputs it is laid out for
        rows = layer.weight.detach().split(self.blocks)
        self.packed = [torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), hint) for w in rows]
        self.bias = layer.bias

    dtype = torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert len(self.packed) == 1, "a Linear in blocks is called through split"
        return self.split(x)[0]

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        blocks = zip(self.packed, _block_biases(self.bias, self.blocks), strict=True)
        if not torch.is_grad_enabled():
            return [_onednn_product(x, w, b) for w, b in blocks]
        # on rows, so that the Function's output is no view (the gate writes over z in place)
        rows = x.reshape(-1, x.shape[-1])
        return [_PackedProduct.apply(rows, w, b).view(*x.shape[:-1], -1) for w, b in blocks]

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = torch.cat([w.to_dense() for w in self.packed])
        super()._save_to_state_dict(destination, prefix, keep_vars)  # the bias


def _onednn_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x (..., k) @ W^T + bias by oneDNN's matmul, W (m, k) dense or packed -> (..., m)."""
    bias = None if bias is None else bias.contiguous()
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


class _PackedProduct(torch.autograd.Function):
    """_onednn_product of x (n, k) and a packed W, differentiable in x and the bias: the backward
    unpacks W for its one product, so autograd keeps no dense copy of the weight per call."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        packed: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.packed = packed
        return _onednn_product(x, packed, bias)

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, torch.Tensor | None]:
        needs = ctx.needs_input_grad
        x_grad = grad @ ctx.packed.to_dense() if needs[0] else None
        bias_grad = grad.flatten(0, -2).sum(0) if needs[2] else None
        return x_grad, None, bias_grad


def pack(module: nn.Module) -> nn.Module:
    """module with each float32 CPU `Linear` whose weight it holds once (not tied to another
    module's) swapped for a PackedLinear, where torch has oneDNN; for inference only."""
    if not onednn.ONEDNN:
        return module
    holders = Counter(id(p) for _, p in module.named_parameters(remove_duplicate=False))
    places = [
        (parent, name)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, Linear)
        and holders[id(child.weight)] == 1
        and child.weight.device.type == "cpu"
        and child.dtype == torch.float32
    ]  # not the layers themselves: each is freed as soon as its packed copy replaces it
    for parent, name in places:
        setattr(parent, name, PackedLinear(getattr(parent, name)))
    return module
