"""Mitigations at scan level, against a naive per-token recurrence written here.

No model: the scan inputs (x, dt, A, B, C) are random, and `drive` plays the engine's part
(transform_inputs, the scan or its replacement, transform_state every `interval` tokens).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from harness.mitigations import parse_mitigation
from harness.mitigations.compose import merge_hooks
from harness.mitigations.rri import RRI
from harness.mitigations.scale import AScale, DtScale
from harness.mitigations.state_norm import clip
from harness.mitigations.window_scan import WindowScan, WindowState
from harness.models.recurrence import Hooks, ScanInputs

B_, H, P, G, N = 2, 4, 3, 2, 5  # batch, heads, headdim, groups, d_state


def random_inputs(length: int, seed: int = 0, slow: bool = False) -> ScanInputs:
    """Random scan inputs; decays per token from exp(-2) up to ~1 (slow: up to 1 - 1e-4)."""
    g = torch.Generator().manual_seed(seed)
    low = -9.0 if slow else -4.0
    return ScanInputs(
        x=torch.randn(B_, length, H, P, generator=g),
        dt=torch.nn.functional.softplus(torch.randn(B_, length, H, generator=g)),
        A=-torch.exp(torch.empty(H).uniform_(low, 0.0, generator=g)),
        B=torch.randn(B_, length, G, N, generator=g),
        C=torch.randn(B_, length, G, N, generator=g),
        start=0,
    )


def per_token_A(inputs: ScanInputs) -> torch.Tensor:
    return inputs.A.expand_as(inputs.dt) if inputs.A.dim() == 1 else inputs.A  # (b, l, h)


def naive_scan(inputs: ScanInputs, h0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = alpha_t h_{t-1} + dt_t B_t x_t^T, y_t = C_t h_t, one token at a time."""
    rep = H // inputs.B.shape[2]
    Bh = inputs.B.repeat_interleave(rep, dim=2)  # (b, l, h, n)
    Ch = inputs.C.repeat_interleave(rep, dim=2)
    alpha = torch.exp(inputs.dt * per_token_A(inputs))  # (b, l, h)
    h = torch.zeros(B_, H, P, N) if h0 is None else h0
    ys = []
    for t in range(inputs.x.shape[1]):
        insert = inputs.dt[:, t, :, None, None] * inputs.x[:, t, :, :, None] * Bh[:, t, :, None]
        h = alpha[:, t, :, None, None] * h + insert
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]))
    return torch.stack(ys, dim=1), h


def piece(inputs: ScanInputs, lo: int, hi: int) -> ScanInputs:
    def cut(t: torch.Tensor) -> torch.Tensor:
        return t[:, lo:hi]

    A = inputs.A if inputs.A.dim() == 1 else cut(inputs.A)
    return ScanInputs(cut(inputs.x), cut(inputs.dt), A, cut(inputs.B), cut(inputs.C), lo)


