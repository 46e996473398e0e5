"""Our Mamba-1: a decay per (channel, state entry) on the recurrence core, exact state carry."""

from harness.models.mamba1.checkpoint import load_mamba1, save_pretrained
from harness.models.mamba1.config import ConfigError, Mamba1Config
from harness.models.mamba1.model import Mamba1, Mamba1State
from harness.models.mamba2.checkpoint import CheckpointError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "Mamba1",
    "Mamba1Config",
    "Mamba1State",
    "load_mamba1",
    "save_pretrained",
]
