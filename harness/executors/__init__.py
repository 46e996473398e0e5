"""Executors: where the jobs of a run go (see base.py for the interface, driver.py for the
driver that uses them).

    local  this machine: in the driver's process, or --workers N worker processes (default)
    ray    a Ray cluster: one task per job (--ray-address, --gpus-per-worker, --max-retries)
    slurm  a Slurm cluster through submitit (--slurm-partition, --slurm-time, ...)

Each lives in its own module and is imported only when chosen, so `harness` starts fast and
an engine's package is needed only by those who use it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from harness.plan import UsageError

if TYPE_CHECKING:
    from harness.executors.base import Executor

EXECUTORS = {
    "local": ("harness.executors.local", "LocalExecutor"),
    "ray": ("harness.executors.ray_engine", "RayExecutor"),
    "slurm": ("harness.executors.slurm", "SlurmExecutor"),
}


def executor_class(name: str) -> type[Executor]:
    module, cls = EXECUTORS[name]
    try:
        return getattr(import_module(module), cls)
    except ModuleNotFoundError as err:
        if err.name == module:
            raise UsageError(f"--executor {name} is not part of this version") from None
        raise
