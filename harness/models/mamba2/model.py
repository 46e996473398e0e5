"""The Mamba-2 language model, in the paper's notation (dt, A, B, C, x, h).

    ids (b, l) -> embedding -> n_layer x [u = u + Mixer(RMSNorm(u))] -> norm_f -> lm_head

The residual stream u and the SSM state h are float32 whatever the weights' dtype, and so are
the logits. Every call carries its state exactly: the last d_conv - 1 conv inputs and h per
layer, so a sequence fed in any pieces gives the logits of one pass.

Mixer of one layer, for u (b, l, d_model):

    [z, xBC, dt] = in_proj(u)                    z (b, l, d_inner), dt (b, l, h)
    [x, B, C]    = silu(causal_conv(xBC))        x (b, l, h, p), B and C (b, l, g, n)
    dt           = softplus(dt + dt_bias),  A = -exp(A_log)          (h,)
    y            = scan(x, dt, A, B, C) + D x    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T,
                                                 y_t = C_t h_t
    out          = out_proj(norm(y * silu(z)))   RMSNorm per group of d_inner / g channels
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.causal_conv import causal_conv
from harness.models.linear import Linear
from harness.models.mamba2.config import Mamba2Config
from harness.models.mamba2.ssd import scan
from harness.models.recurrence import Carried, Hooks, Partial, ScanInputs, in_pieces, run_scan


@dataclass
class Mamba2State:
    """What a Mamba-2 carries between calls."""

    conv: list[torch.Tensor]  # per layer (b, conv_dim, d_conv - 1): the last conv inputs
    ssm: list[Any]  # per layer h (b, h, p, n) float32, a replacement scan's state, None = zero
    position: int = 0  # tokens consumed so far
    partial: list[Partial | None] | None = None  # per layer, kept only for an observer

    def clone(self) -> Mamba2State:
        return Mamba2State(
            conv=[c.clone() for c in self.conv],
            ssm=[None if s is None else s.clone() for s in self.ssm],
            position=self.position,
            partial=None if self.partial is None else list(self.partial),  # never written to
        )


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (..., d) any dtype -> (..., d) in the weight's dtype."""
        u = u.float()
        u = u * torch.rsqrt(mean_square(u) + self.eps)
        return u.to(self.weight.dtype).mul_(self.weight)


class GatedRMSNorm(nn.Module):
    """norm(y * silu(z)), normalised over groups of `group_size` channels (norm after gate)."""

    def __init__(self, d: int, group_size: int, eps: float) -> None:
        super().__init__()
        self.group_size = group_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y (b, l, d) float32, z (b, l, d) -> (b, l, d) float32, written over z when z is float32
        (a new l x d tensor would cost a pass over fresh memory)."""
        y = F.silu(z.float(), inplace=True).mul_(y)
        groups = y.view(*y.shape[:-1], -1, self.group_size)  # (b, l, g, d / g)
        scale = torch.rsqrt(mean_square(groups) + self.eps)  # (b, l, g, 1)
        # in place where autograd does not record (it saved groups): a fresh l x d tensor costs
        # ~1 ms per layer and 2048 tokens at 130m
        groups = groups * scale if torch.is_grad_enabled() else groups.mul_(scale)
        return groups.view(y.shape).mul_(self.weight.float())


def mean_square(u: torch.Tensor) -> torch.Tensor:
    """u (..., d) -> the mean of u^2 over d, (..., 1), in one pass without a u^2 tensor."""
    return torch.linalg.vector_norm(u, dim=-1, keepdim=True).square() / u.shape[-1]


class Mixer(nn.Module):
    def __init__(self, config: Mamba2Config, layer: int) -> None:
        super().__init__()
        self.config = config
        self.layer = layer
        c = config
        # one product per row block, each output contiguous: [z, x, [B, C], dt] (the gate's and the
        # scan's passes over a strided slice cost twice as much, the conv's oneDNN path reads a
        # contiguous input); the same sums as one product, as fast (130m, 2048 tokens, one
        # thread: 106.5-107 GFLOP/s for the four, 104 for one)
        blocks = [c.d_inner, c.d_inner, 2 * c.ngroups * c.d_state, c.nheads]
        self.in_proj = Linear(c.d_model, c.d_in_proj, bias=c.bias, blocks=blocks)
        self.conv1d = nn.Conv1d(
            c.conv_dim, c.conv_dim, c.d_conv, groups=c.conv_dim, bias=c.conv_bias
        )  # depthwise, weight (conv_dim, 1, d_conv)
        self.dt_bias = nn.Parameter(torch.empty(c.nheads))
        self.A_log = nn.Parameter(torch.empty(c.nheads))
        self.D = nn.Parameter(torch.empty(c.nheads))
        self.norm = GatedRMSNorm(c.d_inner, c.d_inner // c.ngroups, c.norm_eps)
        self.out_proj = Linear(c.d_inner, c.d_model, bias=c.bias)

    def forward(
        self, u: torch.Tensor, state: LayerState, start: int, hooks: Hooks | None, backend: str
    ) -> tuple[torch.Tensor, LayerState]:
        """u (b, l, d_model) -> out (b, l, d_model), this layer's new state."""
        c = self.config
        b, l, _ = u.shape
        z, x, BC, dt = self.in_proj.split(u.to(self.in_proj.dtype))
        (x, BC), conv_state = causal_conv([x, BC], state.conv, self.conv1d)
        x, (B, C) = x.float(), BC.float().chunk(2, dim=-1)
        inputs = ScanInputs(
            x=x.reshape(b, l, c.nheads, c.headdim),
            dt=F.softplus(dt.float() + self.dt_bias.float()),  # (b, l, h)
            A=-torch.exp(self.A_log.float()),  # (h,)
            B=B.reshape(b, l, c.ngroups, c.d_state),
            C=C.reshape(b, l, c.ngroups, c.d_state),
            start=start,
        )
        ssd = partial(scan, backend=backend, chunk_size=c.chunk_size)
        y, carried = run_scan(self.layer, inputs, state.scan, hooks, ssd)
        y = y.addcmul_(inputs.x, self.D.float()[:, None])  # + D x in place: a scan's y is new
        y = self.norm(y.reshape(b, l, c.d_inner), z)
        return self.out_proj(y.to(self.out_proj.dtype)), LayerState(conv_state, carried)


