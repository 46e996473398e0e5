"""The SSD scan of Mamba-2 in plain torch, in two forms, and the scan dispatch.

Per head, with decay alpha_t = exp(dt_t A_t) and insertion dt_t B_t x_t^T:

    h_t = alpha_t h_{t-1} + dt_t B_t x_t^T        h (p, n)
    y_t = C_t h_t                                  (the D x_t skip is the mixer's)

A chunk of L tokens starting from state h_0 is computed as a masked "attention" of L x L plus
two low-rank terms, with cum_t = sum_{j <= t} dt_j A_j (log space, within the chunk):

    y_t  = sum_{s <= t} exp(cum_t - cum_s) (C_t . B_s) dt_s x_s   +   exp(cum_t) C_t h_0
    h_L  = exp(cum_L) h_0  +  sum_s exp(cum_L - cum_s) dt_s x_s B_s^T

ssd_scan runs the chunks one after the other carrying h, so memory holds one chunk's L x L
block per head and the output, whatever the sequence length: the faster form on CPU. On a GPU
that costs a few kernel launches per chunk; ssd_scan_chunks computes the chunks of a piece
together and the states entering them from one product with the chunks' decays:

    h_in(k) = exp(tot_0 + ... + tot_{k-1}) h_0 + sum_{j < k} exp(tot_{j+1} + ... + tot_{k-1}) own_j

(tot_j: chunk j's cum_L; own_j: its state at its end from a zero start), as mamba-ssm's
ssd_minimal does, so a piece of up to piece_chunks chunks takes a fixed number of kernels.
"""

from __future__ import annotations

import itertools
import math
from functools import cache

import torch
import torch.nn.functional as F

from harness.models.recurrence import ScanInputs

BACKENDS = ("auto", "torch", "triton")
TORCH_CHUNK = 64  # tokens per chunk of ssd_scan in the torch backend
NEGLIGIBLE = -60.0  # log of a decay that counts as zero (exp(-60) ~ 1e-26)
SMALLEST_DECAY = math.exp(NEGLIGIBLE)  # float32 rounds it up: a threshold keeps what is above


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
    x_head = dtx.transpose(1, 2).contiguous()  # (b, h, l, p): a chunk's heads as matrices
    y = torch.empty_like(x)
    for start in range(0, l, chunk_size):
        end = min(start + chunk_size, l)
        y[:, start:end], state = _chunk(
            dtx[:, start:end],
            x_head[:, :, start:end],
            log_alpha[:, start:end],
            B[:, start:end],
            C[:, start:end],
            state,
        )
    return y, state


