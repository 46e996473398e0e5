"""The recurrence core (harness/models/recurrence.py): its scan for any diagonal decay against
a token-by-token loop written here, against Mamba-2's SSD scan where the decay is per head,
and chunk invariance; both of its forms (stepwise on CPU, chunked elsewhere) on CPU."""

from __future__ import annotations

import pytest
import torch

from harness.models.mamba2.ssd import ssd_scan
from harness.models.recurrence import ScanInputs, chunked_scan, diagonal_scan, stepwise_scan

b, L, H, P, N = 2, 45, 4, 3, 5


@pytest.fixture(autouse=True)
def _threads(one_thread: None) -> None:
    """Tiny tensors: one thread (conftest)."""


def log_decay(A: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """dt_t A_t as (b, l, h, n) for each shape A may take."""
    if A.dim() == 1:  # (h,)
        return (dt * A)[..., None].expand(-1, -1, -1, N)
    if A.dim() == 2:  # (h, n)
        return dt[..., None] * A
    if A.dim() == 3:  # (b, l, h)
        return (dt * A)[..., None].expand(-1, -1, -1, N)
    return dt[..., None] * A  # (b, l, h, n)


def naive(inputs: ScanInputs, h0: torch.Tensor, current: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = exp(dt_t A_t) h_{t-1} + dt_t x_t B_t^T; y_t = C_t h_t, or C_t h_{t-1}; per token."""
    x, dt = inputs.x, inputs.dt
    rep = H // inputs.B.shape[2]
    B, C = inputs.B.repeat_interleave(rep, dim=2), inputs.C.repeat_interleave(rep, dim=2)
    alpha = log_decay(inputs.A, dt).exp()  # (b, l, h, n)
    h, ys = h0.clone(), []
    for t in range(x.shape[1]):
        before = h
        h = (
            alpha[:, t, :, None, :] * h
            + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None]
        )
        ys.append(torch.einsum("bhpn,bhn->bhp", h if current else before, C[:, t]))
    return torch.stack(ys, 1), h


def inputs_with(A_shape: tuple[int, ...], groups: int, seed: int = 0) -> ScanInputs:
    g = torch.Generator().manual_seed(seed)
    return ScanInputs(
        x=torch.randn(b, L, H, P, generator=g),
        dt=torch.rand(b, L, H, generator=g) + 0.05,
        A=-torch.rand(*A_shape, generator=g) * 2,
        B=torch.randn(b, L, groups, N, generator=g),
        C=torch.randn(b, L, groups, N, generator=g),
        start=0,
    )


SHAPES = {"per head": (H,), "per token": (b, L, H), "per entry": (H, N), "all": (b, L, H, N)}


FORMS = {"stepwise": stepwise_scan, "chunked": chunked_scan}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("current", [True, False])
@pytest.mark.parametrize("groups", [1, 2, H])
@pytest.mark.parametrize("shape", SHAPES)
def test_scan_matches_the_token_loop(shape: str, groups: int, current: bool, form: str) -> None:
    inputs = inputs_with(SHAPES[shape], groups)
    h0 = torch.randn(b, H, P, N, generator=torch.Generator().manual_seed(9))
    y, h = FORMS[form](inputs, h0, current=current)
    ref_y, ref_h = naive(inputs, h0, current)
    assert torch.allclose(y, ref_y, atol=1e-5, rtol=1e-5)
    assert torch.allclose(h, ref_h, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", ["per head", "per token"])
def test_scan_matches_mamba2s_ssd_where_the_decay_is_per_head(shape: str) -> None:
    inputs = inputs_with(SHAPES[shape], groups=2, seed=4)
    h0 = torch.randn(b, H, P, N, generator=torch.Generator().manual_seed(5))
    y, h = diagonal_scan(inputs, h0)
    ssd_y, ssd_h = ssd_scan(inputs.x, inputs.dt, inputs.A, inputs.B, inputs.C, 16, h0)
    assert torch.allclose(y, ssd_y, atol=1e-5) and torch.allclose(h, ssd_h, atol=1e-5)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("current", [True, False])
def test_any_split_gives_one_pass(current: bool, form: str) -> None:
    scan = FORMS[form]
    inputs = inputs_with(SHAPES["all"], groups=1, seed=2)
    whole, h_whole = scan(inputs, None, current=current)
    ys, h = [], None
    for lo, hi in ((0, 1), (1, 18), (18, 19), (19, 40), (40, L)):
        y, h = scan(inputs.piece(lo, hi), h, current=current)
        ys.append(y)
    assert torch.allclose(torch.cat(ys, 1), whole, atol=1e-5)
    assert torch.allclose(h, h_whole, atol=1e-5)
