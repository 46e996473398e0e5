"""The driver: one plan, packed into jobs, run by an executor, reduced once at the end.

It builds nothing itself (the CLI hands it the plan); it decides which units still need
running (resume), packs them into jobs (harness.executors.packing), writes the run manifest
(runs/<run id>.json: the whole plan, the jobs, the worker manifests under runs/<run id>/),
hands the jobs to the executor, shows one progress bar over every pending unit with an ETA
(parts appearing on disk move it, so remote workers need not report), computes the
cross-model rows (`model=_combined`) once all jobs are over, and finishes the manifest.
`harness status` reads that manifest back.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

import harness
from harness import results
from harness.executors import executor_class
from harness.executors.base import ExecutorSettings, Finished
from harness.executors.packing import order, pack, unit_cost
from harness.models.loading import pick_device
from harness.plan import Plan, Unit
from harness.runner import (
    SKIPPED,
    Job,
    Outcome,
    RunConfig,
    device_name,
    git_commit,
    part_of,
    pending,
    series_key,
    versions,
)
from tasks.base import Task

COMBINED = "_combined"  # the `model=` folder of rows computed across models
WAIT_S = 0.5  # how often the driver looks at parts while jobs run


@dataclass
class Report:
    run_id: str
    outcomes: list[Outcome]  # units run (or skipped by the early stop) by finished jobs
    skipped: list[Unit]  # units already done before this run
    manifest: Path | None = None
    lost: list[Unit] = field(default_factory=list)  # units of lost jobs left without a part
    interrupted: bool = False
    done_now: int = 0  # units finished by this run (parts written), lost jobs included
    problems: list[str] = field(default_factory=list)  # what could not be written, and why

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status not in ("ok", SKIPPED)]


class Bar:
    """One progress bar over the pending units, in tokens (each task's `cost`), with an ETA."""

    def __init__(self, units: Sequence[Unit]) -> None:
        self.cost = {u.id: u.task.cost(u.params) for u in units}
        self.credited = dict.fromkeys(self.cost, 0)
        self.finished: set[str] = set()
        self.tqdm = tqdm(
            total=sum(self.cost.values()),
            unit="tok",
            unit_scale=True,
            dynamic_ncols=True,
            smoothing=0.05,
        )

    def describe(self, text: str) -> None:
        self.tqdm.set_description(text)

    def advance(self, unit: Unit, tokens: int) -> None:
        if unit.id in self.cost and unit.id not in self.finished:
            step = min(tokens, self.cost[unit.id] - self.credited[unit.id])
            self.credited[unit.id] += step
            self.tqdm.update(step)

    def finish(self, unit: Unit) -> None:
        if unit.id in self.cost and unit.id not in self.finished:
            self.advance(unit, self.cost[unit.id])
            self.finished.add(unit.id)

    def close(self) -> None:
        self.tqdm.close()


class PartWatch:
    """Which pending units got a new part since the run started (for remote workers)."""

    def __init__(self, out: Path, units: Sequence[Unit]) -> None:
        self.paths = {u.id: (u, part_of(out, u)) for u in units}
        self.before = {uid: _mtime(path) for uid, (_, path) in self.paths.items()}

    def changed(self) -> list[Unit]:
        found = []
        for uid, (unit, path) in list(self.paths.items()):
            if _mtime(path) != self.before[uid]:
                found.append(unit)
                del self.paths[uid]
        return found


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


class Driver:
    def __init__(self, plan: Plan, config: RunConfig, settings: ExecutorSettings) -> None:
        self.plan = plan
        self.config = replace(config, out=config.out.resolve())  # workers may run elsewhere
        self.settings = settings
        self.run_id = new_run_id()
        self.commit = git_commit()
        self.todo, self.jobs = self._pack()
        self.todo_ids = {u.id for u in self.todo}
        self.workers: dict[str, dict[str, Any]] = {}  # job id -> its worker manifest
        self.lost_jobs: dict[str, str] = {}  # job id -> why

    def _pack(self) -> tuple[list[Unit], list[Job]]:
        """(the units to run, the jobs that run them)."""
        ordered = order(self.plan.units)
        todo = pending(ordered, self.config) if self.config.resume else ordered
        keep_series = self.config.stop_after_fails is not None
        if keep_series:  # the worker needs a series' done units too, for the count
            open_series = {series_key(u) for u in todo}
            shipped = [u for u in ordered if series_key(u) in open_series]
        else:
            shipped = todo
        packed = pack(shipped, self.settings.workers, keep_series)
        jobs = [
            Job(f"j{i:03d}", self.run_id, self.config, tuple(units), sum(map(unit_cost, units)))
            for i, units in enumerate(packed)
            if units
        ]
        return todo, jobs

    def describe_jobs(self) -> str:
        """What --dry-run prints: one line per job, then the total."""
        lines = [
            f"{len(self.jobs)} jobs for {len(self.todo)} units "
            f"({len(self.plan.units) - len(self.todo)} of {len(self.plan.units)} already done), "
            f"executor {self.settings.name}, {self.settings.workers} worker(s); "
            "estimated cost = parameters x tokens (x attention factor)"
        ]
        for job in self.jobs:
            first = job.units[0]
            mitigations = sorted({u.mitigation.spec for u in job.units})
            tasks = sorted({u.task.name for u in job.units})
            lengths = sorted({u.params["length"] for u in job.units if "length" in u.params})
            lines.append(
                f"  {job.id}  {first.model.name:<24} {len(job.units):>4} units  "
                f"est. {job.cost:9.3g}  tasks {','.join(tasks)}  "
                f"mitigations {','.join(mitigations)}  lengths {','.join(map(str, lengths))}"
            )
        lines.append(f"total est. {sum(j.cost for j in self.jobs):.3g}")
        return "\n".join(lines)

    def run(self) -> Report:
        done = [u for u in self.plan.units if u.id not in self.todo_ids]
        report = Report(self.run_id, [], done)
        if not self.jobs:
            return report
        started = time.time()
        results.remove_stale_temporaries(self.config.out)
        self._try_manifest(report, started, "running")
        executor = executor_class(self.settings.name)(self.settings)
        bar = Bar(self.todo)
        watch = PartWatch(self.config.out, self.todo)
        remaining = {job.id for job in self.jobs}
        try:
            executor.submit(self.jobs, bar)
            while remaining:
                for finished in executor.wait(WAIT_S):
                    remaining.discard(finished.job.id)
                    self._collect(report, finished, bar)
                for unit in watch.changed():
                    bar.finish(unit)
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            executor.close()
            bar.close()
        report.done_now = len(bar.finished)
        place = {u.id: i for i, u in enumerate(self.plan.units)}
        report.outcomes.sort(key=lambda o: place[o.unit.id])
        if not report.interrupted:
            try:
                self._write_combined()
            except (OSError, pa.ArrowInvalid) as err:
                report.problems.append(f"cross-model rows ({type(err).__name__}: {err})")
        state = "interrupted" if report.interrupted else "finished"
        report.manifest = self._try_manifest(report, started, state)
        return report

    def _try_manifest(self, report: Report, started: float, state: str) -> Path | None:
        """The run manifest written, or None with the reason among the report's problems
        (once: the start and the end of a run on an unwritable folder fail alike)."""
        try:
            return self._write_manifest(report, started, state)
        except OSError as err:
            problem = f"run manifest ({type(err).__name__}: {err})"
            if problem not in report.problems:
                report.problems.append(problem)
            return None

    def _collect(self, report: Report, finished: Finished, bar: Bar) -> None:
        job = finished.job
        if finished.result is None:
            self.lost_jobs[job.id] = finished.error
            report.problems.append(f"the outcomes of job {job.id} ({finished.error})")
            report.lost += [
                u
                for u in job.units
                if u.id in self.todo_ids and not _written_by(self.config.out, u, job.run_id)
            ]
        else:
            report.outcomes += finished.result.outcomes
            report.problems += finished.result.problems
            self.workers[job.id] = finished.result.worker
        for unit in job.units:
            if finished.result is not None or _written_by(self.config.out, unit, job.run_id):
                bar.finish(unit)

    def _write_combined(self) -> None:
        """Recompute each task's cross-model rows from everything its table now holds."""
        for task in self.plan.tasks:
            if type(task).combine is Task.combine:
                continue
            table = results.read_table(self.config.out, task.table)
            schema = pa.unify_schemas([results.COMMON, task.schema])
            for mitigation, rows in task.combine(table).items():
                common = {
                    "unit_id": COMBINED,
                    "run_id": self.run_id,
                    "task": task.name,
                    "model_id": None,
                    "mitigation_name": mitigation.split(":")[0],
                    "status": "ok",
                    "message": "",
                    "harness_version": harness.__version__,
                    "git_commit": self.commit,
                    "created_at": datetime.now(UTC),
                }
                path = results.part_path(
                    self.config.out, task.table, COMBINED, mitigation, COMBINED.strip("_")
                )
                results.write_part(path, [{**common, **row} for row in rows], schema)

    def _device_name(self) -> str:
        names = sorted({w["device_name"] for w in self.workers.values()})
        if names:
            return ", ".join(names)
        if self.settings.name == "local":
            return device_name(pick_device(self.config.device))
        return "unknown (no worker finished)"

    def _write_manifest(self, report: Report, started: float, state: str) -> Path:
        config = self.config
        artifacts: dict[str, Any] = {}
        for worker in self.workers.values():
            artifacts |= worker["mitigation_artifacts"]
        ids = {u.model.ref: u.model_id for u in self.plan.units}
        manifest = {
            "run_id": self.run_id,
            "state": state,  # running | finished | interrupted
            "driver": {"host": socket.gethostname(), "pid": os.getpid()},  # who writes this
            "command": config.command,
            "config": {
                "models": [
                    {"ref": m.ref, "name": m.name, "family": m.family, "model_id": ids.get(m.ref)}
                    for m in self.plan.models
                ],
                "mitigations": [m.spec for m in self.plan.mitigations],
                "mitigation_inputs": {
                    u.mitigation.spec: u.inputs for u in self.plan.units if u.inputs
                },
                "tasks": {t.name: t.units() for t in self.plan.tasks},
                "device": config.device,
                "dtype": config.dtype,
                "backend": config.backend,
                "seed": config.seed,
                "resume": config.resume,
                "stop_after_fails": config.stop_after_fails,
                "executor": asdict(self.settings),
            },
            "versions": versions(),
            "git_commit": self.commit,
            "device_name": self._device_name(),
            "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
            "wall_time_s": round(time.time() - started, 3),
            "units": {
                "planned": len(self.plan.units),
                "run": len(report.outcomes),
                "skipped_done": len(report.skipped),
                "failed": [
                    {"unit_id": o.unit.id, "status": o.status, "message": o.message}
                    for o in report.failed
                ],
                "lost": [u.id for u in report.lost],
            },
            "plan": [_unit_entry(u) for u in self.plan.units],
            "jobs": [
                {
                    "id": job.id,
                    "cost": job.cost,
                    "units": [u.id for u in job.units],
                    "worker": f"{self.run_id}/{job.id}.json" if job.id in self.workers else None,
                    "lost": self.lost_jobs.get(job.id),
                }
                for job in self.jobs
            ],
            "mitigation_artifacts": artifacts,
        }
        return results.write_manifest(config.out, self.run_id, manifest)


def _unit_entry(unit: Unit) -> dict[str, Any]:
    return {
        "unit_id": unit.id,
        "slot": unit.slot,  # the part's name: part-<slot>.parquet
        "model_id": unit.model_id,
        "table": unit.task.table,
        "task": unit.task.name,
        "model": unit.model.name,
        "mitigation": unit.mitigation.spec,
        "params": unit.params,
    }


def _written_by(out: Path, unit: Unit, run_id: str) -> bool:
    """Whether this run wrote the unit's part (a lost job may have finished some units)."""
    try:
        table = pq.read_table(part_of(out, unit), columns=["run_id"])
    except (pa.ArrowInvalid, OSError):
        return False
    return set(table.column("run_id").to_pylist()) == {run_id}


def run_plan(plan: Plan, config: RunConfig, settings: ExecutorSettings | None = None) -> Report:
    """Run a plan to the end with an executor (default: local, in this process)."""
    return Driver(plan, config, settings or ExecutorSettings()).run()


def detach(argv: Sequence[str], out: Path) -> tuple[int, Path]:
    """Start the same `harness` command without --detach as a background process that
    outlives this one (its own session); return its pid and log file."""
    log = out.resolve() / "runs" / f"driver-{new_run_id()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "harness", *(a for a in argv if a != "--detach")]
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=os.getcwd(),
        )
    return process.pid, log
