"""Slurm through submitit: one Slurm job per packed job (one job array for the run).

Each job asks for one task on one node with --cpus-per-task 1 and --gpus-per-worker GPUs
(`--gpus-per-task`; default: 1 when the partition has GPUs and --device is not cpu), in
--slurm-partition, with --slurm-time and --slurm-account; every --slurm-flag KEY=VALUE (or
KEY) becomes `#SBATCH --KEY=VALUE` and overrides those defaults. Slurm sets
CUDA_VISIBLE_DEVICES to the GPUs it assigns; the worker takes them as `cuda` and records
them in its manifest. submitit keeps its files (batch scripts, pickles, logs) under
<out>/slurm/<run id>/, so --out must be on a filesystem the compute nodes see.

Faults: a job that Slurm preempts or that reaches its time limit is requeued by submitit
(the worker is checkpointable: it starts the job again, and the units already written are
skipped). A job that ends without a result (scancel, a killed worker, a lost node) is
submitted again up to --max-retries times, then reported lost; the next `harness run` of
the same command runs what is missing. An exception inside a job is not retried: units fail
as rows there already.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.executors.base import Executor, ExecutorSettings, Finished
from harness.plan import UsageError
from harness.runner import Job, JobResult, Progress, run_job

FORCE_CHECK_S = 5.0  # how often the job states are read from Slurm (sacct), at most
RESULT_GRACE_S = 30.0  # a COMPLETED job's result file may show late on a shared filesystem
POLL_S = 0.2  # how often result files are looked for while waiting
FLAG = re.compile(r"^(?:--)?([A-Za-z][A-Za-z0-9_-]*)(?:=(.+))?$")
# Slurm's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(text: str) -> int:
    """Minutes (rounded up, at least 1) of a Slurm --time value; UsageError when malformed."""
    match = TIME.match(text.strip())
    if match is None:
        raise UsageError(
            f"bad --slurm-time {text!r}: use minutes, H:M:S, D-H, D-H:M or D-H:M:S (Slurm's forms)"
        )
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if days is None:  # M, M:S or H:M:S
        if third is None:
            seconds = first * 60 + (second or 0)
        else:
            seconds = first * 3600 + (second or 0) * 60 + third
    else:  # D-H, D-H:M, D-H:M:S
        seconds = days * 86400 + first * 3600 + (second or 0) * 60 + (third or 0)
    return max(1, -(-seconds // 60))


def parse_flags(flags: Sequence[str]) -> dict[str, Any]:
    """--slurm-flag KEY=VALUE / KEY as submitit's sbatch parameters (`_` for `-`)."""
    parsed: dict[str, Any] = {}
    for flag in flags:
        match = FLAG.match(flag.strip())
        if match is None:
            raise UsageError(
                f"bad --slurm-flag {flag!r}: use KEY=VALUE or KEY, e.g. qos=high or exclusive"
            )
        key, value = match.groups()
        parsed[key.replace("-", "_")] = True if value is None else value
    return parsed


def partition_has_gpus(partition: str | None) -> bool:
    """Whether the partition's nodes declare GPUs (GRES gpu)."""
    command = ["sinfo", "-h", "-o", "%G"] + (["-p", partition] if partition else [])
    out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    return "gpu" in out.stdout


def gpus_per_task(settings: ExecutorSettings, device: str) -> int:
    if settings.gpus_per_worker is not None:
        return int(settings.gpus_per_worker)
    if device == "cpu":
        return 0
    return 1 if partition_has_gpus(settings.slurm_partition) else 0


def sbatch_parameters(settings: ExecutorSettings, device: str) -> dict[str, Any]:
    """The sbatch options of every job, in submitit's names (`_` for `-`); the
    --slurm-flag ones last, so that they override the others."""
    parameters: dict[str, Any] = {
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": 1,
        "time": parse_time(settings.slurm_time) if settings.slurm_time else None,
        "partition": settings.slurm_partition,
        "account": settings.slurm_account,
        "gpus_per_task": gpus_per_task(settings, device) or None,
    }
    extra = parse_flags(settings.slurm_flags)
    for key in extra:
        parameters.pop(key, None)
    return {k: v for k, v in parameters.items() if v is not None} | (
        {"additional_parameters": extra} if extra else {}
    )


def test_only(parameters: dict[str, Any]) -> None:
    """Ask Slurm whether it would take such a job (`sbatch --test-only`): an unknown
    partition or account, a bad flag or an unreachable controller is a UsageError before
    any work."""
    flags = {k: v for k, v in parameters.items() if k != "additional_parameters"}
    flags |= parameters.get("additional_parameters", {})
    command = ["sbatch", "--test-only", "--wrap=true"]
    for key, value in flags.items():
        name = "--" + key.replace("_", "-")
        command.append(name if value is True else f"{name}={value}")
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise UsageError("--executor slurm: sbatch --test-only got no answer in 60 s") from None
    if out.returncode != 0:
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        why = "; ".join(lines[-2:]) if lines else f"exit status {out.returncode}"
        raise UsageError(
            f"--executor slurm: Slurm refuses the job ({' '.join(command[3:])}): {why}"
        )


