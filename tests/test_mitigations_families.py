"""The mitigations on the families with a decay per state entry (Mamba-1, RWKV-6): each
against a token-by-token recurrence written here in float64 from its definition, in both read
orders of the core (y_t = C_t h_t, Mamba's; y_t = C_t h_{t-1}, RWKV's), then on tiny random
models of both families through the mitigation API: chunk invariance and refusals."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from harness.mitigations import parse_mitigation
from harness.mitigations.base import MitigationError
from harness.mitigations.state_norm import clip
from harness.mitigations.window_scan import WindowScan
from harness.models.base import ModelInfo, RecurrentLM
from harness.models.mamba1 import Mamba1, Mamba1Config
from harness.models.recurrence import Carried, Hooks, ScanInputs, diagonal_scan, run_scan
from harness.models.rwkv6 import Rwkv6, Rwkv6Config
from harness.models.tiny import randomize_rwkv6
from harness.models.tokenizer import byte_tokenizer

b, L, H, P, N = 2, 70, 3, 2, 4


@pytest.fixture(autouse=True)
def _threads(one_thread: None) -> None:
    """Tiny tensors: one thread (conftest)."""


def entry_inputs(seed: int = 0, groups: int = 1) -> ScanInputs:
    """Inputs with a decay per (head, entry), some heads barely forgetting."""
    g = torch.Generator().manual_seed(seed)
    A = -torch.rand(H, N, generator=g) * 2
    A[0] = -torch.rand(N, generator=g) * 1e-3  # a head that barely forgets
    return ScanInputs(
        x=torch.randn(b, L, H, P, generator=g),
        dt=torch.rand(b, L, H, generator=g) + 0.05,
        A=A,
        B=torch.randn(b, L, groups, N, generator=g),
        C=torch.randn(b, L, groups, N, generator=g),
        start=0,
    )


def terms(inputs: ScanInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 log alpha (b, l, h, n), insertion (b, l, h, p, n), C per head (b, l, h, n)."""
    rep = H // inputs.B.shape[2]
    B = inputs.B.double().repeat_interleave(rep, dim=2)
    C = inputs.C.double().repeat_interleave(rep, dim=2)
    dt, A = inputs.dt.double(), inputs.A.double()
    log_alpha = dt[..., None] * (A if A.dim() == 4 else A.expand(b, L, H, N))
    inserted = (dt[..., None] * inputs.x.double())[..., None] * B[:, :, :, None, :]
    return log_alpha, inserted, C


def read(C: torch.Tensor, states: list[torch.Tensor], current: bool) -> torch.Tensor:
    """y_t = C_t h_t (current) or C_t h_{t-1} from the states after each token."""
    zero = torch.zeros_like(states[0])
    seen = states if current else [zero, *states[:-1]]
    return torch.stack([torch.einsum("bhpn,bhn->bhp", h, C[:, t]) for t, h in enumerate(seen)], 1)


def run(inputs: ScanInputs, hooks: Hooks, current: bool, cuts: tuple[int, ...]) -> torch.Tensor:
    """The core with hooks, the sequence fed in pieces ending at `cuts`."""
    scan = partial(diagonal_scan, current=current)
    carried, ys, lo = Carried(), [], 0
    for hi in (*cuts, L):
        y, carried = run_scan(0, inputs.piece(lo, hi), carried, hooks, scan)
        ys.append(y)
        lo = hi
    return torch.cat(ys, 1).double()


@pytest.mark.parametrize("current", [True, False])
def test_rri_is_the_scaled_recurrence(current: bool) -> None:
    a, bb = 0.97, 0.6
    inputs = entry_inputs(1)
    log_alpha, inserted, C = terms(inputs)
    h, states = torch.zeros(b, H, P, N, dtype=torch.float64), []
    for t in range(L):
        h = a * log_alpha[:, t, :, None].exp() * h + bb * inserted[:, t]
        states.append(h)
    hooks = parse_mitigation(f"rri:a={a}:b={bb}").hooks(None)  # type: ignore[arg-type]
    y = run(inputs, hooks, current, (13, 40))
    assert torch.allclose(y, read(C, states, current), atol=1e-5)


@pytest.mark.parametrize(
    "spec,dt_s,A_s", [("dt-scale:s=0.3", 0.3, 1.0), ("a-scale:s=0.4", 1.0, 0.4)]
)
def test_scales_are_the_scaled_recurrence(spec: str, dt_s: float, A_s: float) -> None:
    inputs = entry_inputs(2)
    log_alpha, inserted, C = terms(inputs)
    h, states = torch.zeros(b, H, P, N, dtype=torch.float64), []
    for t in range(L):
        h = (dt_s * A_s * log_alpha[:, t, :, None]).exp() * h + dt_s * inserted[:, t]
        states.append(h)
    mitigation = parse_mitigation(spec)
    hooks = Hooks(transform_inputs=lambda layer, x: mitigation.apply(x, mitigation.settings.s))
    assert torch.allclose(run(inputs, hooks, True, (30,)), read(C, states, True), atol=1e-5)


