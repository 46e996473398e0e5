"""The Mamba-2 model: chunking invariance, the recurrent path, hooks, dtypes, the LM adapter."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.models.base import ModelInfo
from harness.models.mamba2 import Hooks, Mamba2, Mamba2Config, Mamba2LM, Mamba2State, ScanInputs
from harness.models.mamba2.ssd import scan
from harness.models.recurrence import StateSnapshot, piece_tokens

LENGTH = 300


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**changes: object) -> Mamba2Config:
    fields = dict(d_model=32, n_layer=2, vocab_size=100, d_state=16, headdim=8, ngroups=2)
    return Mamba2Config(**(fields | {"chunk_size": 32} | changes))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model() -> Mamba2:
    torch.manual_seed(0)
    return Mamba2(tiny_config()).eval()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 100, (2, LENGTH), generator=torch.Generator().manual_seed(1))


def in_pieces(
    model: Mamba2, ids: torch.Tensor, size: int, hooks: Hooks | None = None
) -> tuple[torch.Tensor, Mamba2State]:
    state, outs = None, []
    for start in range(0, ids.shape[1], size):
        logits, state = model(ids[:, start : start + size], state, hooks)
        outs.append(logits)
    assert state is not None
    return torch.cat(outs, dim=1), state


@torch.no_grad()
@pytest.mark.parametrize("size", [1, 7, 64, 100, 256])
def test_any_chunking_gives_one_pass(model: Mamba2, ids: torch.Tensor, size: int) -> None:
    full, full_state = model(ids)
    pieces, state = in_pieces(model, ids, size)
    assert full.dtype == torch.float32 and full.shape == (2, LENGTH, 112)  # vocab padded to 16
    assert (pieces - full).abs().max() < 1e-5
    assert state.position == full_state.position == LENGTH
    for a, b in zip(state.ssm, full_state.ssm, strict=True):
        assert a.dtype == torch.float32 and (a - b).abs().max() < 1e-5
    for a, b in zip(state.conv, full_state.conv, strict=True):
        assert (a - b).abs().max() < 1e-5


@torch.no_grad()
def test_state_clone_is_independent(model: Mamba2, ids: torch.Tensor) -> None:
    _, state = model(ids[:, :50])
    kept = state.clone()
    first, _ = model(ids[:, 50:60], state)
    again, _ = model(ids[:, 50:60], kept)
    assert torch.equal(first, again)


def test_autograd_through_the_scan(model: Mamba2, ids: torch.Tensor) -> None:
    logits, _ = model(ids[:, :70])
    logits.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def test_bf16_weights_keep_float32_state_and_logits(ids: torch.Tensor) -> None:
    torch.manual_seed(0)
    fp32 = Mamba2(tiny_config()).eval()
    bf16 = Mamba2(tiny_config()).eval()
    bf16.load_state_dict(fp32.state_dict())
    bf16.to(torch.bfloat16)
    logits, state = bf16(ids[:, :80])
    assert logits.dtype == torch.float32
    assert all(h.dtype == torch.float32 for h in state.ssm)
    assert all(c.dtype == torch.bfloat16 for c in state.conv)
    step, state = bf16(ids[:, 80:81], state)
    assert step.dtype == torch.float32 and state.ssm[0].dtype == torch.float32
    reference, _ = fp32(ids[:, :80])
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max()


@torch.no_grad()
def test_bf16_projections_keep_the_rest_float32(model: Mamba2, ids: torch.Tensor) -> None:
    mixed = copy.deepcopy(model).set_projection_dtype(torch.bfloat16)
    mixer = mixed.layers[0].mixer
    assert mixer.in_proj.weight.dtype == mixer.out_proj.weight.dtype == torch.bfloat16
    assert mixed.embedding.weight.dtype == mixed.lm_head.weight.dtype == torch.bfloat16
    for small in (mixer.A_log, mixer.dt_bias, mixer.D, mixer.conv1d.weight, mixer.norm.weight):
        assert small.dtype == torch.float32
    logits, state = mixed(ids[:, :80])
    step, state = mixed(ids[:, 80:81], state)
    assert logits.dtype == step.dtype == torch.float32 and state.ssm[0].dtype == torch.float32
    reference, _ = model(ids[:, :81])
    assert (logits - reference[:, :80]).abs().max() < 0.05 * reference.abs().max()
    assert (step - reference[:, 80:]).abs().max() < 0.05 * reference.abs().max()


# --- hooks -------------------------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("size", [1, 50, LENGTH])
def test_identity_hooks_reproduce_no_hook_logits(model: Mamba2, ids: torch.Tensor, size: int):
    plain, plain_state = in_pieces(model, ids, size)
    hooks = Hooks(
        transform_inputs=lambda layer, inputs: inputs,
        transform_state=lambda layer, h, position: h,
        observer=lambda snapshot: None,
        interval=64,
    )
    hooked, state = in_pieces(model, ids, size, hooks)
    assert (hooked - plain).abs().max() < 1e-5
    assert (state.ssm[1] - plain_state.ssm[1]).abs().max() < 1e-5


@torch.no_grad()
@pytest.mark.parametrize("size", [1, 50, LENGTH])
def test_observer_and_transform_state_at_multiples_of_interval(
    model: Mamba2, ids: torch.Tensor, size: int
) -> None:
    seen: list[tuple[int, int, tuple[int, ...]]] = []
    transformed: list[tuple[int, int]] = []

    def observe(snapshot: StateSnapshot) -> None:
        assert snapshot.h.shape == (2, 8, 8, 16) and snapshot.h.dtype == torch.float32
        assert snapshot.stats()["norm"].shape == (2, 8)
        seen.append((snapshot.layer, snapshot.position, tuple(snapshot.dt.shape)))

    def halve(layer: int, h: torch.Tensor, position: int) -> torch.Tensor:
        transformed.append((layer, position))
        return h * 0.5

    hooks = Hooks(transform_state=halve, observer=observe, interval=64)
    logits, _ = in_pieces(model, ids, size, hooks)
    positions = [64, 128, 192, 256]
    assert sorted(transformed) == [(layer, p) for layer in (0, 1) for p in positions]
    assert sorted((layer, p) for layer, p, _ in seen) == sorted(transformed)
    # each snapshot carries its whole interval's dt, whatever calls the interval spanned
    assert {shape for _, _, shape in seen} == {(2, 64, 8)}
    plain, _ = model(ids)
    assert (logits[:, :64] - plain[:, :64]).abs().max() < 1e-5
    assert (logits[:, 64:] - plain[:, 64:]).abs().max() > 1e-3  # the halving took effect


@torch.no_grad()
def test_transform_inputs_sees_absolute_positions_and_edits_the_scan(
    model: Mamba2, ids: torch.Tensor
) -> None:
    starts: list[int] = []

    def per_token_A(layer: int, inputs: ScanInputs) -> ScanInputs:
        starts.append(inputs.start)
        A = inputs.A.expand_as(inputs.dt)  # (b, l, h): same decay, per-token layout
        return inputs.with_(A=A.contiguous())

    plain, _ = model(ids)
    hooks = Hooks(transform_inputs=per_token_A)
    logits, _ = in_pieces(model, ids, 100, hooks)
    assert starts == [0, 0, 100, 100, 200, 200]
    assert (logits - plain).abs().max() < 1e-5
    weaker = Hooks(transform_inputs=lambda layer, inputs: inputs.with_(B=inputs.B * 0.5))
    changed, _ = model(ids, None, weaker)
    assert (changed - plain).abs().max() > 1e-3


@torch.no_grad()
def test_replacement_scan_carries_its_own_state(model: Mamba2, ids: torch.Tensor) -> None:
    class Counting:
        """The engine's scan, its state wrapped in an object the engine must pass back."""

        def __init__(self) -> None:
            self.calls = 0

        def __call__(self, inputs: ScanInputs, state: Box | None) -> tuple[torch.Tensor, Box]:
            self.calls += 1
            y, h = scan(inputs, None if state is None else state.h, "torch", 16)
            return y, Box(h)

    class Box:
        def __init__(self, h: torch.Tensor) -> None:
            self.h = h

        def clone(self) -> Box:
            return Box(self.h.clone())

    replacement = Counting()
    hooks = Hooks(scans={1: replacement})
    plain, _ = model(ids)
    logits, state = in_pieces(model, ids, 100, hooks)
    assert replacement.calls == 3 and isinstance(state.ssm[1], Box)
    assert isinstance(state.ssm[0], torch.Tensor)
    assert (logits - plain).abs().max() < 1e-5
    assert isinstance(state.clone().ssm[1], Box)


