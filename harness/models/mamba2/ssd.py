"""The SSD scan of Mamba-2 in plain torch, in two forms, and the scan dispatch.

Per head, with decay alpha_t = exp(dt_t A_t) and insertion dt_t B_t x_t^T:

    h_t = alpha_t h_{t-1} + dt_t B_t x_t^T        h (p, n)
    y_t = C_t h_t                                  (the D x_t skip is the mixer's)

A chunk of L tokens starting from state h_0 is computed as a masked "attention" of L x L plus
two low-rank terms, with cum_t = sum_{j <= t} dt_j A_j (log space, within the chunk):

    y_t  = sum_{s <= t} exp(cum_t - cum_s) (C_t . B_s) dt_s x_s   +   exp(cum_t) C_t h_0
    h_L  = exp(cum_L) h_0  +  sum_s exp(cum_L - cum_s) dt_s x_s B_s^T

ssd_scan runs the chunks one after the other carrying h, in place, each as three matrix
products over all heads (see there): the faster form on CPU, for inference. ssd_scan_chunks
computes the chunks of a piece together and the states entering them from one product with the
chunks' decays:

    h_in(k) = exp(tot_0 + ... + tot_{k-1}) h_0 + sum_{j < k} exp(tot_{j+1} + ... + tot_{k-1}) own_j

(tot_j: chunk j's cum_L; own_j: its state at its end from a zero start), as mamba-ssm's
ssd_minimal does, so a piece of up to piece_chunks chunks takes a fixed number of kernels: the
form for a GPU (a few launches per piece instead of per chunk) and for training (autograd).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from harness.models.recurrence import ScanInputs, recorded

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
    -> y (b, l, h, p) without the D skip, final state (b, h, p, n). All float32.

    The chunks one after the other, written in place: no autograd (ssd_scan_chunks is the
    differentiable form). Each group's state is kept as one matrix S (n, r p) over its r = h / g
    heads. Within a chunk, each head's terms are factored about a reference m in [cum_L, 0], with
    x_m_s = exp(m - cum_s) dt_s x_s:

        y_t = exp(cum_t - m) [ C_t (exp(m) h_0) + sum_{s <= t} (C_t . B_s) x_m_s ]
        h_L = exp(cum_L - m) [ exp(m) h_0 + sum_s x_m_s B_s^T ]

    the terms of the form above, as three products over all of a group's heads at once: C S,
    tril(C B^T) x_m and B^T x_m. Every factor stays within exp(+-60) (no overflow, no subnormal
    numbers, the same rounding): m = cum_L, the chunk's end, for a head whose decay over the chunk
    stays above exp(NEGLIGIBLE); m = cum_L / 2, its middle, for one that stays above
    exp(2 NEGLIGIBLE) (then h_L takes its factor exp(cum_L - m)). A head that forgets more within
    the chunk takes the direct form, one L x L decay per head.
    """
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    r, L = h // g, chunk_size
    c = -(-l // L)  # chunks; the last one padded with tokens of decay 1 that insert nothing
    cum = _pad_tokens(dt * A, c * L).view(b, c, L, g, r).cumsum(2)  # cum_t within each chunk
    last = cum[:, :, -1:]  # (b, c, 1, g, r): cum_L
    middle = (last >= 2 * NEGLIGIBLE) & (last < NEGLIGIBLE)  # heads factored about m = cum_L / 2
    m = torch.where(middle, last / 2, last)  # the direct form's heads: cum_L, as for the state
    to_m = _pad_tokens(dt, c * L).view(b, c, L, g, r) * _exp(m - cum)  # exp(m - cum_s) dt_s
    # exp(cum_t - m), clamped where a head forgets past 2 NEGLIGIBLE (the direct form's then)
    from_m = torch.exp((cum - m).clamp_(max=-NEGLIGIBLE))
    kept = _exp(m)[..., None].expand(b, c, 1, g, r, p).reshape(b, c, 1, g, r * p)
    m_to_end = torch.exp(last - m)[..., None].expand(b, c, 1, g, r, p).reshape(b, c, g, r * p)
    strong = _chunk_heads(last[:, :, 0] < 2 * NEGLIGIBLE)  # (i, k, j) -> heads, direct form
    halved = _chunk_heads(middle[:, :, 0])  # (i, k, j) -> heads factored about the middle

    C_c = _pad_tokens(C, c * L).view(b, c, L, g, n).permute(0, 3, 1, 2, 4)  # (b, g, c, L, n)
    B_c = _pad_tokens(B, c * L).view(b, c, L, g, n).permute(0, 3, 1, 4, 2)  # (b, g, c, n, L)
    scores = (C_c @ B_c).tril_()  # (b, g, c, L, L): C_t . B_s for s <= t, else 0

    if initial_state is None:
        state = x.new_zeros(b, g, n, r * p)
    else:
        state = initial_state.reshape(b, g, r * p, n).transpose(-1, -2).contiguous()
    y = x.new_empty(b, l, g, r * p)
    for i, j in itertools.product(range(b), range(g)):
        S = state[i, j]  # (n, r p)
        chunks = zip(
            x[i].view(l, g, r, p)[:, j].split(L),  # (T, r, p), T = L but for the last chunk
            y[i, :, j].split(L),  # (T, r p)
            B[i, :, j].split(L),  # (T, n)
            C[i, :, j].split(L),  # (T, n)
            scores[i, j],  # (L, L)
            to_m[i, :, :, j, :, None],  # (L, r, 1)
            from_m[i, :, :, j, :, None],  # (L, r, 1)
            kept[i, :, 0, j],  # (r p)
            strict=True,
        )
        for k, (x_k, y_k, B_k, C_k, scores_k, to_k, from_k, kept_k) in enumerate(chunks):
            T = x_k.shape[0]
            if T < L:
                scores_k, to_k, from_k = scores_k[:T, :T], to_k[:T], from_k[:T]
            heads = strong.get((i, k, j))
            if heads:
                dtx = x_k[:, heads] * dt[i, k * L : k * L + T].view(T, g, r)[:, j, heads, None]
                h0 = S.view(n, r, p)[:, heads]
                direct = _direct(dtx, cum[i, k, :T, j, heads], scores_k, C_k, h0)
            x_m = (x_k * to_k).view(T, r * p)
            S.mul_(kept_k)  # exp(m) h_0
            torch.mm(C_k, S, out=y_k)
            y_k.addmm_(scores_k, x_m)
            S.addmm_(B_k.T, x_m)
            y_k.view(T, r, p).mul_(from_k)
            if (i, k, j) in halved:
                S.mul_(m_to_end[i, k, j])  # exp(cum_L - m): the state at the chunk's end
            if heads:
                y_k.view(T, r, p)[:, heads] = direct
    return y.view(b, l, h, p), state.transpose(-1, -2).reshape(b, h, p, n)


def _pad_tokens(t: torch.Tensor, length: int) -> torch.Tensor:
    """t (b, l, ...) -> (b, length, ...), zeros after its l tokens; t itself, not a copy, when
    l == length."""
    extra = length - t.shape[1]
    return t if extra == 0 else F.pad(t, (0, 0) * (t.dim() - 2) + (0, extra))


def _chunk_heads(mask: torch.Tensor) -> dict[tuple[int, int, int], list[int]]:
    """mask (b, c, g, r) -> {(batch, chunk, group): the heads set in it}."""
    heads: dict[tuple[int, int, int], list[int]] = {}
    for i, k, j, head in mask.nonzero().tolist():
        heads.setdefault((i, k, j), []).append(head)
    return heads


def _direct(
    dtx: torch.Tensor, cum: torch.Tensor, scores: torch.Tensor, C: torch.Tensor, h0: torch.Tensor
) -> torch.Tensor:
    """y of k heads of a chunk in the direct form: dtx (L, k, p), cum (L, k), scores (L, L) the
    C_t . B_s for s <= t (else 0), C (L, n), h0 (n, k, p) -> y (L, k, p).

    decay[t, s] = exp(cum_t - cum_s) for s <= t, its exponent clamped to [NEGLIGIBLE, 0] (exp is
    several times slower on -inf and on what underflows; a decay raised to exp(-60) ~ 1e-26 is
    lost in float32 rounding beside the diagonal's 1; the future, s > t, is zeroed by the
    scores)."""
    L, k, p = dtx.shape
    heads = cum.T  # (k, L)
    decay = (heads[:, :, None] - heads[:, None, :]).clamp_(NEGLIGIBLE, 0.0).exp_()  # (k, L, L)
    weights = decay.mul_(scores)
    y = (weights @ dtx.transpose(0, 1)).transpose(0, 1)  # (L, k, p)
    from_state = (C @ h0.reshape(-1, k * p)).view(L, k, p)  # C_t h_0
    return y.addcmul_(from_state, _exp(cum)[..., None])


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
    totals = F.pad(cum[:, :, -1].permute(0, 2, 3, 1), (1, 0))  # (b,g,r,c+1)
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
    changes the result by float32 rounding only): for inference on CPU one chunk after the other
    (ssd_scan, the faster there: a chunk's products stay in cache), elsewhere and for training all
    chunks of a piece at once (ssd_scan_chunks: a fixed number of kernel launches per piece).
    """
    x, dt, A, B, C = inputs.x, inputs.dt, inputs.A, inputs.B, inputs.C
    if x.shape[1] == 1:
        return recurrent_step(x, dt, A, B, C, h0)
    if resolve_backend(backend, x.device) == "triton":
        from harness.models.mamba2.triton_scan import triton_scan

        return triton_scan(x, dt, A, B, C, chunk_size, h0)
    in_place = x.device.type == "cpu" and not recorded(inputs, h0)
    torch_scan = ssd_scan if in_place else ssd_scan_chunks
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