class SlurmWorker:
    """What a Slurm job runs: the job, on the CPUs Slurm gave it. Checkpointable: on
    preemption or time-out submitit requeues it with the same job (done units are skipped)."""

    def __call__(self, job: Job) -> JobResult:
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus:
            import torch

            torch.set_num_threads(int(cpus))
        return run_job(job)

    def checkpoint(self, job: Job) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, job)


class SlurmExecutor(Executor):
    name = "slurm"

    @classmethod
    def check(cls, settings: ExecutorSettings) -> None:
        if importlib.util.find_spec("submitit") is None:
            raise UsageError("--executor slurm needs submitit: pip install 'harness[slurm]'")
        if shutil.which("sbatch") is None:
            raise UsageError(
                "--executor slurm needs Slurm's sbatch on PATH (run it on a login node)"
            )
        gpus = settings.gpus_per_worker
        if gpus is not None and gpus != int(gpus):
            raise UsageError(f"--gpus-per-worker must be a whole number on Slurm, got {gpus}")
        test_only(sbatch_parameters(settings, "auto"))

    def submit(self, jobs: Sequence[Job], progress: Progress) -> None:
        import submitit
        from submitit.core.utils import FailedJobError

        self.running: dict[str, tuple[Any, Job]] = {}  # submitit job id -> (its job, our job)
        self.tries = {job.id: 1 for job in jobs}
        self.completed_at: dict[str, float] = {}  # when a job was first seen done, no result
        self.last_check = 0.0
        if not jobs:
            return
        config = jobs[0].config
        self.folder = Path(config.out) / "slurm" / jobs[0].run_id
        self.executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=3)
        self.executor.update_parameters(
            **sbatch_parameters(self.settings, config.device),
            array_parallelism=self.settings.workers,
            job_name="harness",
            wckey="harness",
        )
        self.worker = SlurmWorker()
        try:
            with self.executor.batch():
                submitted = [self.executor.submit(self.worker, job) for job in jobs]
        except FailedJobError as err:  # sbatch refused or got no answer
            raise UsageError(f"--executor slurm: sbatch failed: {_why(err)}") from None
        for sjob, job in zip(submitted, jobs, strict=True):
            self.running[sjob.job_id] = (sjob, job)

    def wait(self, timeout: float) -> list[Finished]:
        deadline = time.monotonic() + timeout
        while True:
            finished = self._poll()
            remaining = deadline - time.monotonic()
            if finished or not self.running or remaining <= 0:
                return finished
            time.sleep(min(POLL_S, remaining))

    def _poll(self) -> list[Finished]:
        """Jobs with a result file, and jobs Slurm says are over without one."""
        if self.running and time.monotonic() - self.last_check >= FORCE_CHECK_S:
            self.last_check = time.monotonic()
            watcher().update()  # one sacct call reads the state of every job
        finished: list[Finished] = []
        for sid, (sjob, job) in list(self.running.items()):
            if sjob.paths.result_pickle.exists():
                del self.running[sid]
                finished.append(self._result(sjob, job))
            elif watcher().is_done(sid, mode="cache"):
                finished += self._ended_without_result(sid, sjob, job)
        return finished

    def _result(self, sjob: Any, job: Job) -> Finished:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            return Finished(job, sjob.result())
        except (FailedJobError, UncompletedJobError) as err:
            return Finished(job, None, f"slurm job {sjob.job_id}: {_why(err)}")

    def _ended_without_result(self, sid: str, sjob: Any, job: Job) -> list[Finished]:
        state = watcher().get_state(sid, mode="cache")
        if sjob.paths.result_pickle.exists():  # written since we looked
            del self.running[sid]
            return [self._result(sjob, job)]
        if state == "COMPLETED":
            first = self.completed_at.setdefault(sid, time.monotonic())
            if time.monotonic() - first < RESULT_GRACE_S:
                return []  # the result file may still be on its way
        del self.running[sid]
        why = f"slurm job {sid} ended without a result ({state})"
        if self.tries[job.id] > self.settings.max_retries:
            return [Finished(job, None, f"{why}; retries used up")]
        self.tries[job.id] += 1
        from submitit.core.utils import FailedJobError

        try:
            retry = self.executor.submit(self.worker, job)
        except FailedJobError as err:
            return [Finished(job, None, f"{why}; submitting it again failed: {_why(err)}")]
        self.running[retry.job_id] = (retry, job)
        return []

    def close(self) -> None:
        running = list(getattr(self, "running", {}))
        if running:
            subprocess.run(["scancel", *running], capture_output=True, timeout=60)
        self.running = {}


def watcher() -> Any:
    """submitit's record of Slurm job states (one per process, updated with sacct)."""
    from submitit.slurm.slurm import SlurmJob

    return SlurmJob.watcher


def _why(err: BaseException) -> str:
    """The line that names the error: a failed job's exception (the last line of its
    traceback), else the first line of submitit's message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if "----------------------" in lines:
        trace = lines[lines.index("----------------------") + 1 :]
        trace = (
            trace[: trace.index("----------------------")]
            if "----------------------" in trace
            else trace
        )
        if trace:
            return trace[-1]
    return lines[0] if lines else type(err).__name__
