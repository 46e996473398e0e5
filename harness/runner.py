"""The job runner: what one worker does with one job (units of one model) on one device.

The model is loaded once; for each mitigation its units run in order (per task, ascending
length) and each finished unit is written as one Parquet part. A unit that fails at run time
(out of memory, non-finite values, any exception, a part that cannot be written: disk full,
read-only, permissions) becomes a row with that status and its message, or, where even that
row cannot be written, a problem the driver names; the other units go on. An out-of-memory
unit whose task has a `chunk` setting is run once more with half the chunk before it is
recorded as `oom`. Units whose part already exists with every row ok and of the unit's id
(its content identity: harness.plan.Unit) are skipped, so an interrupted or retried job
resumes where it stopped. With `stop_after_fails` K, once K consecutive lengths of a (model,
mitigation, task) series score at or below chance (Task.at_chance), its longer lengths are
recorded as `skipped` with the reason. Each job writes its own worker manifest.

The driver (harness.executors) builds the plan, packs units into jobs, hands them to an
executor and writes the cross-model rows and the run manifest; this module never sees more
than its job.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from itertools import groupby
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
import torch

import harness
from harness import memory, results
from harness.models.base import LanguageModel
from harness.models.loading import load, pick_device
from harness.plan import Unit
from tasks.base import NonFiniteError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CPU_OOM = "DefaultCPUAllocator: can't allocate memory"  # torch's RuntimeError on the CPU
VERSIONED = ("torch", "transformers", "datasets", "pyarrow", "mamba-ssm", "triton", "lm-eval")
SKIPPED = "skipped"  # the status of a unit left out by the early stop


@dataclass(frozen=True)
class RunConfig:
    out: Path  # results folder (the driver makes it absolute before shipping jobs)
    device: str  # as requested: auto | cpu | cuda | cuda:N; each worker resolves it
    dtype: str  # float32 | bfloat16
    backend: str  # mamba2 scan backend: auto | torch | triton
    seed: int
    resume: bool = True  # skip units whose parts are complete and ok
    stop_after_fails: int | None = None  # skip longer lengths after K at-chance lengths in a row
    command: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass(frozen=True)
class Job:
    """What one worker runs: units of one model with the run's settings; picklable."""

    id: str  # j000, j001, ...: its place in the run
    run_id: str  # the run it belongs to (every row it writes carries it)
    config: RunConfig
    units: tuple[Unit, ...]  # one model; the driver orders them (mitigation, task, length)
    cost: float  # estimated cost (harness.executors.packing), for scheduling and --dry-run


@dataclass(frozen=True)
class Outcome:
    unit: Unit
    status: str  # ok | oom | nonfinite | error | skipped
    message: str
    summary: str
    at_chance: bool = False  # the task judged the unit's score at or below chance
    recorded: bool = True  # False: not even its failure row could be written (message says)


@dataclass(frozen=True)
class JobResult:
    job_id: str
    outcomes: list[Outcome]  # units this job ran (or skipped by the early stop)
    done_before: list[Unit]  # units already done when the job reached them
    worker: dict[str, Any]  # the worker's manifest (also written under runs/<run id>/)
    problems: list[str] = field(default_factory=list)  # what could not be written, and why


class Progress(Protocol):
    """Where a job reports progress: the driver's bar in-process, nothing in remote workers."""

    def describe(self, text: str) -> None: ...

    def advance(self, unit: Unit, tokens: int) -> None: ...

    def finish(self, unit: Unit) -> None: ...


class Quiet:
    """Progress for a worker that is not the driver: the driver watches parts appear."""

    def describe(self, text: str) -> None:
        pass

    def advance(self, unit: Unit, tokens: int) -> None:
        pass

    def finish(self, unit: Unit) -> None:
        pass


def classify(err: BaseException) -> str:
    if isinstance(err, torch.OutOfMemoryError | MemoryError) or CPU_OOM in str(err):
        return "oom"
    if isinstance(err, NonFiniteError):
        return "nonfinite"
    return "error"