def drive(inputs: ScanInputs, hooks: Hooks | None, chunk: int, layer: int = 0):
    """The engine's loop for one layer: chunks, then segments ending at multiples of interval."""
    hooks = hooks or Hooks()
    scan = hooks.scans.get(layer, naive_scan)
    length, state, ys = inputs.x.shape[1], None, []
    for lo in range(0, length, chunk):
        bounds = [lo, min(lo + chunk, length)]
        if hooks.segmented:
            k = hooks.interval
            bounds = sorted({*bounds, *range((lo // k + 1) * k, bounds[1], k)})
        for a, b in itertools.pairwise(bounds):
            part = piece(inputs, a, b)
            if hooks.transform_inputs is not None:
                part = hooks.transform_inputs(layer, part)
            y, state = scan(part, state)
            if hooks.transform_state is not None and b % hooks.interval == 0:
                state = hooks.transform_state(layer, state, b)
            ys.append(y)
    return torch.cat(ys, dim=1), state


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max()))


# --- rri, dt-scale, a-scale -------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 64, 200])
def test_rri_matches_naive_recurrence(chunk: int) -> None:
    inputs, a, b = random_inputs(200), 0.97, 0.6
    hooks = RRI(a=a, b=b).hooks(model=None)  # type: ignore[arg-type]
    y, h = drive(inputs, hooks, chunk)
    # by hand: alpha' = a * exp(dt A), insertion dt (b B) x^T
    alpha = a * torch.exp(inputs.dt * inputs.A)
    ref = inputs.with_(A=torch.log(alpha) / inputs.dt, B=inputs.B * b)
    y_ref, h_ref = naive_scan(ref, None)
    assert close(y, y_ref) and close(h, h_ref)


def test_rri_stays_finite_where_dt_underflows_to_zero() -> None:
    inputs = random_inputs(60)
    dt = inputs.dt.clone()
    dt[:, ::7] = 0.0  # softplus underflow: these tokens neither decay nor insert
    inputs, a = inputs.with_(dt=dt), 0.97
    y, h = drive(inputs, RRI(a=a, b=0.5).hooks(model=None), 16)  # type: ignore[arg-type]
    # by hand, token by token: h <- a exp(dt A) h + dt (b B) x^T (zero insertion where dt = 0)
    Bh = (0.5 * inputs.B).repeat_interleave(H // G, dim=2)
    Ch = inputs.C.repeat_interleave(H // G, dim=2)
    h_ref, ys = torch.zeros(B_, H, P, N), []
    for t in range(60):
        alpha = a * torch.exp(dt[:, t] * inputs.A)  # (b, h)
        insert = dt[:, t, :, None, None] * inputs.x[:, t, :, :, None] * Bh[:, t, :, None]
        h_ref = alpha[..., None, None] * h_ref + insert
        ys.append(torch.einsum("bhpn,bhn->bhp", h_ref, Ch[:, t]))
    assert torch.isfinite(y).all() and close(y, torch.stack(ys, dim=1)) and close(h, h_ref)


def test_rri_identity_leaves_inputs_unchanged() -> None:
    inputs = random_inputs(50)
    out = RRI(a=1.0, b=1.0).hooks(model=None).transform_inputs(0, inputs)  # type: ignore[arg-type,union-attr]
    assert out.A is inputs.A and out.B is inputs.B and out.dt is inputs.dt


class FakeModel:
    """Just enough of a model for the per-layer scales: its layer count."""

    def __init__(self, n_layer: int) -> None:
        self.n_layer = n_layer


@pytest.fixture
def two_layers(monkeypatch: pytest.MonkeyPatch) -> FakeModel:
    import harness.mitigations.engine as engine  # scale.py looks layer_count up there

    monkeypatch.setattr(engine, "layer_count", lambda model: model.n_layer)
    return FakeModel(2)


@pytest.mark.parametrize("chunk", [1, 33, 200])
def test_dt_scale_and_a_scale_match_naive_recurrence(chunk: int, two_layers: FakeModel) -> None:
    inputs, s = random_inputs(200), 0.3
    y_dt, _ = drive(inputs, DtScale(s=s).hooks(two_layers), chunk, layer=1)  # type: ignore[arg-type]
    y_a, _ = drive(inputs, AScale(s=s).hooks(two_layers), chunk, layer=1)  # type: ignore[arg-type]
    assert close(y_dt, naive_scan(inputs.with_(dt=inputs.dt * s), None)[0])
    assert close(y_a, naive_scan(inputs.with_(A=inputs.A * s), None)[0])


def test_scales_from_file(tmp_path, two_layers: FakeModel) -> None:
    listed, mapped, short = tmp_path / "l.json", tmp_path / "m.json", tmp_path / "s.json"
    listed.write_text("[0.5, 2]")
    mapped.write_text('{"1": 3}')
    short.write_text("[0.5]")
    dt = DtScale(file=str(listed))
    dt.hooks(two_layers)  # type: ignore[arg-type]
    assert dt.artifacts() == {"scales": [0.5, 2.0]}
    a = AScale(file=str(mapped), s=0.25)
    a.hooks(two_layers)  # type: ignore[arg-type]
    assert a.artifacts() == {"scales": [0.25, 3.0]}
    assert a.spec == "a-scale:file=m.json:s=0.25"  # the file by its name, not its folder
    with pytest.raises(ValueError, match="lists 1 scales, the model has 2 layers"):
        DtScale(file=str(short)).hooks(two_layers)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not exist"):
        DtScale(file=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="cannot read scale file"):
        DtScale(file=str(tmp_path))  # a folder


def test_unit_scales_are_identity(two_layers: FakeModel) -> None:
    inputs = random_inputs(10)
    for m in (DtScale(s=1.0), AScale(s=1.0)):
        assert m.hooks(two_layers).transform_inputs(0, inputs) is inputs  # type: ignore[arg-type,union-attr]


# --- state-norm -------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "chunk"), [(1, 16), (8, 5), (8, 64), (16, 200)])
def test_state_norm_matches_naive_clipped_recurrence(k: int, chunk: int) -> None:
    inputs = random_inputs(200, slow=True)
    tau = torch.full((1, H), 3.0)
    hooks = Hooks(transform_state=lambda layer, h, pos: clip(tau, layer, h, pos), interval=k)
    y, h = drive(inputs, hooks, chunk)
    # by hand: the recurrence, clipping after every token whose position is a multiple of k
    ys, state = [], None
    for t in range(200):
        y_t, state = naive_scan(piece(inputs, t, t + 1), state)
        if (t + 1) % k == 0:
            norm = state.flatten(2).norm(dim=-1)  # (b, h)
            state = state * torch.clamp(tau[0] / norm, max=1)[..., None, None]
        ys.append(y_t)
    assert close(y, torch.cat(ys, dim=1)) and close(h, state)


def test_clip_bounds_every_head_and_leaves_small_states() -> None:
    tau = torch.tensor([[1.0, 2.0, 0.5, 1e9]])
    h = torch.randn(3, H, P, N) * 10
    h[0, 1] = 0.0
    out = clip(tau, 0, h, 128)
    norms = out.flatten(2).norm(dim=-1)
    assert torch.all(norms <= tau[0] * (1 + 1e-6))
    assert torch.equal(out[:, 3], h[:, 3]) and torch.equal(out[0, 1], h[0, 1])


def test_infinite_threshold_is_identity() -> None:
    inputs = random_inputs(100)
    tau = torch.full((1, H), math.inf)
    hooks = Hooks(transform_state=lambda layer, h, pos: clip(tau, layer, h, pos), interval=10)
    y, h = drive(inputs, hooks, 100)
    y0, h0 = naive_scan(inputs, None)
    assert torch.equal(y, y0) and torch.equal(h, h0)


# --- window ------------------------------------------------------------------------------


def brute_force_window(inputs: ScanInputs, r: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """y_t and h_t of the plain scan from the zero state over positions t-r+1..t only."""
    y, h = naive_scan(piece(inputs, max(t - r + 1, 0), t + 1), None)
    return y[:, -1], h


@pytest.mark.parametrize(("r", "chunk"), [(1, 1), (8, 3), (8, 8), (8, 20), (13, 4), (50, 64)])
def test_window_equals_brute_force(r: int, chunk: int) -> None:
    inputs = random_inputs(120, seed=r, slow=True)
    scan = WindowScan(r, naive_scan)
    state: WindowState | None = None
    for lo in range(0, 120, chunk):
        hi = min(lo + chunk, 120)
        y, state = scan(piece(inputs, lo, hi), state)
        for t in range(lo, hi, max(1, (hi - lo) // 3)):
            assert close(y[:, t - lo], brute_force_window(inputs, r, t)[0], 1e-4)
        assert close(state.window, brute_force_window(inputs, r, hi - 1)[1], 1e-4)
        assert len(state.pieces) <= r + 1  # only what the window still needs is kept


def test_window_with_per_token_A_after_rri() -> None:
    inputs = RRI(a=0.95, b=0.5).hooks(model=None).transform_inputs(0, random_inputs(60, slow=True))  # type: ignore[arg-type,union-attr]
    y, _ = drive(inputs, Hooks(scans={0: WindowScan(10, naive_scan)}), 7)
    assert all(close(y[:, t], brute_force_window(inputs, 10, t)[0], 1e-4) for t in range(60))


def test_window_longer_than_input_is_the_plain_scan() -> None:
    inputs = random_inputs(100)
    y, state = drive(inputs, Hooks(scans={0: WindowScan(100, naive_scan)}), 30)
    y0, h0 = naive_scan(inputs, None)
    assert torch.equal(y, y0) and torch.equal(state.window, h0)


@pytest.mark.parametrize(("r", "chunk"), [(8, 100), (8, 256), (37, 61)])
def test_window_equals_brute_force_across_restarts(r: int, chunk: int) -> None:
    """Past 2 blocks (restarts at multiples of 256 and 256 + r), still the window's scan."""
    inputs = random_inputs(800, seed=r, slow=True)
    y, state = drive(inputs, Hooks(scans={0: WindowScan(r, naive_scan)}), chunk)
    for t in (255, 256, 257, 256 + r - 1, 256 + r, 511, 512 + r, 799):
        assert close(y[:, t], brute_force_window(inputs, r, t)[0], 1e-4)
    assert close(state.window, brute_force_window(inputs, r, 799)[1], 1e-4)


def window_float64(inputs: ScanInputs, r: int) -> torch.Tensor:
    """y_t = sum_{t-r < i <= t} exp(sum_{i < j <= t} dt_j A) (C_t . B_i) dt_i x_i, in float64,
    one offset i = t - k at a time (one group, A per head)."""
    length = inputs.x.shape[1]
    cum = (inputs.dt.double() * inputs.A.double()).cumsum(1)  # (b, l, h)
    dtx = inputs.x.double() * inputs.dt.double()[..., None]  # (b, l, h, p)
    B, C = inputs.B.double()[:, :, 0], inputs.C.double()[:, :, 0]  # (b, l, n)
    y = torch.zeros_like(dtx)
    for k in range(r):
        cb = (C[:, k:] * B[:, : length - k]).sum(-1)  # (b, l - k)
        weight = torch.exp(cum[:, k:] - cum[:, : length - k]) * cb[..., None]  # (b, l - k, h)
        y[:, k:] += weight[..., None] * dtx[:, : length - k]
    return y


def test_window_exact_at_64k_on_heads_that_barely_forget(one_thread: None) -> None:
    """The error stays bounded by the window, not by the history (A ~ 1e-5..1e-4, r = 37)."""
    from functools import partial

    from harness.models.mamba2.ssd import scan

    length, r, g = 65536, 37, torch.Generator().manual_seed(0)
    inputs = ScanInputs(
        x=torch.randn(1, length, 2, 2, generator=g),
        dt=torch.nn.functional.softplus(torch.randn(1, length, 2, generator=g)),
        A=-torch.exp(torch.empty(2).uniform_(-11.5, -9.2, generator=g)),
        B=torch.randn(1, length, 1, 4, generator=g),
        C=torch.randn(1, length, 1, 4, generator=g),
        start=0,
    )
    window = WindowScan(r, partial(scan, backend="torch", chunk_size=64))
    y, _ = drive(inputs, Hooks(scans={0: window}), 2048)
    error = (y.double() - window_float64(inputs, r)).abs().amax(dim=(0, 2, 3))  # per token
    assert float(error.max()) < 2e-4
    # not growing with the position: the last 4K tokens are no worse than the first 4K
    assert float(error[-4096:].max()) < 2 * float(error[:4096].max())


def test_window_state_clone_is_independent() -> None:
    inputs = random_inputs(40)
    scan = WindowScan(5, naive_scan)
    _, state = scan(piece(inputs, 0, 20), None)
    copy = state.clone()
    y1, _ = scan(piece(inputs, 20, 40), state)
    y2, _ = scan(piece(inputs, 20, 40), copy)
    assert torch.equal(y1, y2)


# --- composition -------------------------------------------------------------------------


def test_composite_chains_input_transforms_in_order(two_layers: FakeModel) -> None:
    inputs = random_inputs(30)
    hooks = parse_mitigation("rri:a=0.9:b=0.5+dt-scale:s=0.5").hooks(two_layers)  # type: ignore[arg-type]
    out = hooks.transform_inputs(0, inputs)
    # rri first: A' = A + log(a)/dt, then dt' = s dt: decay exp(s dt A') = (a alpha)^s
    assert close(out.dt * out.A, 0.5 * (inputs.dt * inputs.A + math.log(0.9)))
    assert close(out.B, inputs.B * 0.5)


def test_merged_state_hooks_fire_at_their_own_intervals() -> None:
    calls: list[tuple[str, int]] = []

    def every(tag: str):
        def fn(layer: int, h: torch.Tensor, position: int) -> torch.Tensor:
            calls.append((tag, position))
            return h

        return fn

    merged = merge_hooks(
        [
            Hooks(transform_state=every("a"), interval=4),
            None,
            Hooks(transform_state=every("b"), interval=6),
        ]
    )
    assert merged is not None and merged.interval == 2
    for position in range(2, 13, 2):
        merged.transform_state(0, torch.zeros(1), position)  # type: ignore[misc]
    assert calls == [("a", 4), ("b", 6), ("a", 8), ("a", 12), ("b", 12)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("window+window:r=4", "window appears twice"),
        ("window+state-norm", "not the plain h"),
        ("state-norm+window", "not the plain h"),
        ("none+rri", "'none' cannot be combined"),
        ("windw", "Did you mean window"),
        ("rri+", "empty mitigation name"),
        ("rri:a=2", r"a is the extra decay per token, in \(0, 1\]"),
        ("state-norm:calib=text", "valid: newline, eval"),
    ],
)
def test_bad_specs_are_refused_with_the_valid_choices(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mitigation(spec)


def test_canonical_specs() -> None:
    assert parse_mitigation("rri:b=0.75").spec == "rri:a=0.9999:b=0.75"
    assert parse_mitigation("window:r=64+rri").spec == "window:r=64+rri:a=0.9999:b=0.75"
    assert parse_mitigation("state-norm:mult=inf").spec == "state-norm:calib=newline:k=128:mult=inf"
    for spec in ("rri:a=0.9999:b=0.75", "dt-scale:s=0.2", "rri:a=0.9:b=1.0+window:r=64"):
        assert parse_mitigation(spec).spec == spec
