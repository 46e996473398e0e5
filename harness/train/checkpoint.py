"""Save and resume a training run.

A run directory holds two things. The model files (config.json with `train_context`,
safetensors weights, tokenizer) that the harness loaders read, rewritten at every save. And
`trainer_state.pt`, everything needed to continue exactly: weights, optimizer moments, the
step (which is also the data position: batches are a function of (seed, step)), the torch
RNG, and the settings the run was started with. It is written to a temporary file and
renamed, so an interruption during a save leaves the previous one intact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.train.models import Trainable

STATE_FILE = "trainer_state.pt"


class ResumeError(ValueError):
    """A run directory whose saved state does not fit the run asked for."""


@dataclass(frozen=True)
class Resumed:
    step: int  # optimizer steps already taken


def save(
    out: Path,
    model: Trainable,
    optimizer: torch.optim.Optimizer,
    step: int,
    settings: dict[str, Any],
    extra_config: dict[str, Any],
) -> None:
    model.save(out, extra_config)
    state = {
        "step": step,
        "model": model.module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "settings": settings,
    }
    tmp = out / f"{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / STATE_FILE)


def has_state(out: Path) -> bool:
    return (out / STATE_FILE).is_file()


def restore(
    out: Path, model: Trainable, optimizer: torch.optim.Optimizer, settings: dict[str, Any]
) -> Resumed:
    """Load the saved state into `model` and `optimizer`; the settings must match."""
    state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    changed = {
        key: (state["settings"].get(key), value)
        for key, value in settings.items()
        if state["settings"].get(key) != value
    }
    if changed:
        detail = ", ".join(f"{k}: saved {old!r}, now {new!r}" for k, (old, new) in changed.items())
        raise ResumeError(
            f"cannot resume {out}: settings differ from the saved run ({detail}); "
            "repeat the original command, or train into a new --out"
        )
    model.module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return Resumed(step=state["step"])
