"""Mitigations on tiny random Mamba-2 models through the engine's hooks."""

from __future__ import annotations

import pytest
import torch

from harness.mitigations import MitigationError, parse_mitigation
from harness.mitigations.compose import merge_hooks
from harness.mitigations.state_norm import StateNorm
from harness.mitigations.window_scan import WindowScan, WindowState
from harness.models.base import ModelInfo
from harness.models.mamba2 import Hooks, Mamba2, Mamba2Config, Mamba2LM, StateSnapshot, scan
from harness.models.tokenizer import byte_tokenizer

TRAIN_CONTEXT = 256


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, stuffed: bool = False, **dims: int) -> Mamba2LM:
    """A random Mamba-2; `stuffed`: A ~ -2e-9, so alpha ~ 1 and the state never forgets."""
    config = Mamba2Config(
        **{"d_model": 32, "n_layer": 2, "vocab_size": 257, "d_state": 16, "headdim": 8,
           "ngroups": 2, "chunk_size": 64, **dims}
    )  # fmt: skip
    torch.manual_seed(seed)
    module = Mamba2(config)
    if stuffed:
        with torch.no_grad():
            for block in module.layers:
                block.mixer.A_log.fill_(-20.0)
    info = ModelInfo(
        name="tiny", ref="tiny", family="mamba2", params=0, state_size=config.state_size,
        train_context=TRAIN_CONTEXT, train_context_source="test", dtype="float32",
        device="cpu", backend="torch",
    )  # fmt: skip
    return Mamba2LM(module, byte_tokenizer(), info, backend="torch")


@pytest.fixture(scope="module")
def model() -> Mamba2LM:
    return tiny_model()


