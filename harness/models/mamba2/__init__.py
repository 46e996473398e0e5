"""Our Mamba-2: the model, its chunked SSD scan (torch; Triton via mamba-ssm when installed),
checkpoint loading in both formats, hook points for mitigations and observers."""

from harness.models.mamba2.checkpoint import CheckpointError, load_mamba2, save_pretrained
from harness.models.mamba2.config import ConfigError, Mamba2Config
from harness.models.mamba2.lm import Mamba2LM
from harness.models.mamba2.model import Mamba2, Mamba2State
from harness.models.mamba2.ssd import BackendError, resolve_backend, scan, ssd_scan
from harness.models.recurrence import Hooks, Scan, ScanInputs, StateSnapshot

__all__ = [
    "BackendError",
    "CheckpointError",
    "ConfigError",
    "Hooks",
    "Mamba2",
    "Mamba2Config",
    "Mamba2LM",
    "Mamba2State",
    "Scan",
    "ScanInputs",
    "StateSnapshot",
    "load_mamba2",
    "resolve_backend",
    "save_pretrained",
    "scan",
    "ssd_scan",
]
