"""The chunked SSD scan against a naive per-token recurrence written here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.models.mamba2.ssd import (
    NEGLIGIBLE,
    BackendError,
    recurrent_step,
    resolve_backend,
    scan,
    ssd_scan,
    ssd_scan_chunks,
)
from harness.models.recurrence import ScanInputs

pytestmark = pytest.mark.usefixtures("one_thread")


def naive_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = exp(dt_t A_t) h_{t-1} + dt_t B_t x_t^T, y_t = C_t h_t, in float64, token by token."""
    b, l, h, p = x.shape
    n = B.shape[-1]
    r = h // B.shape[2]
    Bh = B.double().repeat_interleave(r, dim=2)  # (b, l, h, n)
    Ch = C.double().repeat_interleave(r, dim=2)
    A = A.expand(b, l, h) if A.dim() == 1 else A
    alpha = torch.exp(dt.double() * A.double())  # (b, l, h)
    state = torch.zeros(b, h, p, n, dtype=torch.float64) if h0 is None else h0.double()
    ys = []
    for t in range(l):
        insert = (dt[:, t, :, None] * x[:, t]).double()[..., None] * Bh[:, t, :, None, :]
        state = alpha[:, t, :, None, None] * state + insert
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    return torch.stack(ys, dim=1).float(), state.float()


def random_inputs(
    length: int, heads: int = 4, groups: int = 2, per_token_A: bool = False, seed: int = 0
) -> ScanInputs:
    g = torch.Generator().manual_seed(seed)
    b, p, n = 2, 3, 5
    A = -torch.exp(torch.empty(heads).uniform_(-3.0, 1.5, generator=g))  # (h,)
    if per_token_A:
        A = A * torch.empty(b, length, heads).uniform_(0.5, 2.0, generator=g)  # (b, l, h)
    return ScanInputs(
        x=torch.randn(b, length, heads, p, generator=g),
        dt=F.softplus(torch.randn(b, length, heads, generator=g)),
        A=A,
        B=torch.randn(b, length, groups, n, generator=g),
        C=torch.randn(b, length, groups, n, generator=g),
        start=0,
    )


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-5) -> None:
    scale = max(float(b.abs().max()), 1.0)
    assert (a - b).abs().max() <= tol * scale, float((a - b).abs().max())


