"""The Mamba-1 language model (Gu & Dao 2023), in the paper's notation (dt, A, B, C, x, h).

    ids (b, l) -> embedding -> n_layer x [u = u + Mixer(RMSNorm(u))] -> norm_f -> lm_head

Mixer of one layer, for u (b, l, d_model), with d = d_inner channels and n = d_state:

    [x, z]     = in_proj(u)                          x, z (b, l, d)
    x          = silu(causal_conv(x))                depthwise, kernel d_conv
    [r, B, C]  = x_proj(x)                           r (b, l, dt_rank), B and C (b, l, n)
    dt         = softplus(dt_proj(r))                (b, l, d), dt_proj has the bias
    A          = -exp(A_log)                         (d, n): a decay per channel AND state entry
    h_t        = exp(dt_t A) * h_{t-1} + (dt_t x_t) B_t^T      h (d, n), elementwise decay
    y_t        = h_t C_t + D x_t
    out        = out_proj(y * silu(z))

Unlike Mamba-2 (one scalar decay per head), the decay differs per (channel, state entry): in
the recurrence core (harness/models/recurrence.py) each channel is a head of one value (p = 1)
with a decay per state entry, scanned by `diagonal_scan` (token by token on CPU) with the
hooks mitigations and observers use. The
residual stream, the scan and the logits are float32 whatever the weights' dtype; the state
(the last d_conv - 1 conv inputs and h per layer) is carried exactly, so a sequence fed in any
pieces gives the logits of one pass.
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
from harness.models.linear import Linear, linear
from harness.models.mamba1.config import Mamba1Config
from harness.models.mamba2.model import RMSNorm
from harness.models.recurrence import (
    Carried,
    Hooks,
    Partial,
    ScanInputs,
    diagonal_scan,
    in_pieces,
    run_scan,
)


@dataclass
class Mamba1State:
    """What a Mamba-1 carries between calls."""

    conv: list[torch.Tensor]  # per layer (b, d_inner, d_conv - 1): the last conv inputs
    ssm: list[Any]  # per layer h (b, d_inner, 1, d_state) float32, a replacement's, None = zero
    position: int = 0  # tokens consumed so far
    partial: list[Partial | None] | None = None  # per layer, kept only for an observer

    def clone(self) -> Mamba1State:
        return Mamba1State(
            conv=[c.clone() for c in self.conv],
            ssm=[None if s is None else s.clone() for s in self.ssm],
            position=self.position,
            partial=None if self.partial is None else list(self.partial),  # never written to
        )


class Mixer(nn.Module):
    def __init__(self, config: Mamba1Config, layer: int) -> None:
        super().__init__()
        c, d = config, config.d_inner
        self.config = config
        self.layer = layer
        self.in_proj = Linear(c.d_model, 2 * d, bias=c.bias, blocks=[d, d])  # x, z contiguous
        self.conv1d = nn.Conv1d(d, d, c.d_conv, groups=d, bias=c.conv_bias)  # (d, 1, d_conv)
        self.x_proj = Linear(d, c.rank + 2 * c.d_state, bias=False)
        self.dt_proj = nn.Linear(c.rank, d, bias=True)  # computed in float32 whatever its dtype
        self.A_log = nn.Parameter(torch.empty(d, c.d_state))
        self.D = nn.Parameter(torch.empty(d))
        self.out_proj = Linear(d, c.d_model, bias=c.bias)

    def forward(
        self, u: torch.Tensor, conv: torch.Tensor, carried: Carried, start: int, hooks: Hooks | None
    ) -> tuple[torch.Tensor, torch.Tensor, Carried]:
        """u (b, l, d_model) -> out (b, l, d_model), new conv state, what the scan carries."""
        c = self.config
        x, z = self.in_proj.split(u)
        (x,), conv = causal_conv([x], conv, self.conv1d)
        x = x.float()
        r, B, C = self.x_proj(x.to(u.dtype)).float().split([c.rank, c.d_state, c.d_state], -1)
        dt = F.softplus(linear(r, self.dt_proj.weight.float(), self.dt_proj.bias.float()))
        inputs = ScanInputs(  # one head per channel (p = 1), B and C shared (g = 1)
            x=x[..., None],  # (b, l, d, 1)
            dt=dt,  # (b, l, d)
            A=-torch.exp(self.A_log.float()),  # (d, n)
            B=B[:, :, None],  # (b, l, 1, n)
            C=C[:, :, None],
            start=start,
        )
        y, carried = run_scan(self.layer, inputs, carried, hooks, diagonal_scan)
        y = torch.addcmul(y[..., 0], x, self.D.float()).mul_(F.silu(z.float()))  # (y + D x) silu(z)
        return self.out_proj(y.to(u.dtype)), conv, carried


class Block(nn.Module):
    def __init__(self, config: Mamba1Config, layer: int) -> None:
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = Mixer(config, layer)

    def forward(
        self, u: torch.Tensor, conv: torch.Tensor, carried: Carried, start: int, hooks: Hooks | None
    ) -> tuple[torch.Tensor, torch.Tensor, Carried]:
        """u (b, l, d_model) float32 residual stream -> the same after this layer, its state."""
        out, conv, carried = self.mixer(self.norm(u), conv, carried, start, hooks)
        return out.float().add_(u), conv, carried  # out is new: the sum written into it


class Mamba1(nn.Module):
    def __init__(self, config: Mamba1Config) -> None:
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
        """Random weights as mamba-ssm initialises them (S4D-real A, dt in [dt_min, dt_max])."""
        nn.init.normal_(self.embedding.weight, std=0.02)
        for block in self.layers:
            mixer = block.mixer
            d, n = mixer.A_log.shape
            log_dt = torch.rand(d) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            dt = torch.exp(log_dt).clamp_min(1e-4)
            mixer.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
            mixer.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand(d, n))
            mixer.D.fill_(1.0)
            mixer.out_proj.weight.div_(math.sqrt(self.config.n_layer))

    scan = staticmethod(diagonal_scan)  # the recurrence core's scan, a decay per state entry
    stat_heads = 1  # state statistics take a layer's d_inner x d_state state as one

    @property
    def heads(self) -> int:
        return self.config.d_inner  # one head of the core per channel

    def init_state(self, batch: int = 1) -> Mamba1State:
        c, weight = self.config, self.embedding.weight
        conv = [weight.new_zeros(batch, c.d_inner, c.d_conv - 1) for _ in range(c.n_layer)]
        return Mamba1State(conv=conv, ssm=[None] * c.n_layer, position=0)

    def forward(
        self,
        ids: torch.Tensor,
        state: Mamba1State | None = None,
        hooks: Hooks | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, Mamba1State]:
        """ids (b, l) -> logits (b, l, padded vocab) float32 (b, 1, .) with last_only, state.

        A long call goes through the layers in pieces of at most piece_tokens(device) tokens
        with the state carried (exact, as for any split), as Mamba-2 does: bounded working
        memory, and on CPU tensors the allocator reuses instead of fresh pages."""
        if state is None:
            state = self.init_state(ids.shape[0])
        layers = partial(self._layers, hooks=hooks)
        return in_pieces(layers, self._head, ids, state, last_only)

    def _layers(
        self, ids: torch.Tensor, state: Mamba1State, hooks: Hooks | None
    ) -> tuple[torch.Tensor, Mamba1State]:
        """One piece through the layers -> the residual stream (b, l, d_model), the state."""
        u = self.embedding(ids).float()  # residual stream (b, l, d_model)
        partials = state.partial or [None] * len(self.layers)
        conv, scans = [], []
        for i, block in enumerate(self.layers):
            carried = Carried(state.ssm[i], partials[i])
            u, c, carried = block(u, state.conv[i], carried, state.position, hooks)
            conv.append(c)
            scans.append(carried)
        partial = [s.partial for s in scans] if any(s.partial is not None for s in scans) else None
        return u, Mamba1State(conv, [s.ssm for s in scans], state.position + ids.shape[1], partial)

    def _head(self, u: torch.Tensor) -> torch.Tensor:
        """u (b, l, d_model) -> logits (b, l, padded vocab) float32."""
        return self.lm_head(self.norm_f(u)).float()
