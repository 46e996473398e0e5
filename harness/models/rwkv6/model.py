"""RWKV-6 "Finch" (Peng et al. 2024), in the paper's notation (r, k, v, w, u, g).

    ids (b, l) -> embedding -> LayerNorm ln0 -> n_layer x [time mix; channel mix] -> ln_out -> head

Time mix of one layer, for x (b, l, C) with H heads of N = head_size channels:

    xx = ln1(x);  sx = shift(xx) - xx                   shift: the previous token's xx
    m_{w,k,v,r,g} = tanh((xx + sx mu_x) W1) W2          data-dependent token-shift mixing (LoRA)
    x_* = xx + sx (mu_* + m_*)                          for * in w, k, v, r, g
    r, k, v = x_r Wr, x_k Wk, x_v Wv;  g = silu(x_g Wg) (b, l, H, N)
    w_t = exp(-exp(d + tanh(x_w D1) D2))                decay per key channel, in (0, 1)
    S_t = diag(w_t) S_{t-1} + k_t^T v_t                 S (N x N) per head: key x value
    o_t = r_t (diag(u) k_t^T v_t + S_{t-1})             u: the bonus of the current token
    x = x + Wo (GroupNorm_H(o) * g)

Channel mix: xx = ln2(x); sx = shift(xx) - xx; k = relu((xx + sx mu_k) Wk)^2;
x = x + sigmoid((xx + sx mu_r) Wr) * (k Wv).

The state of a layer is the last xx of each mix and S, so a sequence fed in any pieces gives
the logits of one pass. The wkv recurrence is the core's (harness/models/recurrence.py) with
dt = 1, decay log w per key channel, x = v, B = k, C = r, read before the current token's
insertion (`current=False`), so the mitigations' hooks apply to it; the bonus is added here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.linear import Linear
from harness.models.recurrence import (
    Carried,
    Hooks,
    Partial,
    ScanInputs,
    diagonal_scan,
    in_pieces,
    run_scan,
)

GROUP_NORM_EPS = 1e-5 * 8**2  # RWKV-6 divides by head_size_divisor 8 before its norm
MIX = ("w", "k", "v", "r", "g")  # the order of the five token-shift mixes in W1 / W2


@dataclass(frozen=True)
class Rwkv6Config:
    vocab_size: int
    d_model: int  # C
    n_layer: int
    head_size: int = 64  # N
    d_ffn: int = 0  # channel-mix width; 0 = int(3.5 * C) rounded down to a multiple of 32
    d_mix: int = 32  # rank of the token-shift mixing LoRA (W1, W2)
    d_decay: int = 64  # rank of the decay LoRA (D1, D2)
    norm_eps: float = 1e-5  # LayerNorms

    @property
    def n_head(self) -> int:
        return self.d_model // self.head_size

    @property
    def ffn(self) -> int:
        return self.d_ffn or int(self.d_model * 3.5) // 32 * 32

    @property
    def state_size(self) -> int:
        """wkv state elements over all layers: H x N x N per layer (token shifts aside)."""
        return self.n_layer * self.n_head * self.head_size**2


@dataclass
class Rwkv6State:
    """What RWKV-6 carries between calls."""

    att_x: list[torch.Tensor]  # per layer (b, C): the last ln1 output (time-mix shift)
    ffn_x: list[torch.Tensor]  # per layer (b, C): the last ln2 output (channel-mix shift)
    wkv: list[Any]  # per layer S^T (b, H, N values, N keys) float32, a replacement's, None = 0
    position: int = 0
    partial: list[Partial | None] | None = None  # per layer, kept only for an observer

    def clone(self) -> Rwkv6State:
        return Rwkv6State(
            [t.clone() for t in self.att_x],
            [t.clone() for t in self.ffn_x],
            [None if t is None else t.clone() for t in self.wkv],
            self.position,
            None if self.partial is None else list(self.partial),  # never written to
        )


def bonus(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The current token's term of o_t: (r_t diag(u) k_t^T) v_t; r, k, v (b, l, H, N), u (H, N)."""
    return (r * u * k).sum(-1, keepdim=True) * v