def _chunk(
    dtx: torch.Tensor,
    x_head: torch.Tensor,
    log_alpha: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of L tokens. Heads are laid out as (g, r): r = h / g heads share B and C.

    dtx (b, L, h, p) and the same head-major, x_head (b, h, L, p); log_alpha (b, L, h), B and
    C (b, L, g, n), h0 (b, h, p, n) -> y (b, L, h, p), h_L (b, h, p, n).
    """
    b, L, h, p = dtx.shape
    g, n = B.shape[-2:]
    r = h // g
    cum = log_alpha.cumsum(1)  # (b, L, h): cum_t
    exp_cum = _exp(cum).view(b, L, g, r)  # exp(cum_t): decay from the chunk's start
    B = B.transpose(1, 2)  # (b, g, L, n)
    C = C.transpose(1, 2)  # (b, g, L, n)

    # within the chunk, per head: decay[t, s] = exp(cum_t - cum_s) for s <= t, else 0. Cheap
    # passes only: the exponent clamped to [NEGLIGIBLE, 0] (exp is several times slower on
    # -inf and on what underflows), the decays at exp(NEGLIGIBLE) set to 0 by a threshold,
    # the future (s > t) zeroed in the scores that every head's decay is multiplied by
    cum_head = cum.transpose(1, 2).reshape(b, g, r, L)
    segment = cum_head[..., :, None] - cum_head[..., None, :]  # (b, g, r, L, L)
    decay = F.threshold(torch.exp(segment.clamp_(NEGLIGIBLE, 0.0)), SMALLEST_DECAY, 0.0)
    scores = (C @ B.transpose(-1, -2)).tril_()  # (b, g, L, L): C_t . B_s for s <= t, else 0
    y_diag = (decay * scores[:, :, None]) @ x_head.view(b, g, r, L, p)  # (b, g, r, L, p)

    # from the state carried in: exp(cum_t) C_t h_0, one product per group over its r heads
    h0 = h0.reshape(b, g, r * p, n)
    y_state = (C @ h0.transpose(-1, -2)).view(b, g, L, r, p)  # (b, g, L, r, p)
    y = torch.addcmul(y_diag.permute(0, 3, 1, 2, 4), y_state.transpose(1, 2), exp_cum[..., None])

    # the state carried out: exp(cum_L) h_0 + sum_s exp(cum_L - cum_s) (dt x)_s B_s^T, the
    # retention from s to the chunk's end being the last row of decay
    to_end = decay[..., -1, :].permute(0, 3, 1, 2)  # (b, L, g, r)
    x_end = (dtx.view(b, L, g, r, p) * to_end[..., None]).view(b, L, g, r * p)
    inserted = x_end.permute(0, 2, 3, 1) @ B  # (b, g, r p, n)
    decay_all = exp_cum[:, -1].view(b, g, r, 1, 1)  # exp(cum_L)
    h_end = torch.addcmul(inserted.view(b, g, r, p, n), decay_all, h0.view(b, g, r, p, n))
    return y.reshape(b, L, h, p), h_end.view(b, h, p, n)


def ssd_scan_chunks(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
    piece_chunks: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ssd_scan with every chunk of a piece computed at once (as mamba-ssm's ssd_minimal does):
    a fixed number of kernels per piece of up to piece_chunks chunks, whatever its length, the
    state carried exactly from piece to piece. Same shapes and contract as ssd_scan."""
    b, l, h, p = x.shape
    n = B.shape[-1]
    log_alpha = dt * A  # (b, l, h)
    dtx = x * dt[..., None]  # (b, l, h, p)
    state = x.new_zeros(b, h, p, n) if initial_state is None else initial_state
    y = torch.empty_like(x)
    whole = l - l % chunk_size  # the last, shorter chunk (if any) is a piece of its own
    step = chunk_size * piece_chunks
    cuts = [*range(0, whole, step), whole, l]
    for start, end in itertools.pairwise(cuts):
        if end == start:
            continue
        L = min(chunk_size, end - start)
        y[:, start:end], state = _chunks(
            dtx[:, start:end],
            log_alpha[:, start:end],
            B[:, start:end],
            C[:, start:end],
            state,
            L,
        )
    return y, state


def _chunks(
    dtx: torch.Tensor,
    log_alpha: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor,
    L: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """c = l / L chunks of L tokens at once: _chunk's terms with a chunk axis c, and the states
    entering the chunks from one product with the chunks' decays (a c + 1 square per head).

    dtx (b, l, h, p), log_alpha (b, l, h), B and C (b, l, g, n), h0 (b, h, p, n)
    -> y (b, l, h, p), the state after the l tokens (b, h, p, n).
    """
    b, l, h, p = dtx.shape
    g, n = B.shape[-2:]
    r, c = h // g, l // L
    cum = log_alpha.view(b, c, L, g, r).cumsum(2)  # cum_t within each chunk
    B = B.view(b, c, L, g, n).permute(0, 3, 1, 2, 4)  # (b, g, c, L, n)
    C = C.view(b, c, L, g, n).permute(0, 3, 1, 2, 4)  # (b, g, c, L, n)

    # within each chunk, as in _chunk: (decay * C_t . B_s) (dt x)_s
    cum_head = cum.permute(0, 3, 4, 1, 2)  # (b, g, r, c, L)
    segment = cum_head[..., :, None] - cum_head[..., None, :]  # (b, g, r, c, L, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=dtx.device).tril()
    decay = _exp(segment.masked_fill_(~causal, -torch.inf))
    scores = C @ B.transpose(-1, -2)  # (b, g, c, L, L)
    x_head = dtx.view(b, c, L, g, r, p).permute(0, 3, 4, 1, 2, 5)  # (b, g, r, c, L, p)
    y_diag = (decay * scores[:, :, None]) @ x_head  # (b, g, r, c, L, p)

    # each chunk's own contribution to the state at its end, as if it started from zero
    to_end = _exp(cum[:, :, -1:] - cum)  # (b, c, L, g, r)
    x_end = (dtx.view(b, c, L, g, r, p) * to_end[..., None]).view(b, c, L, g, r * p)
    own = (x_end.permute(0, 3, 1, 4, 2) @ B).view(b, g, c, r, p * n)  # (b, g, c, r, p n)

    # states entering chunk k (k = 0..c, c: the final state) from h0 and the chunks before:
    # entering_k = sum_j exp(total_{j+1} + ... + total_k) own_j, own_{-1} = h0, total_0 = 0
    totals = torch.nn.functional.pad(cum[:, :, -1].permute(0, 2, 3, 1), (1, 0))  # (b,g,r,c+1)
    carried = _exp(_segment_sums(totals))  # (b, g, r, c + 1, c + 1)
    own = torch.cat([h0.reshape(b, g, r, 1, p * n), own.transpose(2, 3)], dim=3)
    entering = carried @ own  # (b, g, r, c + 1, p n)

    # from the state entering each chunk: exp(cum_t) C_t h_k, one product per group
    h_in = entering[:, :, :, :c].reshape(b, g, r, c, p, n).permute(0, 1, 3, 2, 4, 5)
    y_state = C @ h_in.reshape(b, g, c, r * p, n).transpose(-1, -2)  # (b, g, c, L, r p)
    y_state = y_state.view(b, g, c, L, r, p).permute(0, 2, 3, 1, 4, 5) * _exp(cum)[..., None]
    y = y_diag.permute(0, 3, 4, 1, 2, 5) + y_state  # (b, c, L, g, r, p)
    return y.reshape(b, l, h, p), entering[:, :, :, c].reshape(b, h, p, n)


def _segment_sums(totals: torch.Tensor) -> torch.Tensor:
    """totals (..., m) -> (..., m, m): [k, j] = totals_{j+1} + ... + totals_k for j <= k, -inf
    above the diagonal. Summed per entry rather than as a difference of running sums, which
    would lose float32 digits once the running sum is large."""
    m = totals.shape[-1]
    lower = torch.ones(m, m, dtype=torch.bool, device=totals.device).tril()
    terms = totals[..., :, None].expand(*totals.shape, m).masked_fill(lower.T, 0.0)
    sums = terms.cumsum(-2)  # [k, j] = sum over j < i <= k of totals_i
    return sums.masked_fill(~lower, -torch.inf)


@cache
def _above_diagonal(L: int, device: torch.device) -> torch.Tensor:
    """(L, L) bool, True for s > t: the future, whose decay is 0."""
    return torch.ones(L, L, dtype=torch.bool, device=device).triu(1)


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

    backend: "torch", "triton" (mamba-ssm's kernels) or "auto" (triton on CUDA when mamba-ssm
    is installed). A single token takes the recurrent step on any backend. The torch backend
    takes chunks of at most TORCH_CHUNK tokens (the L x L block costs L per token; the chunk
    changes the result by float32 rounding only): on CPU one chunk after the other (ssd_scan,
    the faster there: a chunk's blocks stay in cache), elsewhere all chunks of a piece at once
    (ssd_scan_chunks: a fixed number of kernel launches per piece).
    """
    x, dt, A, B, C = inputs.x, inputs.dt, inputs.A, inputs.B, inputs.C
    if x.shape[1] == 1:
        return recurrent_step(x, dt, A, B, C, h0)
    if resolve_backend(backend, x.device) == "triton":
        from harness.models.mamba2.triton_scan import triton_scan

        return triton_scan(x, dt, A, B, C, chunk_size, h0)
    torch_scan = ssd_scan if x.device.type == "cpu" else ssd_scan_chunks
    return torch_scan(x, dt, A, B, C, min(chunk_size, TORCH_CHUNK), h0)


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
