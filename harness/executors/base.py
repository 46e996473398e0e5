"""The executor interface: how packed jobs reach an engine and come back.

The driver (harness.executors.driver) builds the plan once, packs its pending units into jobs
(harness.executors.packing: one model per job) and hands them to one executor:

    executor = ExecutorClass(settings)     # settings: ExecutorSettings, from the CLI
    executor.submit(jobs, progress)        # start every job (or queue them)
    while jobs remain:
        for finished in executor.wait(timeout=...):   # jobs that ended since the last call
            ...                            # Finished.result is None when the job was lost
    executor.close()                       # always called, also after Ctrl-C

A worker runs a job with `harness.runner.run_job(job)` (load the model once, run its units,
write one part per unit and one worker manifest) and returns its JobResult; a Job and a
JobResult pickle, and every path in them is absolute. Parts are renamed into place whole, so
a job that dies loses at most its unit in flight: an engine may run the whole job again
(units already written are skipped), or the next `harness run` of the same command runs what
is missing. The driver watches parts appear for the progress bar, so an executor need not
report progress; one that runs jobs in the driver's own process passes `progress` on.

A new executor is a subclass of Executor in its own module, named in EXECUTORS
(harness/executors/__init__.py); `check` refuses settings it cannot run (UsageError: exit 2
before any work). The Slurm executor lives in harness/executors/slurm.py as SlurmExecutor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from harness.runner import Job, JobResult, Progress


@dataclass(frozen=True)
class ExecutorSettings:
    name: str = "local"  # local | ray | slurm
    workers: int = 1  # jobs at once: local worker processes; the packing target of ray/slurm
    gpus_per_worker: float | None = None  # ray/slurm: GPUs per job (None: 1 if the engine has any)
    max_retries: int = 1  # runs again of a job whose worker died (engine retry / requeue)
    ray_address: str | None = None  # an existing Ray cluster (else RAY_ADDRESS, else private)
    slurm_partition: str | None = None
    slurm_time: str | None = None  # sbatch --time, e.g. 04:00:00
    slurm_account: str | None = None
    slurm_flags: list[str] = field(default_factory=list)  # extra sbatch flags, KEY=VALUE each


@dataclass(frozen=True)
class Finished:
    job: Job
    result: JobResult | None  # None: the job was lost (its worker died past every retry)
    error: str = ""  # why it was lost


class Executor(ABC):
    name: ClassVar[str]
    in_process: ClassVar[bool] = False  # runs jobs in the driver's process (progress per token)

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings

    @classmethod  # noqa: B027 (optional: most executors accept any settings)
    def check(cls, settings: ExecutorSettings) -> None:
        """Raise UsageError for settings this executor cannot run (engine missing...)."""

    @abstractmethod
    def submit(self, jobs: Sequence[Job], progress: Progress) -> None:
        """Start (or queue) every job; `progress` is for executors that run in-process."""

    @abstractmethod
    def wait(self, timeout: float) -> list[Finished]:
        """The jobs that ended since the last call, waiting at most `timeout` seconds."""

    def close(self) -> None:  # noqa: B027 (optional)
        """Release the engine; cancel jobs still running (called after Ctrl-C too)."""