# --- the LanguageModel adapter -------------------------------------------------------------


@pytest.fixture(scope="module")
def lm() -> Mamba2LM:
    from harness.models.tokenizer import byte_tokenizer

    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    module = Mamba2(tiny_config(vocab_size=len(tokenizer), d_model=16)).eval()
    info = ModelInfo(
        name="t", ref="t", family="mamba2", params=0, state_size=module.config.state_size,
        train_context=64, train_context_source="test", dtype="float32", device="cpu",
        backend="torch",
    )  # fmt: skip
    return Mamba2LM(module, tokenizer, info)


def test_lm_encode_decode_and_backend(lm: Mamba2LM) -> None:
    assert lm.backend == "torch"
    ids = lm.encode("hello")
    assert ids == list(b"hello") and lm.decode(ids) == "hello"
    assert lm.eos_token_id == 256


def test_lm_token_losses_match_one_pass(lm: Mamba2LM) -> None:
    ids = torch.randint(0, 256, (150,), generator=torch.Generator().manual_seed(3))
    losses = lm.token_losses(ids, chunk=40)
    with torch.no_grad():
        logits, _ = lm.forward(ids[None], lm.init_state(1))
    reference = torch.nn.functional.cross_entropy(logits[0, :-1], ids[1:], reduction="none")
    assert losses.shape == (149,) and (losses - reference).abs().max() < 1e-4


