"""LongMamba against an independent computation written here: thresholds from sorted
calibration dt, the filter as a token-by-token recurrence, chunk invariance on a model."""

from __future__ import annotations

import math

import pytest
import torch

from harness.mitigations import parse_mitigation
from harness.mitigations.longmamba import LongMamba, Thresholds
from harness.models.recurrence import ScanInputs

T, H = 200, 3


def calibration(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """dt and dt * A (T, h) with one slow head (retention ~1) and two fast ones."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.nn.functional.softplus(torch.randn(T, H, generator=g) - 1)
    A = torch.tensor([-1e-4, -0.5, -2.0])
    return dt, dt * A


def brute_theta(dt: torch.Tensor, dtA: torch.Tensor, c: float, q: float, L: int) -> list[float]:
    """theta_h(L) head by head, with Python lists: the top-q floor clips dt; the largest
    clipped values whose running sum first reaches T/L of the total set the threshold."""
    out = []
    for h in range(dt.shape[1]):
        values = dt[:, h].tolist()
        floor = sorted(values, reverse=True)[max(1, int(len(values) * q)) - 1]
        clipped = [min(v, floor) for v in values]
        A = float(dtA[0, h] / dt[0, h])
        if len(values) >= L or math.exp(A * sum(clipped)) <= c:
            out.append(-math.inf)
            continue
        ranked, total, running = sorted(clipped, reverse=True), sum(clipped), 0.0
        for value in ranked:
            running += value
            if running / total >= len(values) / L:
                out.append(value)
                break
    return out


@pytest.mark.parametrize("L", [100, 200, 201, 400, 1000, 5000])
def test_thresholds_match_a_brute_force(L: int) -> None:
    dt, dtA = calibration()
    layer = Thresholds.calibrate(dt, dtA, c=5e-2, q=0.05)
    assert layer.is_global.tolist() == [True, False, False]
    got = layer.theta(torch.tensor([L]))[0].tolist()
    want = brute_theta(dt, dtA, 5e-2, 0.05, L)
    assert got == pytest.approx(want, rel=1e-6)


def filtered_recurrence(inputs: ScanInputs, mitigation: LongMamba) -> torch.Tensor:
    """h_t = exp(dt'_t A) h + dt'_t B_t x_t^T, y = C h, dt' = dt where dt > theta(t+1) in a
    global head, else 0; thresholds from the brute force above, one token at a time."""
    dt_cal, dtA_cal = calibration()
    b, length, heads, p = inputs.x.shape
    h = torch.zeros(b, heads, p, inputs.B.shape[-1])
    ys = []
    for t in range(length):
        ends = mitigation.settings.length or t + 1
        theta = torch.tensor(brute_theta(dt_cal, dtA_cal, 5e-2, 0.05, ends))  # (h,)
        dt = torch.where(inputs.dt[:, t] > theta, inputs.dt[:, t], 0.0)  # (b, h)
        alpha = torch.exp(dt * inputs.A)
        insert = dt[..., None, None] * inputs.x[:, t, :, :, None] * inputs.B[:, t, 0, None, None]
        h = alpha[..., None, None] * h + insert
        ys.append(torch.einsum("bhpn,bn->bhp", h, inputs.C[:, t, 0]))
    return torch.stack(ys, dim=1)


@pytest.mark.parametrize("length", [0, 700])
def test_filter_matches_the_recurrence_in_any_pieces(length: int) -> None:
    from functools import partial

    from harness.models.mamba2.ssd import scan

    g = torch.Generator().manual_seed(1)
    n, total = 4, 600
    inputs = ScanInputs(
        x=torch.randn(1, total, H, 2, generator=g),
        dt=torch.nn.functional.softplus(torch.randn(1, total, H, generator=g) - 1),
        A=torch.tensor([-1e-4, -0.5, -2.0]),
        B=torch.randn(1, total, 1, n, generator=g),
        C=torch.randn(1, total, 1, n, generator=g),
        start=0,
    )
    mitigation = LongMamba(length=length)
    mitigation.layers = [Thresholds.calibrate(*calibration(), c=5e-2, q=0.05)]
    run = partial(scan, backend="torch", chunk_size=64)
    state, ys = None, []
    for lo in range(0, total, 170):  # pieces that straddle T = 200
        hi = min(lo + 170, total)
        piece = ScanInputs(*(t[:, lo:hi] for t in (inputs.x, inputs.dt)), inputs.A,
                           inputs.B[:, lo:hi], inputs.C[:, lo:hi], lo)  # fmt: skip
        y, state = run(mitigation.transform(0, piece), state)
        ys.append(y)
    want = filtered_recurrence(inputs, mitigation)
    assert torch.allclose(torch.cat(ys, dim=1), want, atol=1e-4 * float(want.abs().max()))


def test_on_a_model_calibration_is_deterministic_and_chunking_exact(one_thread: None) -> None:
    from harness.models.tiny import TINY_MODELS

    model = TINY_MODELS["tiny-mamba2"].build("cpu", torch.float32, "torch")
    ids = model.encode("The grass is green. " * 200)[: 4 * model.info.train_context]
    # c = 0.01: this random model's slowest head (retention ~0.02 over T) counts as global
    first, second = parse_mitigation("longmamba:c=0.01"), parse_mitigation("longmamba:c=0.01")
    model.hooks = first.hooks(model)
    assert first.artifacts() == (second.hooks(model) and second.artifacts())
    assert any(any(layer) for layer in first.artifacts()["global"])
    whole = model.token_losses(ids, chunk=len(ids))
    pieces = model.token_losses(ids, chunk=97)
    assert torch.allclose(whole, pieces, atol=1e-5)
    model.hooks = None
    plain = model.token_losses(ids, chunk=len(ids))
    T = model.info.train_context
    assert torch.equal(whole[: T - 1], plain[: T - 1])  # nothing filtered within T
    assert (whole[T:] - plain[T:]).abs().max() > 1e-4  # and the global head filters beyond


@pytest.mark.parametrize(
    ("spec", "message"),
    [("longmamba:c=0", "retention"), ("longmamba:q=2", "fraction"), ("longmamba:length=-1", "0")],
)
def test_bad_parameters_are_refused(spec: str, message: str) -> None:
    from harness.mitigations.base import MitigationError

    with pytest.raises(MitigationError, match=message):
        parse_mitigation(spec)
