"""Our Mamba-1: selective scan with a decay per (channel, state entry), exact state carry."""

from harness.models.mamba1.checkpoint import load_mamba1, save_pretrained
from harness.models.mamba1.config import ConfigError, Mamba1Config
from harness.models.mamba1.model import Mamba1, Mamba1State, selective_scan
from harness.models.mamba2.checkpoint import CheckpointError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "Mamba1",
    "Mamba1Config",
    "Mamba1State",
    "load_mamba1",
    "save_pretrained",
    "selective_scan",
]