def longest_prompt(params: dict[str, Any]) -> int:
    """The longest prompt a unit builds, in tokens: its `length`, or state-capacity's
    `loss_length` and longest of `recall_lengths`."""
    lengths = [params.get("length", 0), params.get("loss_length", 0)]
    return max([*lengths, *params.get("recall_lengths", [])])


@cache  # once per process: a worker runs job after job
def git_commit() -> str | None:
    """The commit of the harness source tree, with -dirty when it has local changes."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=Path(harness.__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


@cache  # once per process: a worker runs job after job
def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "harness": harness.__version__}
    for package in VERSIONED:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


@cache  # once per process: a worker runs job after job
def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def part_of(out: Path, unit: Unit) -> Path:
    return results.part_path(out, unit.task.table, unit.model.name, unit.mitigation.spec, unit.slot)


def part_state(path: Path, unit_id: str, run_id: str | None = None) -> str | None:
    """ "ok" when every row of the unit's part is ok, "skipped" when every row is skipped,
    None when it must run (missing, unreadable, failed, of another unit id: its model or
    mitigation inputs changed; with `run_id`, written by another run)."""
    try:
        table = pq.read_table(path, columns=["status", "run_id", "unit_id"])
    except (pa.ArrowInvalid, OSError, KeyError):
        return None
    if set(table.column("unit_id").to_pylist()) != {unit_id}:
        return None
    if run_id is not None and set(table.column("run_id").to_pylist()) != {run_id}:
        return None
    statuses = set(table.column("status").to_pylist())
    return statuses.pop() if statuses in ({"ok"}, {SKIPPED}) else None


def done_summary(out: Path, unit: Unit) -> str:
    """The end-of-run table's cell of a unit done before this run, from its part."""
    path = part_of(out, unit)
    state = part_state(path, unit.id)
    if state != "ok":
        return state or "?"
    return unit.task.summary(pq.read_table(path).to_pylist())


def series_key(unit: Unit) -> tuple[str, str, str]:
    """The early stop's series: one (model, mitigation, task), lengths ascending."""
    return unit.model.name, unit.mitigation.spec, unit.task.name


def length_of(unit: Unit) -> int:
    return int(unit.params.get("length", 0))