def exclusive_scan(inputs: ScanInputs, h0: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
    """The core's scan in RWKV's form: o_t reads S_{t-1}, the state before token t."""
    return diagonal_scan(inputs, h0, current=False)


class TimeMix(nn.Module):
    def __init__(self, c: Rwkv6Config, layer: int) -> None:
        super().__init__()
        C = c.d_model
        self.config = c
        self.layer = layer
        self.time_maa_x = nn.Parameter(torch.zeros(C))
        self.time_maa = nn.Parameter(torch.zeros(len(MIX), C))  # mu_w, mu_k, mu_v, mu_r, mu_g
        self.time_maa_w1 = nn.Parameter(torch.zeros(C, len(MIX) * c.d_mix))
        self.time_maa_w2 = nn.Parameter(torch.zeros(len(MIX), c.d_mix, C))
        self.time_decay = nn.Parameter(torch.zeros(C))
        self.time_decay_w1 = nn.Parameter(torch.zeros(C, c.d_decay))
        self.time_decay_w2 = nn.Parameter(torch.zeros(c.d_decay, C))
        self.time_faaaa = nn.Parameter(torch.zeros(c.n_head, c.head_size))  # u
        self.receptance = Linear(C, C, bias=False)
        self.key = Linear(C, C, bias=False)
        self.value = Linear(C, C, bias=False)
        self.gate = Linear(C, C, bias=False)
        self.output = Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(c.n_head, C, eps=GROUP_NORM_EPS)

    def forward(
        self,
        xx: torch.Tensor,
        prev: torch.Tensor,
        carried: Carried,
        start: int,
        hooks: Hooks | None,
    ) -> tuple[torch.Tensor, Carried]:
        """xx = ln1(x) (b, l, C), prev (b, C) the previous token's -> out (b, l, C), and what
        the scan carries (S as h (b, H, N values, N keys))."""
        b, length, C = xx.shape
        H, N = self.config.n_head, self.config.head_size
        sx = torch.cat([prev[:, None], xx[:, :-1]], dim=1) - xx
        lora = torch.tanh((xx + sx * self.time_maa_x) @ self.time_maa_w1)  # (b, l, 5 d_mix)
        lora = lora.view(b, length, len(MIX), -1)
        m = torch.einsum("blmd,mdc->mblc", lora, self.time_maa_w2)  # (5, b, l, C)
        xw, xk, xv, xr, xg = (xx + sx * (self.time_maa[i] + m[i]) for i in range(len(MIX)))
        r, k, v = (proj(x).float().view(b, length, H, N) for proj, x in
                   ((self.receptance, xr), (self.key, xk), (self.value, xv)))  # fmt: skip
        d = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        inputs = ScanInputs(  # the recurrence with dt = 1: alpha = w, insertion v k^T, read by r
            x=v,
            dt=v.new_ones(1, 1, 1).expand(b, length, H),
            A=-torch.exp(d.float()).view(b, length, H, N),  # log w_t (b, l, H, N keys)
            B=k,
            C=r,
            start=start,
        )
        o, carried = run_scan(self.layer, inputs, carried, hooks, exclusive_scan)
        o = o + bonus(r, k, v, self.time_faaaa.float())
        norm = self.ln_x  # in float32 whatever the weights' dtype, as o is
        o = F.group_norm(
            o.reshape(b * length, C), H, norm.weight.float(), norm.bias.float(), norm.eps
        )
        o = o.view(b, length, C)
        return self.output(o.to(xx.dtype) * F.silu(self.gate(xg))), carried


class ChannelMix(nn.Module):
    def __init__(self, c: Rwkv6Config) -> None:
        super().__init__()
        C = c.d_model
        self.time_maa_k = nn.Parameter(torch.zeros(C))
        self.time_maa_r = nn.Parameter(torch.zeros(C))
        self.key = Linear(C, c.ffn, bias=False)
        self.receptance = Linear(C, C, bias=False)
        self.value = Linear(c.ffn, C, bias=False)

    def forward(self, xx: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """xx = ln2(x) (b, l, C), prev (b, C) -> out (b, l, C)."""
        sx = torch.cat([prev[:, None], xx[:, :-1]], dim=1) - xx
        k = torch.relu(self.key(xx + sx * self.time_maa_k)) ** 2
        return torch.sigmoid(self.receptance(xx + sx * self.time_maa_r)) * self.value(k)


class Block(nn.Module):
    def __init__(self, c: Rwkv6Config, layer: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.ln2 = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.att = TimeMix(c, layer)
        self.ffn = ChannelMix(c)

    def forward(
        self,
        x: torch.Tensor,
        att_x: torch.Tensor,
        ffn_x: torch.Tensor,
        carried: Carried,
        start: int,
        hooks: Hooks | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Carried]:
        """x (b, l, C) float32 -> x after this layer, and its new state (att_x, ffn_x, scan)."""
        dtype = self.ln1.weight.dtype
        xx = self.ln1(x.to(dtype))
        out, carried = self.att(xx, att_x, carried, start, hooks)
        x = x + out.float()
        yy = self.ln2(x.to(dtype))
        x = x + self.ffn(yy, ffn_x).float()
        return x, xx[:, -1], yy[:, -1], carried


class Rwkv6(nn.Module):
    def __init__(self, config: Rwkv6Config) -> None:
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.d_model)
        self.ln0 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.head = Linear(config.d_model, config.vocab_size, bias=False)

    scan = staticmethod(exclusive_scan)  # the recurrence core's scan, read before each token

    @property
    def heads(self) -> int:
        return self.config.n_head

    @property
    def stat_heads(self) -> int:
        return self.config.n_head

    def init_state(self, batch: int = 1) -> Rwkv6State:
        c, weight = self.config, self.emb.weight
        shift = [weight.new_zeros(batch, c.d_model) for _ in range(c.n_layer)]
        return Rwkv6State(shift, [s.clone() for s in shift], [None] * c.n_layer, 0)

    def forward(
        self,
        ids: torch.Tensor,
        state: Rwkv6State | None = None,
        hooks: Hooks | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, Rwkv6State]:
        """ids (b, l) -> logits (b, l, vocab) float32 ((b, 1, vocab) with last_only), state.

        A long call goes through the layers in pieces of at most piece_tokens(device) tokens
        with the state carried (exact), as Mamba-2 does."""
        if state is None:
            state = self.init_state(ids.shape[0])
        layers = partial(self._layers, hooks=hooks)
        return in_pieces(layers, self._head, ids, state, last_only)

    def _layers(
        self, ids: torch.Tensor, state: Rwkv6State, hooks: Hooks | None
    ) -> tuple[torch.Tensor, Rwkv6State]:
        """One piece through the layers -> the residual stream (b, l, C), the state."""
        x = self.ln0(self.emb(ids)).float()  # residual stream (b, l, C)
        partials = state.partial or [None] * len(self.blocks)
        att, ffn, scans = [], [], []
        for i, block in enumerate(self.blocks):
            carried = Carried(state.wkv[i], partials[i])
            x, a, f, carried = block(
                x, state.att_x[i], state.ffn_x[i], carried, state.position, hooks
            )
            att.append(a)
            ffn.append(f)
            scans.append(carried)
        partial = [s.partial for s in scans] if any(s.partial is not None for s in scans) else None
        position = state.position + ids.shape[1]
        return x, Rwkv6State(att, ffn, [s.ssm for s in scans], position, partial)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, l, C) -> logits (b, l, vocab) float32."""
        return self.head(self.ln_out(x.to(self.head.dtype))).float()
