"""Runs a plan on one device: each model loaded once, its units run, each finished unit
written as one Parquet part.

A unit that fails at run time (out of memory, non-finite values, any exception) becomes a
row with that status and its message; the other units go on. Units whose part exists with
every row ok are skipped, so an interrupted run resumes where it stopped; parts of failed
units are run again.
"""

from __future__ import annotations

import json
import platform
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from itertools import groupby
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from tqdm import tqdm

import harness
from harness import results
from harness.mitigations.base import Mitigation
from harness.models.base import LanguageModel
from harness.models.loading import ModelSource, load
from harness.plan import Plan, Unit
from tasks.base import NonFiniteError, Task

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
COMBINED = "_combined"  # the `model=` folder of rows computed across models
VERSIONED = ("torch", "transformers", "datasets", "pyarrow", "mamba-ssm", "triton", "lm-eval")


@dataclass(frozen=True)
class RunConfig:
    out: Path
    device: str  # resolved: cpu | cuda | cuda:N
    dtype: str  # float32 | bfloat16
    backend: str  # mamba2 scan backend: auto | torch | triton
    seed: int
    resume: bool = True
    command: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass(frozen=True)
class Outcome:
    unit: Unit
    status: str
    message: str
    summary: str


@dataclass
class Report:
    run_id: str
    outcomes: list[Outcome]
    skipped: list[Unit]
    manifest: Path | None = None

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != "ok"]


def classify(err: BaseException) -> str:
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return "oom"
    if isinstance(err, NonFiniteError):
        return "nonfinite"
    return "error"


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


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "harness": harness.__version__}
    for package in VERSIONED:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


class Runner:
    def __init__(self, plan: Plan, config: RunConfig) -> None:
        self.plan = plan
        self.config = config
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
        self.commit = git_commit()
        self.artifacts: dict[str, dict[str, Any]] = {}

    def part(self, unit: Unit) -> Path:
        return results.part_path(
            self.config.out, unit.task.table, unit.model.name, unit.mitigation.spec, unit.id
        )

    def pending(self) -> tuple[list[Unit], list[Unit]]:
        """(units to run, units already done)."""
        if not self.config.resume:
            return list(self.plan.units), []
        done = [u for u in self.plan.units if results.part_ok(self.part(u))]
        ids = {u.id for u in done}
        return [u for u in self.plan.units if u.id not in ids], done

    def run(self) -> Report:
        todo, done = self.pending()
        report = Report(self.run_id, [], done)
        if not todo:
            return report
        results.remove_stale_temporaries(self.config.out)
        started = time.time()
        total = sum(u.task.cost(u.params) for u in todo)
        bar = tqdm(total=total, unit="tok", unit_scale=True, dynamic_ncols=True, smoothing=0.05)
        try:
            for source, units in groupby(todo, key=lambda u: u.model):
                report.outcomes += self._run_model(source, list(units), bar)
            self._write_combined()
        finally:
            bar.close()
            if report.outcomes:
                report.manifest = self._write_manifest(report, started)
        return report

    def _run_model(self, source: ModelSource, units: list[Unit], bar: tqdm) -> list[Outcome]:
        bar.set_description(f"loading {source.name}")
        try:
            model = load(source, self.config.device, DTYPES[self.config.dtype], self.config.backend)
        except Exception as err:
            return [self._fail(u, None, err, bar) for u in units]
        outcomes = []
        for mitigation, group in groupby(units, key=lambda u: u.mitigation):
            outcomes += self._run_mitigation(model, mitigation, list(group), bar)
        del model
        return outcomes

    def _run_mitigation(
        self, model: LanguageModel, mitigation: Mitigation, units: list[Unit], bar: tqdm
    ) -> list[Outcome]:
        bar.set_description(f"{model.info.name} {mitigation.spec}")
        try:
            model.hooks = mitigation.hooks(model)
        except Exception as err:
            return [self._fail(u, model, err, bar) for u in units]
        self.artifacts[f"{model.info.name}/{mitigation.spec}"] = mitigation.artifacts()
        return [self._run_unit(model, u, bar) for u in units]

    def _run_unit(self, model: LanguageModel, unit: Unit, bar: tqdm) -> Outcome:
        start = bar.n
        try:
            rows = unit.task.run(model, unit.params, bar.update)
        except Exception as err:
            return self._fail(unit, model, err, bar, advanced=bar.n - start)
        common = self._common(unit, model, "ok", "")
        table = [{**common, **row} for row in rows]
        results.write_part(self.part(unit), table, self._schema(unit))
        bar.update(unit.task.cost(unit.params) - (bar.n - start))
        return Outcome(unit, "ok", "", unit.task.summary(rows))

    def _fail(
        self, unit: Unit, model: LanguageModel | None, err: Exception, bar: tqdm, advanced: int = 0
    ) -> Outcome:
        status, message = classify(err), f"{type(err).__name__}: {err}"
        if status == "oom" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        results.write_part(
            self.part(unit), [self._common(unit, model, status, message)], self._schema(unit)
        )
        bar.update(unit.task.cost(unit.params) - advanced)
        return Outcome(unit, status, message, "")

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

    def _schema(self, unit: Unit) -> pa.Schema:
        return pa.unify_schemas([results.COMMON, unit.task.schema])

    def _common(
        self, unit: Unit, model: LanguageModel | None, status: str, message: str
    ) -> dict[str, Any]:
        info = model.info if model is not None else None
        spec = unit.model.spec
        return {
            "unit_id": unit.id,
            "run_id": self.run_id,
            "task": unit.task.name,
            "model_ref": unit.model.ref,
            "family": unit.model.family,
            "params": info.params if info else (spec.params if spec else None),
            "state_size": info.state_size if info else (spec.state_size if spec else None),
            "train_context": info.train_context if info else (spec.train_context if spec else None),
            "mitigation_name": unit.mitigation.name,
            "status": status,
            "message": message,
            "unit_params": json.dumps(unit.params, sort_keys=True),
            "seed": self.config.seed,
            "device": self.config.device,
            "dtype": self.config.dtype,
            "backend": info.backend if info else None,
            "harness_version": harness.__version__,
            "git_commit": self.commit,
            "created_at": datetime.now(UTC),
        }

    def _write_manifest(self, report: Report, started: float) -> Path:
        manifest = {
            "run_id": self.run_id,
            "command": self.config.command,
            "config": {
                "models": [
                    {"ref": m.ref, "name": m.name, "family": m.family} for m in self.plan.models
                ],
                "mitigations": [m.spec for m in self.plan.mitigations],
                "tasks": {t.name: t.units() for t in self.plan.tasks},
                "device": self.config.device,
                "dtype": self.config.dtype,
                "backend": self.config.backend,
                "seed": self.config.seed,
                "out": str(self.config.out),
                "resume": self.config.resume,
            },
            "versions": versions(),
            "git_commit": self.commit,
            "device_name": device_name(self.config.device),
            "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
            "wall_time_s": round(time.time() - started, 3),
            "units": {
                "run": len(report.outcomes),
                "skipped_done": len(report.skipped),
                "failed": [
                    {"unit_id": o.unit.id, "status": o.status, "message": o.message}
                    for o in report.failed
                ],
            },
            "mitigation_artifacts": self.artifacts,
        }
        return results.write_manifest(self.config.out, self.run_id, manifest)
