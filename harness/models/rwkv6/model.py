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
the logits of one pass. The scan (`wkv`) runs 16 tokens at a time in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CHUNK = 16  # tokens per chunk of the wkv scan
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
    wkv: list[torch.Tensor]  # per layer S (b, H, N, N) float32
    position: int = 0

    def clone(self) -> Rwkv6State:
        return Rwkv6State(
            [t.clone() for t in self.att_x],
            [t.clone() for t in self.ffn_x],
            [t.clone() for t in self.wkv],
            self.position,
        )


def wkv(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_w: torch.Tensor,
    u: torch.Tensor,
    S: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """o_t = r_t (diag(u) k_t^T v_t + S_{t-1}), S_t = diag(w_t) S_{t-1} + k_t^T v_t.

    r, k, v, log_w (b, l, H, N) float32 with log_w = log w <= 0; u (H, N); S (b, H, N, N)
    -> o (b, l, H, N), S after the l tokens. Within a chunk, with c_t = sum_{j <= t} log_w_j
    and e_t = c_{t-1} (e_0 = 0):

        o_t = sum_{s < t} [sum_n r_t exp(e_t - c_s) k_s]_n v_s + (r_t u . k_t) v_t
              + (r_t exp(e_t)) S_0
        S_T = exp(c_{T-1}) S_0 + sum_s (exp(c_{T-1} - c_s) k_s)^T v_s

    Every exponent is <= 0 where it is used (no overflow)."""
    length = r.shape[1]
    o = torch.empty_like(v)
    strict = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=r.device).tril(-1)
    for lo in range(0, length, CHUNK):
        hi = min(lo + CHUNK, length)
        T = hi - lo
        rc, kc, vc = r[:, lo:hi], k[:, lo:hi], v[:, lo:hi]  # (b, T, H, N)
        c = log_w[:, lo:hi].cumsum(1)
        e = c - log_w[:, lo:hi]
        gap = (e[:, :, None] - c[:, None]).masked_fill(~strict[:T, :T, None, None], -torch.inf)
        scores = torch.einsum("bthn,btshn,bshn->bhts", rc, gap.exp(), kc)  # (b, H, T, T)
        bonus = (rc * u * kc).sum(-1)  # (b, T, H)
        o[:, lo:hi] = torch.einsum("bhts,bshn->bthn", scores, vc) + bonus[..., None] * vc
        o[:, lo:hi] += torch.einsum("bthk,bhkn->bthn", rc * e.exp(), S)
        last = c[:, -1]  # (b, H, N)
        S = last.exp()[..., None] * S + torch.einsum(
            "bshk,bshn->bhkn", (last[:, None] - c).exp() * kc, vc
        )
    return o, S


class TimeMix(nn.Module):
    def __init__(self, c: Rwkv6Config) -> None:
        super().__init__()
        C = c.d_model
        self.config = c
        self.time_maa_x = nn.Parameter(torch.zeros(C))
        self.time_maa = nn.Parameter(torch.zeros(len(MIX), C))  # mu_w, mu_k, mu_v, mu_r, mu_g
        self.time_maa_w1 = nn.Parameter(torch.zeros(C, len(MIX) * c.d_mix))
        self.time_maa_w2 = nn.Parameter(torch.zeros(len(MIX), c.d_mix, C))
        self.time_decay = nn.Parameter(torch.zeros(C))
        self.time_decay_w1 = nn.Parameter(torch.zeros(C, c.d_decay))
        self.time_decay_w2 = nn.Parameter(torch.zeros(c.d_decay, C))
        self.time_faaaa = nn.Parameter(torch.zeros(c.n_head, c.head_size))  # u
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.gate = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(c.n_head, C, eps=GROUP_NORM_EPS)

    def forward(
        self, xx: torch.Tensor, prev: torch.Tensor, S: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """xx = ln1(x) (b, l, C), prev (b, C) the previous token's -> out (b, l, C), new S."""
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
        log_w = -torch.exp(d.float()).view(b, length, H, N)
        o, S = wkv(r, k, v, log_w, self.time_faaaa.float(), S)
        o = self.ln_x(o.reshape(b * length, C)).view(b, length, C)
        return self.output(o.to(xx.dtype) * F.silu(self.gate(xg))), S


class ChannelMix(nn.Module):
    def __init__(self, c: Rwkv6Config) -> None:
        super().__init__()
        C = c.d_model
        self.time_maa_k = nn.Parameter(torch.zeros(C))
        self.time_maa_r = nn.Parameter(torch.zeros(C))
        self.key = nn.Linear(C, c.ffn, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(c.ffn, C, bias=False)

    def forward(self, xx: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """xx = ln2(x) (b, l, C), prev (b, C) -> out (b, l, C)."""
        sx = torch.cat([prev[:, None], xx[:, :-1]], dim=1) - xx
        k = torch.relu(self.key(xx + sx * self.time_maa_k)) ** 2
        return torch.sigmoid(self.receptance(xx + sx * self.time_maa_r)) * self.value(k)


class Block(nn.Module):
    def __init__(self, c: Rwkv6Config) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.ln2 = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.att = TimeMix(c)
        self.ffn = ChannelMix(c)

    def forward(
        self, x: torch.Tensor, att_x: torch.Tensor, ffn_x: torch.Tensor, S: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (b, l, C) float32 -> x after this layer, and its new state (att_x, ffn_x, S)."""
        dtype = self.ln1.weight.dtype
        xx = self.ln1(x.to(dtype))
        out, S = self.att(xx, att_x, S)
        x = x + out.float()
        yy = self.ln2(x.to(dtype))
        x = x + self.ffn(yy, ffn_x).float()
        return x, xx[:, -1], yy[:, -1], S


class Rwkv6(nn.Module):
    def __init__(self, config: Rwkv6Config) -> None:
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.d_model)
        self.ln0 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def init_state(self, batch: int = 1) -> Rwkv6State:
        c, weight = self.config, self.emb.weight
        shift = [weight.new_zeros(batch, c.d_model) for _ in range(c.n_layer)]
        S = [
            weight.new_zeros(batch, c.n_head, c.head_size, c.head_size, dtype=torch.float32)
            for _ in range(c.n_layer)
        ]
        return Rwkv6State(shift, [s.clone() for s in shift], S, 0)

    def forward(
        self, ids: torch.Tensor, state: Rwkv6State | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, Rwkv6State]:
        """ids (b, l) -> logits (b, l, vocab) float32 ((b, 1, vocab) with last_only), state."""
        if state is None:
            state = self.init_state(ids.shape[0])
        x = self.ln0(self.emb(ids)).float()  # residual stream (b, l, C)
        att, ffn, wkvs = [], [], []
        for i, block in enumerate(self.blocks):
            x, a, f, S = block(x, state.att_x[i], state.ffn_x[i], state.wkv[i])
            att.append(a)
            ffn.append(f)
            wkvs.append(S)
        if last_only:
            x = x[:, -1:]
        logits = self.head(self.ln_out(x.to(self.head.weight.dtype))).float()
        return logits, Rwkv6State(att, ffn, wkvs, state.position + ids.shape[1])
