"""The grid of a run: models x mitigations x task units, each unit with a stable id.

Everything a user can get wrong is checked here, before any model is loaded or any file is
written; problems raise UsageError (the CLI exits with status 2).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import identity
from harness.mitigations import parse_mitigation as parse_spec
from harness.mitigations.base import Mitigation, MitigationError
from harness.models.catalog import PEER_SETS
from harness.registry import TASKS, RegistryError

if TYPE_CHECKING:
    from harness.models.loading import ModelSource
    from tasks.base import Task, TaskOptions

LENGTH = re.compile(r"^(\d+)([km]?)$", re.IGNORECASE)
SCALE = {"": 1, "k": 1024, "m": 1024 * 1024}


class UsageError(ValueError):
    """Wrong input on the command line: reported with the valid choices, exit status 2."""


def _split(text: str, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in items):
        raise UsageError(f"empty item in --{what} {text!r}: give a comma-separated list")
    return items


def parse_lengths(text: str) -> tuple[int, ...]:
    """'512,4k,1m' -> (512, 4096, 1048576); k = 1024, m = 1024^2."""
    lengths = []
    for item in _split(text, "lengths"):
        m = LENGTH.match(item)
        if not m or int(m.group(1)) == 0:
            raise UsageError(
                f"bad length {item!r} in --lengths: use a positive integer with an optional "
                "k (x1024) or m (x1024^2) suffix, e.g. 512,4k,1m"
            )
        lengths.append(int(m.group(1)) * SCALE[m.group(2).lower()])
    return tuple(lengths)


def parse_depths(text: str) -> tuple[float, ...]:
    depths = []
    for item in _split(text, "depths"):
        try:
            depth = float(item)
        except ValueError:
            depth = float("nan")
        if not 0.0 <= depth <= 1.0:
            raise UsageError(f"bad depth {item!r} in --depths: each must be a number in [0, 1]")
        depths.append(depth)
    return tuple(depths)


def _unknown(kind: str, name: str, valid: list[str]) -> UsageError:
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return UsageError(f"unknown {kind} {name!r}.{hint} Valid: {', '.join(sorted(valid))}")


def parse_task_options(items: list[str]) -> dict[str, dict[str, str]]:
    """['perplexity.bucket=128', ...] -> {'perplexity': {'bucket': '128'}}."""
    extra: dict[str, dict[str, str]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        task, dot, key = target.partition(".")
        if not (sep and dot and task and key):
            raise UsageError(f"bad --option {item!r}: write <task>.<key>=<value>")
        extra.setdefault(task, {})[key] = value
    return extra


def parse_tasks(text: str, options: TaskOptions) -> list[Task]:
    names = list(dict.fromkeys(_split(text, "tasks")))
    for name in [*names, *options.extra]:
        if name not in TASKS:
            raise _unknown("task", name, TASKS.names())
    for name in options.extra:
        if name not in names:
            raise UsageError(f"--option for task {name!r}, which is not in --tasks")
    try:
        return [TASKS.get(name)(options) for name in names]
    except ValueError as err:  # RegistryError, or a setting's (harness.settings)
        raise UsageError(str(err)) from None


def parse_mitigation(spec: str) -> Mitigation:
    """`name`, `name:key=value:...`, or parts joined by `+` (see harness.mitigations)."""
    try:
        return parse_spec(spec)
    except (MitigationError, RegistryError) as err:
        raise UsageError(str(err)) from None


def parse_models(text: str) -> list[ModelSource]:
    """Model references, each resolved and identified by content (harness.identity); a peer
    set name (catalog.PEER_SETS) stands for its members."""
    from harness.models.loading import ModelError, resolve

    refs = [m for ref in _split(text, "models") for m in PEER_SETS.get(ref, (ref,))]
    try:
        return [identity.identify(resolve(ref)) for ref in dict.fromkeys(refs)]
    except ModelError as err:
        raise UsageError(str(err)) from None


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a directory (created if missing)")


def check_backend(backend: str, device: str) -> None:
    """A scan backend that cannot run on this device (triton without mamba-ssm or CUDA)."""
    from harness.models.mamba2 import BackendError, resolve_backend

    try:
        resolve_backend(backend, device)
    except BackendError as err:
        raise UsageError(str(err)) from None


@dataclass(frozen=True)
class Unit:
    """One model x mitigation x task unit.

    `id` identifies what the unit computes, by content: task, model identity, mitigation spec
    and the identities of the files it reads, unit parameters, dtype; it never depends on
    where the checkout or the model folder lives. `slot` names its part file: task, `model=`
    name, mitigation spec, unit parameters and dtype, so a unit whose model (under a name
    kept across versions: catalog, bundled) or mitigation file changed replaces its part
    instead of adding rows beside it.
    """

    task: Task
    model: ModelSource
    mitigation: Mitigation
    params: dict[str, Any]
    dtype: str
    model_id: str = field(init=False)
    inputs: dict[str, str] = field(init=False)  # mitigation input file -> content identity
    id: str = field(init=False)
    slot: str = field(init=False)

    def __post_init__(self) -> None:
        model_id = self.model.id or identity.model_identity(self.model)
        inputs = identity.input_identities(self.mitigation)
        what = [self.task.name, self.mitigation.spec, self.params, self.dtype]
        object.__setattr__(self, "model_id", model_id)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "id", _digest([*what, model_id, inputs]))
        object.__setattr__(self, "slot", _digest([*what, self.model.name]))


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    models: list[ModelSource]
    mitigations: list[Mitigation]
    tasks: list[Task]
    units: list[Unit]


def build_plan(
    models: list[ModelSource],
    mitigations: list[Mitigation],
    tasks: list[Task],
    dtype: str,
    strict: bool = True,
) -> Plan:
    """Every (model, mitigation, task unit). A mitigation that does not apply to a model's
    family is refused (UsageError), or skipped for that model when `strict` is False."""
    for model in models:
        for mitigation in mitigations:
            if strict and model.family not in mitigation.families:
                raise UsageError(
                    f"mitigation {mitigation.spec!r} does not apply to {model.name} "
                    f"(family {model.family}); it applies to: "
                    + ", ".join(sorted(mitigation.families))
                )
        for task in tasks:
            for mitigation in mitigations:
                if mitigation.strategy() is not None and not task.prompt_parts:
                    raise UsageError(
                        f"mitigation {mitigation.spec!r} is an inference strategy that splits a "
                        f"prompt's context; task {task.name!r} scores one whole sequence, so it "
                        "cannot serve it (tasks that can: passkey)"
                    )
            if model.family not in task.families:
                raise UsageError(
                    f"task {task.name!r} does not apply to {model.name} (family {model.family}); "
                    f"it applies to: {', '.join(sorted(task.families))}"
                )
    units = [
        Unit(task, model, mitigation, params, dtype)
        for model in models
        for mitigation in mitigations
        if model.family in mitigation.families
        for task in tasks
        for params in task.units()
    ]
    return Plan(models, mitigations, tasks, units)