def test_lm_prefill_keeps_only_the_last_logits_of_a_pass(lm: Mamba2LM) -> None:
    prompt = list(range(70))
    logits, state = lm.prefill(prompt, chunk=32)
    with torch.inference_mode():
        full, full_state = lm.forward(torch.tensor([prompt]), lm.init_state(1))
    assert logits.shape == (lm.module.config.padded_vocab_size,)
    assert (logits - full[0, -1]).abs().max() < 1e-5
    assert state.position == full_state.position == 70
    with pytest.raises(ValueError, match="at least one token"):
        lm.prefill([])


def test_lm_generate_uses_steps_like_a_pass(lm: Mamba2LM) -> None:
    prompt = lm.encode("The passkey is")
    logits, state = lm.prefill(prompt, chunk=5)
    out = lm.generate(logits, state.clone(), max_new_tokens=6)
    with torch.no_grad():
        full, _ = lm.forward(torch.tensor([prompt + out[:-1]]), lm.init_state(1))
    assert full[0, len(prompt) - 1 :].argmax(-1).tolist() == out


def test_lm_hooks_attribute_reaches_the_model(lm: Mamba2LM) -> None:
    positions: list[int] = []
    lm.hooks = Hooks(observer=lambda s: positions.append(s.position), interval=16)
    try:
        lm.prefill(list(range(40)), chunk=7)
    finally:
        lm.hooks = None
    assert positions == [16, 16, 32, 32]


@torch.no_grad()
def test_last_only_gives_the_last_logits(model: Mamba2, ids: torch.Tensor) -> None:
    full, full_state = model(ids[:, :90])
    last, state = model(ids[:, :90], last_only=True)
    assert last.shape == (2, 1, 112) and (last[:, 0] - full[:, -1]).abs().max() < 1e-5
    assert state.position == full_state.position == 90


@torch.no_grad()
def test_long_calls_go_through_in_pieces_exactly(model: Mamba2) -> None:
    ids = torch.randint(0, 100, (1, 2 * piece_tokens(torch.device("cpu")) + 37))
    full, state = model(ids)  # three pieces inside
    split, split_state = in_pieces(model, ids, 1000)
    assert (full - split).abs().max() < 1e-5
    for a, b in zip(state.ssm, split_state.ssm, strict=True):
        assert (a - b).abs().max() < 1e-5
    heads = []  # the vocabulary head reads the last token alone, once, not every piece's
    hook = model.lm_head.register_forward_hook(lambda _, inputs, out: heads.append(out.shape))
    last, _ = model(ids, last_only=True)
    hook.remove()
    assert heads == [(1, 1, 112)]
    assert last.shape == (1, 1, 112) and (last[:, 0] - full[:, -1]).abs().max() < 1e-5