@pytest.mark.parametrize("current", [True, False])
@pytest.mark.parametrize("r", [1, 9, 40])
def test_window_is_the_sum_over_the_last_r_tokens(r: int, current: bool) -> None:
    inputs = entry_inputs(3, groups=H)
    log_alpha, inserted, C = terms(inputs)
    cum = log_alpha.cumsum(1)  # (b, l, h, n)
    states = []
    for t in range(L):  # W_t = sum_{t-r < i <= t} exp(cum_t - cum_i) dt_i x_i B_i^T
        first = max(0, t - r + 1)
        decay = (cum[:, t, None] - cum[:, first : t + 1]).exp()  # (b, i, h, n)
        states.append((decay[:, :, :, None] * inserted[:, first : t + 1]).sum(1))
    scan = partial(diagonal_scan, current=current)
    hooks = Hooks(scans={0: WindowScan(r, scan)})
    expected = read(C, states, current)
    assert torch.allclose(run(inputs, hooks, current, (5, 33, 34)), expected, atol=1e-5)


@pytest.mark.parametrize("current", [True, False])
def test_state_norm_clips_each_head_every_k_tokens(current: bool) -> None:
    k = 8
    inputs = entry_inputs(4)
    log_alpha, inserted, C = terms(inputs)
    tau = torch.tensor([[0.5, 2.0, 1e9]])  # (layers, heads)
    h, before, after = torch.zeros(b, H, P, N, dtype=torch.float64), [], []
    for t in range(L):
        h = log_alpha[:, t, :, None].exp() * h + inserted[:, t]
        before.append(h)  # what token t reads in Mamba's order: the clip comes after it
        if (t + 1) % k == 0:
            norm = h.flatten(2).norm(dim=-1)  # (b, h)
            h = h * (tau[0].double() / norm).clamp(max=1)[..., None, None]
        after.append(h)  # what token t + 1 reads in RWKV's order
    hooks = Hooks(transform_state=partial(clip, tau), interval=k)
    expected = read(C, before if current else after, current)
    assert torch.allclose(run(inputs, hooks, current, (20, 21)), expected, atol=1e-5)


def tiny_mamba1() -> RecurrentLM:
    config = Mamba1Config(d_model=32, n_layer=2, vocab_size=257, d_state=8)
    torch.manual_seed(0)
    return wrap(Mamba1(config).eval(), "mamba1", config.state_size)


def tiny_rwkv6() -> RecurrentLM:
    config = Rwkv6Config(vocab_size=257, d_model=32, n_layer=2, head_size=8, d_mix=4, d_decay=8)
    torch.manual_seed(0)
    module = Rwkv6(config).eval()
    randomize_rwkv6(module, std=0.2)
    return wrap(module, "rwkv6", config.state_size)


def wrap(module: torch.nn.Module, family: str, state_size: int) -> RecurrentLM:
    info = ModelInfo(family, family, family, 0, state_size, 64, "test", "float32", "cpu", "torch")
    return RecurrentLM(module, byte_tokenizer(), info)


FAMILY_MODELS = {"mamba1": tiny_mamba1, "rwkv6": tiny_rwkv6}
SPECS = {
    "mamba1": ["rri", "state-norm:k=16", "window:r=24", "dt-scale", "a-scale", "longmamba"],
    "rwkv6": ["rri", "state-norm:k=16", "window:r=24", "rri+state-norm"],
}


@pytest.mark.parametrize("family,spec", [(f, s) for f, specs in SPECS.items() for s in specs])
def test_mitigation_on_a_tiny_model_is_chunk_invariant(family: str, spec: str) -> None:
    model = FAMILY_MODELS[family]()
    ids = torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(5))
    plain = model.token_losses(ids, chunk=200)
    mitigation = parse_mitigation(spec)
    model.hooks = mitigation.hooks(model)
    whole = model.token_losses(ids, chunk=200)
    pieces = model.token_losses(ids, chunk=37)
    assert torch.allclose(whole, pieces, atol=1e-4)
    assert torch.isfinite(whole).all()
    if spec.startswith(("rri", "window", "dt-scale", "a-scale")):  # these act on every token
        assert not torch.allclose(whole, plain, atol=1e-4)


@pytest.mark.parametrize("spec", ["dt-scale", "a-scale", "longmamba"])
def test_rwkv6_has_no_dt_or_A_to_scale(spec: str) -> None:
    assert "rwkv6" not in parse_mitigation(spec).families


def test_a_transformer_is_refused_by_name() -> None:
    from harness.mitigations.engine import recurrent
    from harness.models.tiny import build_tiny_pythia

    with pytest.raises(MitigationError, match="acts on recurrent models; tiny-pythia is a tr"):
        recurrent(build_tiny_pythia("cpu", torch.float32, "auto"))
