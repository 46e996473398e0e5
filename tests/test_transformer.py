"""The transformer baseline: loading by path, exact chunked prefill, greedy generation."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from harness.models.loading import load, resolve


def one_pass_losses(model, ids: list[int]) -> torch.Tensor:
    logits, _ = model.forward(torch.tensor([ids]), model.init_state(1))
    return F.cross_entropy(logits[0, :-1], torch.tensor(ids[1:]), reduction="none")


def test_local_checkpoint_loads_with_its_facts(neox_dir: Path) -> None:
    source = resolve(str(neox_dir))
    assert (source.family, source.name, source.path) == ("transformer", "neox-tiny", neox_dir)
    model = load(source, "cpu", torch.float32, "auto")
    assert model.info.train_context == 512
    assert model.info.train_context_source == "config.json max_position_embeddings"
    assert model.info.params == sum(p.numel() for p in model.module.parameters())
    assert model.encode("ab\n") == [97, 98, 10]


def test_chunked_losses_equal_one_pass_including_beyond_context(neox_dir: Path) -> None:
    model = load(resolve(str(neox_dir)), "cpu", torch.float32, "auto")
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (700,)).tolist()  # past max_position_embeddings (512)
    with torch.inference_mode():
        reference = one_pass_losses(model, ids)
        for chunk in (1, 7, 64, 100, 700, 1000):
            losses = model.token_losses(ids, chunk=chunk)
            assert losses.shape == (699,)
            torch.testing.assert_close(losses, reference, atol=1e-5, rtol=1e-5)


def test_greedy_generation_matches_argmax_of_full_passes(neox_dir: Path) -> None:
    model = load(resolve(str(neox_dir)), "cpu", torch.float32, "auto")
    prompt = model.encode("The passkey is")
    logits, state = model.prefill(prompt, chunk=5)
    generated = model.generate(logits, state, 6)
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(6):
            full, _ = model.forward(torch.tensor([ids]), model.init_state(1))
            ids.append(int(full[0, -1].argmax()))
    assert generated == ids[len(prompt) :]


def test_score_is_teacher_forced_log_probability(neox_dir: Path) -> None:
    model = load(resolve(str(neox_dir)), "cpu", torch.float32, "auto")
    prompt, answer = model.encode("key:"), model.encode(" 12345")
    logits, state = model.prefill(prompt)
    score = model.score(logits, state, answer)
    with torch.inference_mode():
        full, _ = model.forward(torch.tensor([prompt + answer]), model.init_state(1))
    logp = F.log_softmax(full[0], -1)
    expected = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(answer))
    assert abs(score - expected) < 1e-4