@dataclass(frozen=True)
class LayerState:
    conv: torch.Tensor  # (b, conv_dim, d_conv - 1)
    scan: Carried  # h (or a replacement scan's state) and an observer's unfinished interval


class Block(nn.Module):
    def __init__(self, config: Mamba2Config, layer: int) -> None:
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = Mixer(config, layer)

    def forward(
        self, u: torch.Tensor, state: LayerState, start: int, hooks: Hooks | None, backend: str
    ) -> tuple[torch.Tensor, LayerState]:
        """u (b, l, d_model) float32 residual stream -> the same after this layer, its state."""
        out, state = self.mixer(self.norm(u), state, start, hooks, backend)
        return out.float().add_(u), state  # out is new: the sum written into it


class Mamba2(nn.Module):
    def __init__(self, config: Mamba2Config) -> None:
        super().__init__()
        self.config = config
        V, d = config.padded_vocab_size, config.d_model
        self.embedding = nn.Embedding(V, d)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = RMSNorm(d, config.norm_eps)
        self.lm_head = Linear(d, V, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """Random weights as mamba-ssm initialises them (for models not loaded from disk)."""
        nn.init.normal_(self.embedding.weight, std=0.02)
        for block in self.layers:
            mixer = block.mixer
            h = mixer.dt_bias.shape[0]
            log_dt = torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            dt = torch.exp(log_dt).clamp_min(1e-4)
            mixer.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
            mixer.A_log.copy_(torch.log(torch.empty(h).uniform_(1.0, 16.0)))
            mixer.D.fill_(1.0)
            mixer.out_proj.weight.div_(math.sqrt(self.config.n_layer))

    def set_projection_dtype(self, dtype: torch.dtype) -> Mamba2:
        """The projections (embedding, in_proj, out_proj, lm_head: nearly all the weights and
        the FLOPs) in dtype; the per-head parameters, the conv, the norms, the residual stream,
        the scan and its state stay float32."""
        self.embedding.to(dtype)
        self.lm_head.to(dtype)
        for block in self.layers:
            block.mixer.in_proj.to(dtype)
            block.mixer.out_proj.to(dtype)
        return self

    @property
    def heads(self) -> int:
        return self.config.nheads

    @property
    def stat_heads(self) -> int:
        return self.config.nheads

    def init_state(self, batch: int = 1) -> Mamba2State:
        c, weight = self.config, self.embedding.weight
        conv = [
            weight.new_zeros(batch, c.conv_dim, c.d_conv - 1) for _ in range(c.n_layer)
        ]  # in the weights' dtype and device
        return Mamba2State(conv=conv, ssm=[None] * c.n_layer, position=0)

    def forward(
        self,
        ids: torch.Tensor,
        state: Mamba2State | None = None,
        hooks: Hooks | None = None,
        backend: str = "auto",
        last_only: bool = False,
    ) -> tuple[torch.Tensor, Mamba2State]:
        """ids (b, l) -> logits (b, l, padded vocab) float32, the state after the l tokens.

        last_only: the logits of the last token only, (b, 1, padded vocab), as a prefill needs
        (the l x vocab logits are most of the memory of a long call).
        A long call goes through the layers in pieces (recurrence.in_pieces)."""
        if state is None:
            state = self.init_state(ids.shape[0])
        layers = partial(self._layers, hooks=hooks, backend=backend)
        return in_pieces(layers, self._head, ids, state, last_only)

    def _layers(
        self, ids: torch.Tensor, state: Mamba2State, hooks: Hooks | None, backend: str
    ) -> tuple[torch.Tensor, Mamba2State]:
        """One piece through the layers -> the residual stream (b, l, d_model), the state."""
        u = self.embedding(ids).float()  # residual stream (b, l, d_model)
        partials = state.partial or [None] * len(self.layers)
        layers = []
        for i, block in enumerate(self.layers):
            layer = LayerState(state.conv[i], Carried(state.ssm[i], partials[i]))
            u, layer = block(u, layer, state.position, hooks, backend)
            layers.append(layer)
        return u, Mamba2State(
            conv=[layer.conv for layer in layers],
            ssm=[layer.scan.ssm for layer in layers],
            position=state.position + ids.shape[1],
            partial=[layer.scan.partial for layer in layers]
            if any(layer.scan.partial is not None for layer in layers)
            else None,
        )

    def _head(self, u: torch.Tensor) -> torch.Tensor:
        """u (b, l, d_model) -> logits (b, l, padded vocab) float32."""
        return self.lm_head(self.norm_f(u).to(self.lm_head.dtype)).float()
