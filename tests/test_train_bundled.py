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
ABSOLUTE_PATH = re.compile(r"(?:^|[\s:=@'\"(])/[^\s/]+/")  # /work/..., not 1/8 or a/b


def card_number(card: str, label: str) -> int:
    match = re.search(rf"^- {label}: ([\d,]+)", card, flags=re.MULTILINE)
    assert match, f"the card has no '- {label}:' line"
    return int(match.group(1).replace(",", ""))


def test_the_bundled_models_are_there_and_small() -> None:
    names = {p.name for p in MODELS}
    assert {"mamba2-bytes-320", "mamba2-bytes-320-tbptt-1280", "neox-bytes-320"} <= names
    assert {"mamba1-bytes-320", "rwkv6-bytes-320"} <= names
    assert sum(f.stat().st_size for f in BUNDLED.rglob("*") if f.is_file()) < MAX_BYTES


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_bundled_model_loads_and_matches_its_card(path: Path) -> None:
    model = load(resolve(str(path)), "cpu", torch.float32, "torch")
    card = (path / "MODEL_CARD.md").read_text()
    config = json.loads((path / "config.json").read_text())

    assert card_number(card, "Parameters") == model.info.params
    assert model.info.train_context == config["train_context"]
    assert f"train_context {config['train_context']} tokens" in card
    if model.info.family in ("mamba2", "mamba1", "rwkv6"):
        assert card_number(card, "State size") == model.info.state_size
    else:
        assert model.info.state_size is None

    ids = model.encode("The passkey is 12345.")
    assert ids == list(b"The passkey is 12345.")
    logits, _ = model.forward(torch.tensor([ids]), model.init_state(1))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_bundled_model_says_nothing_of_the_machine_it_was_trained_on(path: Path) -> None:
    """No absolute path in the card or training.json; the card opens with a short summary."""
    for name in ("MODEL_CARD.md", "training.json"):
        text = (path / name).read_text()
        assert not ABSOLUTE_PATH.search(text), f"{name}: {ABSOLUTE_PATH.search(text)}"
    card = (path / "MODEL_CARD.md").read_text()
    summary = card.split("\n\n")[1]
    assert "\n" not in summary.strip() and len(summary) <= 200