def random_ids(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def run(model: Mamba2LM, spec: str | None, ids: torch.Tensor, pieces: list[int]):
    """Logits (b, l, vocab) and final state of `ids` fed in pieces of the given lengths."""
    model.hooks = parse_mitigation(spec).hooks(model) if spec else None
    state, logits, at = model.init_state(ids.shape[0]), [], 0
    for n in pieces:
        out, state = model.forward(ids[:, at : at + n], state)
        logits.append(out)
        at += n
    assert at == ids.shape[1]
    model.hooks = None
    return torch.cat(logits, dim=1), state


@pytest.mark.parametrize(
    ("spec", "exact"),
    [
        ("rri:a=1:b=1", True),
        ("dt-scale:s=1", True),
        ("a-scale:s=1", True),
        ("window:r=300", True),
        ("state-norm:mult=inf:k=16", False),  # stops the scan every 16 tokens: rounding only
        ("rri:a=1:b=1+window:r=1000", True),
    ],
)
def test_identity_settings_reproduce_none(model: Mamba2LM, spec: str, exact: bool) -> None:
    ids = random_ids(300)
    base, _ = run(model, None, ids, [300])
    out, _ = run(model, spec, ids, [300])
    assert torch.equal(out, base) if exact else torch.allclose(out, base, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "spec",
    ["rri:a=0.99:b=0.5", "dt-scale:s=0.3", "a-scale:s=3", "state-norm:k=16:mult=0.5",
     "window:r=40", "rri:a=0.99+window:r=40", "dt-scale:s=2+state-norm:k=1:mult=0.5"],
)  # fmt: skip
def test_any_chunking_gives_the_one_pass_result(model: Mamba2LM, spec: str) -> None:
    ids = random_ids(200, seed=1)
    whole, _ = run(model, spec, ids, [200])
    pieces, _ = run(model, spec, ids, [37, 1, 90, 64, 5, 1, 1, 1])
    assert torch.allclose(pieces, whole, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(whole, run(model, None, ids, [200])[0], atol=1e-3)


def test_window_scan_on_engine_scan_equals_brute_force(model: Mamba2LM) -> None:
    """Window built on the engine's dispatch: y_t = plain scan of t-r+1..t from zero."""
    from test_mitigations_scan import piece, random_inputs

    inputs = random_inputs(150, seed=3, slow=True)
    for r, chunk in [(16, 10), (16, 64), (33, 7), (5, 150)]:
        window = WindowScan(r, lambda i, h: scan(i, h, "torch", 16))
        state: WindowState | None = None
        for lo in range(0, 150, chunk):
            y, state = window(piece(inputs, lo, min(lo + chunk, 150)), state)
            t = min(lo + chunk, 150) - 1
            y_ref, h_ref = scan(piece(inputs, max(t - r + 1, 0), t + 1), None, "torch", 16)
            assert torch.allclose(y[:, -1], y_ref[:, -1], rtol=1e-4, atol=1e-4)
            assert torch.allclose(state.window, h_ref, rtol=1e-4, atol=1e-4)


def observed_norms(model: Mamba2LM, hooks: Hooks | None, ids: torch.Tensor, every: int):
    """(layer, position) -> per-head state norms (h,) seen by an observer every `every` tokens."""
    seen: dict[tuple[int, int], torch.Tensor] = {}

    def observe(snapshot: StateSnapshot) -> None:
        seen[snapshot.layer, snapshot.position] = snapshot.stats()["norm"][0]

    model.hooks = merge_hooks([hooks, Hooks(observer=observe, interval=every)])
    with torch.inference_mode():
        model.forward(ids, model.init_state(1))
    model.hooks = None
    return seen


def test_state_norm_clips_every_head_to_its_threshold(model: Mamba2LM) -> None:
    mitigation = StateNorm(k=32, mult=0.5)
    hooks = mitigation.hooks(model)
    tau = torch.tensor(mitigation.artifacts()["tau"])  # (n_layer, nheads)
    ids = random_ids(4 * TRAIN_CONTEXT, seed=2)
    plain = observed_norms(model, None, ids, 32)
    clipped = observed_norms(model, hooks, ids, 32)
    assert any(torch.any(n > tau[layer]) for (layer, _), n in plain.items())  # clipping is needed
    for (layer, _), norms in clipped.items():
        assert torch.all(norms <= tau[layer] * (1 + 1e-5))


def test_state_norm_calibration_is_deterministic_and_reproducible(model: Mamba2LM) -> None:
    first, second = StateNorm(), StateNorm()
    first.hooks(model)
    second.hooks(model)
    assert first.artifacts() == second.artifacts()
    assert first.artifacts()["calib_tokens"] == TRAIN_CONTEXT
    replay = StateNorm()
    replay.set_thresholds(first.artifacts()["tau"])
    assert replay.artifacts()["tau"] == first.artifacts()["tau"]


def test_one_state_norm_calibrates_each_model_it_serves(model: Mamba2LM) -> None:
    mitigation, other = StateNorm(), tiny_model(seed=1)
    mitigation.hooks(model)
    first = mitigation.artifacts()["tau"]
    mitigation.hooks(other)
    assert mitigation.artifacts()["tau"] != first
    mitigation.hooks(model)
    assert mitigation.artifacts()["tau"] == first


def test_state_norm_on_the_evaluation_text(model: Mamba2LM) -> None:
    mitigation = parse_mitigation("state-norm:calib=eval")
    with pytest.raises(MitigationError, match=r"call calibrate\(model, ids\)"):
        mitigation.hooks(model)
    mitigation.calibrate(model, random_ids(1000)[0].tolist())  # type: ignore[attr-defined]
    assert mitigation.artifacts()["calib_tokens"] == TRAIN_CONTEXT
    assert mitigation.hooks(model).interval == 128
    with pytest.raises(MitigationError, match="calib=eval"):
        mitigation.hooks(tiny_model(seed=1))


def test_state_norm_in_a_composite_calibrates_under_the_earlier_parts(model: Mamba2LM) -> None:
    composite = parse_mitigation("rri:a=0.9:b=0.5+state-norm")
    composite.hooks(model)
    alone = StateNorm()
    alone.hooks(model)
    under = torch.tensor(composite.artifacts()["state-norm"]["tau"])
    assert torch.all(under < torch.tensor(alone.artifacts()["tau"]))


def test_scale_file_is_checked_against_the_layer_count(model: Mamba2LM, tmp_path) -> None:
    path = tmp_path / "scales.json"
    path.write_text("[0.5, 0.5, 0.5]")
    with pytest.raises(MitigationError, match="lists 3 scales, the model has 2 layers"):
        parse_mitigation(f"dt-scale:file={path}").hooks(model)


def final_norm(ssm_state: torch.Tensor | WindowState) -> float:
    """The largest per-head state norm of one layer's carried state."""
    h = ssm_state.window if isinstance(ssm_state, WindowState) else ssm_state
    return float(h.flatten(2).norm(dim=-1).max())


def test_mitigations_bound_the_state_of_a_stuffed_model() -> None:
    """alpha ~ 1 everywhere: without a mitigation the state of the newline prompt grows
    linearly; with rri, state-norm or window it levels off. Norms at 32K and 64K tokens."""
    model = tiny_model(stuffed=True, n_layer=1, headdim=16, ngroups=1, chunk_size=256)
    ids = torch.full((1, 8192), model.encode("\n")[0])
    growth = {}
    for spec in (None, "rri", "state-norm", "window:r=1024"):
        model.hooks = parse_mitigation(spec).hooks(model) if spec else None
        state, norms = model.init_state(1), []
        with torch.inference_mode():
            for step in range(8):
                _, state = model.forward(ids, state)
                if step in (3, 7):
                    norms.append(final_norm(state.ssm[0]))
        model.hooks = None
        growth[spec] = norms[1] / norms[0]
    assert growth[None] > 1.9  # unbounded: twice the tokens, twice the norm
    for spec in ("rri", "state-norm", "window:r=1024"):
        assert growth[spec] < 1.06, growth
