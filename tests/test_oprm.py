"""OPRM against a chunk-by-chunk computation written here: every [P, X_i, Q] prefilled on its
own, the lowest next-token entropy wins; the IDK filter; refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.mitigations import parse_mitigation
from harness.mitigations.oprm import IDK_TOKENS
from harness.models.base import PromptParts
from harness.models.tiny import TINY_MODELS

PARTS = PromptParts("Find the number.\n", "The grass is green. " * 30 + "It is 42. " * 3, "\nIt is")


@pytest.fixture(params=["tiny-mamba2", "tiny-pythia"])
def model(request: pytest.FixtureRequest, one_thread: None):
    return TINY_MODELS[request.param].build("cpu", torch.float32, "torch")


def by_hand(model, parts: PromptParts, size: int) -> list[tuple[float, torch.Tensor, object]]:
    """(entropy, logits, state) of each chunk's own prefill, computed without the strategy."""
    P, X, Q = model.encode(parts.prefix), model.encode(parts.context), model.encode(parts.suffix)
    found = []
    with torch.no_grad():
        for start in range(0, len(X), size):
            state = model.init_state(1)
            ids = torch.tensor([P + X[start : start + size] + Q])
            for lo in range(0, ids.shape[1], 50):  # other pieces than prefill's, same result
                logits, state = model.forward(ids[:, lo : lo + 50], state)
            p = logits[0, -1].double().softmax(-1)
            found.append((float(-(p * p.log()).sum()), logits[0, -1], state))
    return found


def greedy(model, logits: torch.Tensor, state: object) -> str:
    return model.decode(model.generate(logits, state.clone(), IDK_TOKENS))


def test_the_lowest_entropy_chunk_answers(model) -> None:
    model.strategy = parse_mitigation("oprm:chunk=64").strategy()
    logits, state = model.prefill_prompt(PARTS)
    chunks = by_hand(model, PARTS, 64)
    assert len(chunks) > 3
    _, want, want_state = min(chunks, key=lambda c: c[0])
    assert torch.allclose(logits, want, atol=1e-4)
    assert greedy(model, logits, state) == greedy(model, want, want_state)  # its state too


def test_without_a_strategy_the_whole_prompt_is_read(model) -> None:
    logits, _ = model.prefill_prompt(PARTS)
    whole, _ = model.prefill(model.encode(PARTS.text))
    assert torch.equal(logits, whole)


def test_idk_filter_passes_over_chunks_that_say_it(model) -> None:
    chunks = by_hand(model, PARTS, 64)
    answers = [greedy(model, logits, state) for _, logits, state in chunks]
    best = min(range(len(chunks)), key=lambda i: chunks[i][0])
    phrase = answers[best]  # what the otherwise chosen chunk says
    if not phrase.strip():
        pytest.skip("this random model's chosen answer is blank")
    allowed = [i for i, a in enumerate(answers) if phrase.lower() not in a.lower()] or list(
        range(len(chunks))
    )
    expected = min(allowed, key=lambda i: chunks[i][0])
    strategy = parse_mitigation(f"oprm:chunk=64:idk={phrase}").strategy()
    logits, _ = strategy.prefill(model, PARTS, None)
    assert torch.allclose(logits, chunks[expected][1], atol=1e-4)


def test_passkey_runs_with_oprm_and_perplexity_refuses_it(tmp_path: Path, capsys) -> None:
    out = tmp_path / "results"
    argv = ["run", "--models", "tiny-mamba2,tiny-pythia", "--mitigations", "none,oprm:chunk=128"]
    assert main([*argv, "--tasks", "passkey", "--lengths", "512", "--samples", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    assert main([*argv, "--tasks", "perplexity", "--lengths", "512", "--out", str(out)]) == 2
    assert "inference strategy" in capsys.readouterr().err
