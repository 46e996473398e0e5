"""The bundled trained models: they load offline, and their cards match their files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import harness
from harness.models.loading import load, resolve

BUNDLED = Path(harness.__file__).parent / "bundled"
MODELS = sorted(p for p in BUNDLED.iterdir() if (p / "config.json").is_file())
MAX_BYTES = 20 * 2**20


def card_number(card: str, label: str) -> int:
    match = re.search(rf"^- {label}: ([\d,]+)", card, flags=re.MULTILINE)
    assert match, f"the card has no '- {label}:' line"
    return int(match.group(1).replace(",", ""))


def test_the_bundled_models_are_there_and_small() -> None:
    names = {p.name for p in MODELS}
    assert {"mamba2-bytes-512", "mamba2-bytes-512-tbptt-2k", "neox-bytes-512"} <= names
    assert sum(f.stat().st_size for f in BUNDLED.rglob("*") if f.is_file()) < MAX_BYTES


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_bundled_model_loads_and_matches_its_card(path: Path) -> None:
    model = load(resolve(str(path)), "cpu", torch.float32, "torch")
    card = (path / "MODEL_CARD.md").read_text()
    config = json.loads((path / "config.json").read_text())

    assert card_number(card, "Parameters") == model.info.params
    assert model.info.train_context == config["train_context"]
    assert f"train_context {config['train_context']} tokens" in card
    if model.info.family == "mamba2":
        assert card_number(card, "State size") == model.info.state_size
    else:
        assert model.info.state_size is None

    ids = model.encode("The passkey is 12345.")
    assert ids == list(b"The passkey is 12345.")
    logits, _ = model.forward(torch.tensor([ids]), model.init_state(1))
    assert torch.isfinite(logits).all()