class Series:
    """The early stop's count along one series: the lengths at or below chance in a row."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.chance: list[int] = []

    @property
    def stopped(self) -> bool:
        return self.limit is not None and len(self.chance) >= self.limit

    def record(self, unit: Unit, at_chance: bool | None) -> None:
        """A finished unit extends the run of at-chance lengths or ends it; None (a failed
        unit) changes nothing."""
        if at_chance is not None:
            self.chance = [*self.chance, length_of(unit)] if at_chance else []

    def reason(self) -> str:
        lengths = ", ".join(str(n) for n in self.chance)
        return (
            f"early stop: {len(self.chance)} lengths in a row at or below chance ({lengths}); "
            "rerun without --stop-after-fails to run it"
        )


def verdict_of(path: Path, unit: Unit) -> bool | None:
    """The early-stop verdict of a unit finished by an earlier run, from its part."""
    rows = pq.read_table(path).to_pylist()
    return unit.task.at_chance(rows) if {r["status"] for r in rows} == {"ok"} else None


def pending(units: Sequence[Unit], config: RunConfig, run_id: str | None = None) -> list[Unit]:
    """The units of one job-to-be that need running, following the worker's own rules: a
    unit is done when its part is ok, or skipped while the early stop still holds."""
    todo = []
    for _, series in groupby(units, key=series_key):
        count = Series(config.stop_after_fails)
        for unit in series:
            path = part_of(config.out, unit)
            state = part_state(path, unit.id, run_id)
            if state == "ok":
                if count.limit is not None:
                    count.record(unit, verdict_of(path, unit))
            elif not (state == SKIPPED and count.stopped):
                todo.append(unit)
    return todo


def run_job(job: Job, progress: Progress | None = None) -> JobResult:
    """Run one job in this process; the entry point every executor calls on its workers."""
    return JobRunner(job, progress or Quiet()).run()


class JobRunner:
    def __init__(self, job: Job, progress: Progress) -> None:
        self.job = job
        self.config = job.config
        self.progress = progress
        self.commit = git_commit()
        self.artifacts: dict[str, dict[str, Any]] = {}
        self.done_before: list[Unit] = []
        self.model: LanguageModel | Exception | None = None  # loaded when first needed
        try:
            self.device = pick_device(job.config.device)
        except ValueError as err:  # a worker without the device asked for: each unit fails
            self.device, self.model = job.config.device, err
        self.hooked: tuple[str, Exception | None] | None = None  # installed spec, its error

    def run(self) -> JobResult:
        started = time.time()
        outcomes: list[Outcome] = []
        for _, series in groupby(self.job.units, key=series_key):
            outcomes += self._run_series(list(series))
        self.model = None
        worker = self._manifest(outcomes, started)
        problems = [o.message for o in outcomes if not o.recorded]
        try:
            results.write_manifest(self.config.out, f"{self.job.run_id}/{self.job.id}", worker)
        except OSError as err:
            problems.append(f"worker manifest {self.job.id} ({type(err).__name__}: {err})")
        return JobResult(self.job.id, outcomes, self.done_before, worker, problems)

    def _run_series(self, units: list[Unit]) -> list[Outcome]:
        """Units of one (model, mitigation, task) in order; the early stop acts here."""
        count = Series(self.config.stop_after_fails)
        run_id = None if self.config.resume else self.job.run_id
        outcomes = []
        for unit in units:
            path = part_of(self.config.out, unit)
            state = part_state(path, unit.id, run_id)
            if state == "ok" or (state == SKIPPED and count.stopped):
                self.done_before.append(unit)
                if state == "ok" and count.limit is not None:
                    count.record(unit, verdict_of(path, unit))
                continue
            model = self._ready(unit)
            if isinstance(model, Exception):
                outcomes.append(self._fail(unit, None, model))
            elif self.hooked is not None and self.hooked[1] is not None:
                outcomes.append(self._fail(unit, model, self.hooked[1]))
            elif count.stopped:
                outcomes.append(self._skip(unit, model, count.reason()))
            else:
                outcome = self._run_unit(model, unit)
                outcomes.append(outcome)
                count.record(unit, outcome.at_chance if outcome.status == "ok" else None)
        return outcomes

    def _ready(self, unit: Unit) -> LanguageModel | Exception:
        """The job's model, loaded on first use, with the unit's mitigation installed."""
        if self.model is None:
            self.progress.describe(f"loading {unit.model.name}")
            try:
                self.model = load(
                    unit.model, self.device, DTYPES[self.config.dtype], self.config.backend
                )
            except Exception as err:
                self.model = err
        model = self.model
        if isinstance(model, Exception):
            return model
        if self.hooked is None or self.hooked[0] != unit.mitigation.spec:
            self.progress.describe(f"{model.info.name} {unit.mitigation.spec}")
            try:
                model.hooks = unit.mitigation.hooks(model)
                model.strategy = unit.mitigation.strategy()
                key = f"{model.info.name}/{unit.mitigation.spec}"
                self.artifacts[key] = unit.mitigation.artifacts()
                self.hooked = (unit.mitigation.spec, None)
            except Exception as err:
                self.hooked = (unit.mitigation.spec, err)
        return model

    def _run_unit(self, model: LanguageModel, unit: Unit) -> Outcome:
        try:
            rows, message = self._attempt(model, unit)
        except Exception as err:
            return self._fail(unit, model, err)
        common = self._common(unit, model, "ok", message)
        table = [{**common, **row} for row in rows]
        try:
            results.write_part(part_of(self.config.out, unit), table, self._schema(unit))
        except OSError as err:
            return self._fail(unit, model, err)
        self.progress.finish(unit)
        summary = unit.task.summary(rows)
        return Outcome(unit, "ok", message, summary, at_chance=unit.task.at_chance(rows))

    def _attempt(self, model: LanguageModel, unit: Unit) -> tuple[list[dict[str, Any]], str]:
        """The unit's rows, and a note when they needed the out-of-memory retry: once, with
        half the task's `chunk` setting (where it has one)."""

        def advance(n: int) -> None:
            self.progress.advance(unit, n)

        memory.check_prompt(longest_prompt(unit.params))
        try:
            return unit.task.run(model, unit.params, advance), ""
        except Exception as err:
            chunk = unit.params.get("chunk")
            if classify(err) != "oom" or not isinstance(chunk, int) or chunk < 2:
                raise
            _free_memory()
            smaller = {**unit.params, "chunk": chunk // 2}
            rows = unit.task.run(model, smaller, advance)
            return rows, f"ran with chunk={chunk // 2} after running out of memory at {chunk}"

    def _fail(self, unit: Unit, model: LanguageModel | None, err: Exception) -> Outcome:
        status, message = classify(err), f"{type(err).__name__}: {err}"
        if status == "oom":
            _free_memory()
        return self._status_row(unit, model, status, message)

    def _skip(self, unit: Unit, model: LanguageModel, message: str) -> Outcome:
        return self._status_row(unit, model, SKIPPED, message)

    def _status_row(
        self, unit: Unit, model: LanguageModel | None, status: str, message: str
    ) -> Outcome:
        """The unit's part as one row of that status; when even that cannot be written, an
        outcome saying so (the driver names it in the run's last line)."""
        row = self._common(unit, model, status, message)
        self.progress.finish(unit)
        try:
            results.write_part(part_of(self.config.out, unit), [row], self._schema(unit))
        except OSError as err:
            where = f"{unit.model.name} {unit.mitigation.spec} {unit.task.name} {unit.params}"
            message = f"{where}: {message}; not recorded ({type(err).__name__})"
            return Outcome(unit, status, message, "", recorded=False)
        return Outcome(unit, status, message, "")

    def _schema(self, unit: Unit) -> pa.Schema:
        return pa.unify_schemas([results.COMMON, unit.task.schema])

    def _common(
        self, unit: Unit, model: LanguageModel | None, status: str, message: str
    ) -> dict[str, Any]:
        info = model.info if model is not None else None
        spec = unit.model.spec
        return {
            "unit_id": unit.id,
            "run_id": self.job.run_id,
            "task": unit.task.name,
            "model_ref": unit.model.ref,
            "model_id": unit.model_id,
            "family": unit.model.family,
            "params": info.params if info else (spec.params if spec else None),
            "state_size": info.state_size if info else (spec.state_size if spec else None),
            "train_context": info.train_context if info else (spec.train_context if spec else None),
            "mitigation_name": unit.mitigation.name,
            "status": status,
            "message": message,
            "unit_params": json.dumps(unit.params, sort_keys=True),
            "seed": self.config.seed,
            "device": self.device,
            "dtype": self.config.dtype,
            "backend": info.backend if info else None,
            "harness_version": harness.__version__,
            "git_commit": self.commit,
            "created_at": datetime.now(UTC),
        }

    def _manifest(self, outcomes: Sequence[Outcome], started: float) -> dict[str, Any]:
        return {
            "run_id": self.job.run_id,
            "job_id": self.job.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": self.device,
            "device_name": device_name(self.device),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "threads": torch.get_num_threads(),  # matmul sums round by the thread count
            "versions": versions(),
            "git_commit": self.commit,
            "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
            "wall_time_s": round(time.time() - started, 3),
            "units": [o.unit.id for o in outcomes],
            "done_before": [u.id for u in self.done_before],
            "failed": [
                {"unit_id": o.unit.id, "status": o.status, "message": o.message}
                for o in outcomes
                if o.status not in ("ok", SKIPPED)
            ],
            "mitigation_artifacts": self.artifacts,
        }


def _free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
