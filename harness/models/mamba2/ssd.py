"""The SSD scan of Mamba-2 in plain torch, chunk by chunk, and the scan dispatch.

Per head, with decay alpha_t = exp(dt_t A_t) and insertion dt_t B_t x_t^T:

    h_t = alpha_t h_{t-1} + dt_t B_t x_t^T        h (p, n)
    y_t = C_t h_t                                  (the D x_t skip is the mixer's)

A chunk of L tokens starting from state h_0 is computed as a masked "attention" of L x L plus
two low-rank terms, with cum_t = sum_{j <= t} dt_j A_j (log space, within the chunk):

    y_t  = sum_{s <= t} exp(cum_t - cum_s) (C_t . B_s) dt_s x_s   +   exp(cum_t) C_t h_0
    h_L  = exp(cum_L) h_0  +  sum_s exp(cum_L - cum_s) dt_s x_s B_s^T

Chunks run one after the other carrying h, so memory holds one chunk's L x L block per head
and the output, whatever the sequence length.
"""

from __future__ import annotations

import torch

from harness.models.mamba2.hooks import ScanInputs

BACKENDS = ("auto", "torch", "triton")
TORCH_CHUNK = 64  # tokens per chunk of ssd_scan in the torch backend
NEGLIGIBLE = -60.0  # log of a decay that counts as zero (exp(-60) ~ 1e-26)


class BackendError(ValueError):
    """An unknown scan backend, or one that cannot run here."""


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (b, l, h, p), dt (b, l, h), A (h,) or (b, l, h), B and C (b, l, g, n), h0 (b, h, p, n)
    -> y (b, l, h, p) without the D skip, final state (b, h, p, n). All float32."""
    b, l, h, p = x.shape
    n = B.shape[-1]
    log_alpha = dt * A  # (b, l, h)
    dtx = x * dt[..., None]  # (b, l, h, p): the insertion is (dt x) B^T
    state = x.new_zeros(b, h, p, n) if initial_state is None else initial_state
    y = torch.empty_like(x)
    for start in range(0, l, chunk_size):
        end = min(start + chunk_size, l)
        y[:, start:end], state = _chunk(
            dtx[:, start:end], log_alpha[:, start:end], B[:, start:end], C[:, start:end], state
        )
    return y, state


def _chunk(
    dtx: torch.Tensor, log_alpha: torch.Tensor, B: torch.Tensor, C: torch.Tensor, h0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of L tokens. Heads are laid out as (g, r): r = h / g heads share B and C.

    dtx (b, L, h, p), log_alpha (b, L, h), B and C (b, L, g, n), h0 (b, h, p, n)
    -> y (b, L, h, p), h_L (b, h, p, n).
    """
    b, L, h, p = dtx.shape
    g, n = B.shape[-2:]
    r = h // g
    cum = log_alpha.cumsum(1).view(b, L, g, r)  # cum_t
    B = B.transpose(1, 2)  # (b, g, L, n)
    C = C.transpose(1, 2)  # (b, g, L, n)

    # within the chunk, per head: decay[t, s] = exp(cum_t - cum_s) for s <= t, else 0
    cum_head = cum.permute(0, 2, 3, 1)  # (b, g, r, L)
    segment = cum_head[..., :, None] - cum_head[..., None, :]  # (b, g, r, L, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=dtx.device).tril()
    decay = _exp(segment.masked_fill_(~causal, -torch.inf))
    scores = C @ B.transpose(-1, -2)  # (b, g, L, L): C_t . B_s, shared by the group's heads
    x_head = dtx.view(b, L, g, r, p).permute(0, 2, 3, 1, 4)  # (b, g, r, L, p)
    y_diag = (decay * scores[:, :, None]) @ x_head  # (b, g, r, L, p)

    # from the state carried in: exp(cum_t) C_t h_0, one product per group over its r heads
    h0 = h0.reshape(b, g, r * p, n)
    y_state = (C @ h0.transpose(-1, -2)).view(b, g, L, r, p)  # (b, g, L, r, p)
    y = y_diag.permute(0, 3, 1, 2, 4) + y_state.transpose(1, 2) * _exp(cum)[..., None]

    # the state carried out: exp(cum_L) h_0 + sum_s exp(cum_L - cum_s) (dt x)_s B_s^T
    to_end = _exp(cum[:, -1:] - cum)  # (b, L, g, r): retention from s to the chunk end
    x_end = (dtx.view(b, L, g, r, p) * to_end[..., None]).view(b, L, g, r * p)
    inserted = x_end.permute(0, 2, 3, 1) @ B  # (b, g, r p, n)
    decay_all = _exp(cum[:, -1]).view(b, g, r, 1, 1)  # exp(cum_L)
    h_end = decay_all * h0.view(b, g, r, p, n) + inserted.view(b, g, r, p, n)
    return y.reshape(b, L, h, p), h_end.view(b, h, p, n)


def _exp(log_decay: torch.Tensor) -> torch.Tensor:
    """exp, with decays below exp(NEGLIGIBLE) set to 0: they are lost in float32 rounding anyway,
    and the subnormal numbers they would make slow CPU arithmetic down several times."""
    return torch.exp(log_decay.masked_fill(log_decay < NEGLIGIBLE, -torch.inf))


def recurrent_step(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token, same shapes as ssd_scan with l = 1: h = alpha h + dt B x^T, y = C h."""
    b, _, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g
    alpha = torch.exp(dt * A).reshape(b, g, r, 1, 1)
    dtx = (x * dt[..., None]).reshape(b, g, r, p, 1)
    B = B.reshape(b, g, 1, 1, n)
    C = C.reshape(b, g, 1, n, 1)
    state = dtx * B if h0 is None else alpha * h0.reshape(b, g, r, p, n) + dtx * B
    y = (state @ C).view(b, 1, h, p)
    return y, state.view(b, h, p, n)


def scan(
    inputs: ScanInputs, h0: torch.Tensor | None, backend: str = "auto", chunk_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """The engine's scan: inputs and h0 (b, h, p, n) or None (zero) -> y (b, l, h, p), h.

    backend: "torch" (ssd_scan), "triton" (mamba-ssm's kernels) or "auto" (triton on CUDA when
    mamba-ssm is installed). A single token takes the recurrent step on any backend. The torch
    backend takes chunks of at most TORCH_CHUNK tokens, its fastest on CPU (the L x L block costs
    L per token; the chunk changes the result by float32 rounding only).
    """
    x, dt, A, B, C = inputs.x, inputs.dt, inputs.A, inputs.B, inputs.C
    if x.shape[1] == 1:
        return recurrent_step(x, dt, A, B, C, h0)
    if resolve_backend(backend, x.device) == "triton":
        from harness.models.mamba2.triton_scan import triton_scan

        return triton_scan(x, dt, A, B, C, chunk_size, h0)
    return ssd_scan(x, dt, A, B, C, min(chunk_size, TORCH_CHUNK), h0)


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """ "auto" -> "triton" on CUDA with mamba-ssm installed, else "torch"; checks the others."""
    from harness.models.mamba2.triton_scan import triton_available

    if backend not in BACKENDS:
        raise BackendError(f"unknown scan backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    on_cuda = torch.device(device).type == "cuda"
    if backend == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    if backend == "triton" and not triton_available():
        raise BackendError(
            "scan backend 'triton' needs mamba-ssm and triton (pip install 'harness[gpu]'); "
            "use backend 'torch' or 'auto'"
        )
    return backend