@pytest.mark.parametrize("chunk", [1, 7, 16, 64])
@pytest.mark.parametrize("per_token_A", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_ssd_scan_matches_naive_recurrence(chunk: int, per_token_A: bool, groups: int) -> None:
    i = random_inputs(45, groups=groups, per_token_A=per_token_A)
    h0 = torch.randn(2, 4, 5, 3).transpose(-1, -2)  # (b, h, p, n), not contiguous
    y, h = ssd_scan(i.x, i.dt, i.A, i.B, i.C, chunk, h0)
    y_ref, h_ref = naive_scan(i.x, i.dt, i.A, i.B, i.C, h0)
    close(y, y_ref)
    close(h, h_ref)


@pytest.mark.parametrize(("chunk", "piece_chunks"), [(1, 3), (7, 2), (16, 1), (8, 100), (64, 4)])
@pytest.mark.parametrize("per_token_A", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_ssd_scan_chunks_matches_naive_and_the_chunk_loop(
    chunk: int, piece_chunks: int, per_token_A: bool, groups: int
) -> None:
    i = random_inputs(45, groups=groups, per_token_A=per_token_A)
    h0 = torch.randn(2, 4, 5, 3).transpose(-1, -2)  # (b, h, p, n), not contiguous
    y, h = ssd_scan_chunks(i.x, i.dt, i.A, i.B, i.C, chunk, h0, piece_chunks)
    y_ref, h_ref = naive_scan(i.x, i.dt, i.A, i.B, i.C, h0)
    close(y, y_ref)
    close(h, h_ref)
    y_loop, h_loop = ssd_scan(i.x, i.dt, i.A, i.B, i.C, chunk, h0)
    close(y, y_loop)
    close(h, h_loop)


@pytest.mark.parametrize("groups", [1, 2])
def test_ssd_scan_heads_that_forget_within_a_chunk_take_the_direct_form(groups: int) -> None:
    """In the same chunks, heads of all three kinds against the token loop: those whose decay
    over the chunk stays above exp(NEGLIGIBLE) (factored about the chunk's end), those that
    stay above exp(2 NEGLIGIBLE) (factored about its middle) and those that forget more (the
    direct form)."""
    i = random_inputs(45, groups=groups)
    A = i.A * torch.tensor([300.0, 1.0, 0.01, 70.0])
    totals = (i.dt * A)[:, :32].reshape(2, 2, 16, 4).sum(2)  # per chunk of 16 and head
    assert (totals < 2 * NEGLIGIBLE).any() and (totals >= NEGLIGIBLE).any()
    assert ((totals >= 2 * NEGLIGIBLE) & (totals < NEGLIGIBLE)).any()
    h0 = torch.randn(2, 4, 5, 3).transpose(-1, -2)
    with torch.inference_mode():
        y, h = ssd_scan(i.x, i.dt, A, i.B, i.C, 16, h0)
    y_ref, h_ref = naive_scan(i.x, i.dt, A, i.B, i.C, h0)
    close(y, y_ref)
    close(h, h_ref)


@pytest.mark.parametrize("form", [ssd_scan, ssd_scan_chunks])
def test_ssd_scan_from_zero_state_and_strong_decay(form: object) -> None:
    i = random_inputs(300)
    A = i.A * 40  # decays down to exp(-thousands) over the sequence: no NaN, no inf
    y, h = form(i.x, i.dt, A, i.B, i.C, 16)  # type: ignore[operator]
    y_ref, h_ref = naive_scan(i.x, i.dt, A, i.B, i.C, None)
    assert torch.isfinite(y).all()
    close(y, y_ref)
    close(h, h_ref)


def test_ssd_scan_chunks_gradients_match_the_naive_recurrence() -> None:
    """ssd_scan_chunks is the differentiable form (training): its gradients against float64
    autograd through the token loop."""
    i = random_inputs(40, per_token_A=True)
    grads = []
    for form in (ssd_scan_chunks, naive_scan):
        x, B = i.x.clone().requires_grad_(), i.B.clone().requires_grad_()
        if form is naive_scan:
            y, h = naive_scan(x, i.dt, i.A, B, i.C, None)
        else:
            y, h = ssd_scan_chunks(x, i.dt, i.A, B, i.C, 8)
        (y.square().sum() + h.sum()).backward()
        grads.append((x.grad, B.grad))
    for a, b in zip(*grads, strict=True):
        assert a is not None and b is not None
        close(a, b)


def test_training_takes_the_differentiable_form_and_inference_the_in_place_one() -> None:
    i = random_inputs(40)
    x = i.x.clone().requires_grad_()
    y, h = scan(i.with_(x=x), None, backend="torch", chunk_size=8)
    (y.sum() + h.sum()).backward()  # ssd_scan_chunks: the in-place form cannot be differentiated
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        y_plain, h_plain = scan(i.with_(x=x), None, backend="torch", chunk_size=8)
    close(y_plain, y.detach())
    close(h_plain, h.detach())


@pytest.mark.parametrize("per_token_A", [False, True])
def test_recurrent_step_matches_naive(per_token_A: bool) -> None:
    i = random_inputs(1, per_token_A=per_token_A)
    h0 = torch.randn(2, 4, 5, 3).transpose(-1, -2)
    y, h = recurrent_step(i.x, i.dt, i.A, i.B, i.C, h0)
    y_ref, h_ref = naive_scan(i.x, i.dt, i.A, i.B, i.C, h0)
    close(y, y_ref)
    close(h, h_ref)


def test_scan_dispatch_carries_state_between_calls() -> None:
    i = random_inputs(40, per_token_A=True)
    y_ref, h_ref = naive_scan(i.x, i.dt, i.A, i.B, i.C, None)
    h, ys = None, []
    for lo, hi in [(0, 1), (1, 17), (17, 18), (18, 40)]:
        piece = i.with_(x=i.x[:, lo:hi], dt=i.dt[:, lo:hi], A=i.A[:, lo:hi])
        piece = piece.with_(B=i.B[:, lo:hi], C=i.C[:, lo:hi])
        y, h = scan(piece, h, backend="torch", chunk_size=8)
        ys.append(y)
    close(torch.cat(ys, dim=1), y_ref)
    close(h, h_ref)


def test_backends() -> None:
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(BackendError, match="choose one of auto, torch, triton"):
        resolve_backend("cuda", "cpu")
