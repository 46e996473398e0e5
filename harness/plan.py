"""The grid of a run: models x mitigations x task units, each unit with a stable id.

Everything a user can get wrong is checked here, before any model is loaded or any file is
written; problems raise UsageError (the CLI exits with status 2).
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import os
import re
import tempfile
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

# ASCII only: Python's int() and float() also accept other scripts' digits ('５１２', '٥١٢').
LENGTH = re.compile(r"(\d+)([km]?)", re.IGNORECASE | re.ASCII)
COUNT = re.compile(r"\d+", re.ASCII)
DECIMAL = re.compile(r"\d+(\.\d*)?|\.\d+", re.ASCII)
SCALE = {"": 1, "k": 1024, "m": 1024 * 1024}
# float32 holds every integer only up to 2^24, so token positions and counts beyond it round;
# no model here was trained within a thousandth of that.
MAX_LENGTH = 2**24
MAX_SAMPLES = 100_000  # per length: the plan lists every unit before it starts
NAME_MAX = 255  # bytes in one file or folder name on Linux and macOS file systems
LM_EVAL = "lm-eval:"  # --tasks lm-eval:<task or group>: lm-eval's tasks as units


class UsageError(ValueError):
    """Wrong input on the command line: reported with the valid choices, exit status 2."""


def parse_list(text: str, what: str) -> list[str]:
    """A comma-separated --<what>, with no empty item."""
    items = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in items):
        raise UsageError(f"empty item in --{what} {text!r}: give a comma-separated list")
    return items


def nonempty(text: str, what: str) -> str:
    """The value of --<what>, refused when empty or blank (it would silently mean a default)."""
    if not text.strip():
        raise UsageError(f"--{what} is empty; give a value or leave the option out")
    return text


def parse_lengths(text: str, flag: str = "lengths") -> tuple[int, ...]:
    """'512,4k,1m' -> (512, 4096, 1048576); k = 1024, m = 1024^2. `flag`: the option's name,
    for the errors."""
    lengths = []
    for item in parse_list(text, flag):
        m = LENGTH.fullmatch(item)
        if not m or int(m.group(1)) == 0:
            raise UsageError(
                f"bad length {item!r} in --{flag}: use a positive integer (ASCII digits) with "
                "an optional k (x1024) or m (x1024^2) suffix, e.g. 512,4k,1m"
            )
        length = int(m.group(1)) * SCALE[m.group(2).lower()]
        if length > MAX_LENGTH:
            raise UsageError(
                f"length {item!r} in --{flag} is {length} tokens, above the limit of 16m "
                f"({MAX_LENGTH} = 2^24 tokens): float32 counts positions exactly only up to 2^24"
            )
        lengths.append(length)
    return tuple(lengths)


def parse_count(text: str, what: str, high: int, why: str) -> int:
    """A whole number in [1, high] written in ASCII digits, e.g. --samples."""
    if not COUNT.fullmatch(text.strip()) or not 1 <= int(text) <= high:
        raise UsageError(
            f"--{what} must be a whole number from 1 to {high} ({why}) in ASCII digits, "
            f"got {text!r}"
        )
    return int(text)


def parse_seed(text: str) -> int:
    """A seed in [0, 2^64): what numpy and torch generators take."""
    if not COUNT.fullmatch(text.strip()) or int(text) >= 2**64:
        raise UsageError(
            f"--seed must be a whole number from 0 to 2^64 - 1 in ASCII digits, got {text!r}"
        )
    return int(text)


def parse_device(text: str, here: bool = True) -> str:
    """auto, cpu, cuda or cuda:N. With `here` (the run's units run in this process), checked
    against the devices torch sees and resolved; a ray/slurm worker resolves its own."""
    from harness.models.loading import DEVICE, pick_device

    if not DEVICE.fullmatch(text):
        raise UsageError(f"bad --device {text!r}: use auto, cpu, cuda or cuda:N")
    if not here:
        return text
    try:
        return pick_device(text)
    except ValueError as err:
        raise UsageError(str(err)) from None


def parse_depths(text: str) -> tuple[float, ...]:
    depths = []
    for item in parse_list(text, "depths"):
        depth = float(item) if DECIMAL.fullmatch(item) else float("nan")
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
    """Harness tasks by name, and lm-eval's as `lm-eval:<task or group>` (tasks.lm_eval_task)."""
    names = list(dict.fromkeys(parse_list(text, "tasks")))
    own = [name for name in names if not name.startswith(LM_EVAL)]
    for name in [*own, *options.extra]:
        if name not in TASKS:
            raise _unknown("task", name, [*TASKS.names(), f"{LM_EVAL}<task or group>"])
    for name in options.extra:
        if name not in names:
            raise UsageError(f"--option for task {name!r}, which is not in --tasks")
    try:
        tasks = [TASKS.get(name)(options) for name in own]
        if len(own) < len(names):
            from tasks import lm_eval_task

            tasks += lm_eval_task.parse([n for n in names if n not in own], options)
        return tasks
    except ValueError as err:  # RegistryError, a setting's (harness.settings), lm-eval's names
        raise UsageError(str(err)) from None


def parse_mitigation(spec: str) -> Mitigation:
    """`name`, `name:key=value:...`, or parts joined by `+` (see harness.mitigations)."""
    try:
        return parse_spec(spec)
    except (MitigationError, RegistryError) as err:
        raise UsageError(str(err)) from None


def model_refs(text: str) -> list[str]:
    """The model references of --models, each once, peer set names expanded."""
    refs = [m for ref in parse_list(text, "models") for m in PEER_SETS.get(ref, (ref,))]
    return list(dict.fromkeys(refs))


def parse_models(text: str) -> list[ModelSource]:
    """Model references, each resolved, checked to be fetchable where it comes from the hub,
    and identified by content (harness.identity); a peer set name (catalog.PEER_SETS) stands
    for its members."""
    from harness.models.loading import ModelError, check_fetchable, resolve

    try:
        models = [resolve(ref) for ref in model_refs(text)]
        for model in models:
            check_fetchable(model)
        models = [identity.identify(model) for model in models]
    except ModelError as err:
        raise UsageError(str(err)) from None
    return models


def check_out_dir(out: Path) -> None:
    """--out is a directory, or can become one, and a file can be created in it."""
    if not str(out).strip():
        raise UsageError("--out is empty; give a directory (created if missing)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a directory (created if missing)")
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"--out {str(out)!r} is under {str(existing)!r}, which is a file; give a directory"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".harness-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UsageError(
            f"--out {str(out)!r}: cannot create files in {str(existing)!r} ({err.strerror})"
        ) from None


def check_names(plan: Plan, out: Path) -> None:
    """Every folder and file name of the plan's result parts fits the file system's limit."""
    from harness import results

    for unit in plan.units:
        path = results.part_path(
            out, unit.task.table, unit.model.name, unit.mitigation.spec, unit.slot
        )
        for name in path.relative_to(out).parts:
            if len(os.fsencode(name)) > NAME_MAX:
                raise UsageError(
                    f"the results folder name {name[:40]!r}... for model {unit.model.name!r} "
                    f"and mitigation {unit.mitigation.spec!r} is {len(os.fsencode(name))} bytes "
                    f"URI-encoded, above the file system's {NAME_MAX}; use a shorter folder "
                    "or file name"
                )


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

    `id` identifies what the unit computes, by content: task, model identity, the mitigation
    with each input file named by its content identity (`Mitigation.content_spec`), unit
    parameters, dtype; it never depends on where the checkout, the model folder or a
    mitigation file lives, nor on how a path was written. `slot` names its part file: task,
    `model=` name, mitigation spec (which names an input file by its file name), unit
    parameters and dtype, so a unit whose model (under a name kept across versions: catalog,
    bundled) or mitigation file changed replaces its part instead of adding rows beside it.
    """

    task: Task
    model: ModelSource
    mitigation: Mitigation
    params: dict[str, Any]
    dtype: str
    model_id: str = field(init=False)
    inputs: dict[str, str] = field(init=False)  # mitigation input file name -> content identity
    id: str = field(init=False)
    slot: str = field(init=False)

    def __post_init__(self) -> None:
        model_id = self.model.id or identity.model_identity(self.model)
        digests = identity.input_identities(self.mitigation)
        content = self.mitigation.content_spec(digests)
        what = [self.task.name, self.mitigation.spec, self.params, self.dtype]
        object.__setattr__(self, "model_id", model_id)
        object.__setattr__(self, "inputs", {Path(p).name: d for p, d in digests.items()})
        # the trailing {} keeps the ids of units without input files as they were before
        # files were named by content (the digested list then ended with the empty inputs map)
        computed = [self.task.name, content, self.params, self.dtype, model_id, {}]
        object.__setattr__(self, "id", _digest(computed))
        object.__setattr__(self, "slot", _digest([*what, self.model.name]))


def distinct(mitigations: list[Mitigation]) -> list[Mitigation]:
    """Each mitigation once: two that read the same bytes (one file through two paths, or a
    copy) are one, the first kept. Refused: two files of one name with different bytes,
    whose results would share the `mitigation=` folder (the spec names a file by its name)."""
    kept: dict[str, Mitigation] = {}
    by_spec: dict[str, tuple[str, Mitigation]] = {}
    for mitigation in mitigations:
        digests = identity.input_identities(mitigation)
        names = [Path(p).name for p in digests]
        if len(set(names)) < len(set(digests.values())):
            raise UsageError(
                f"mitigation {mitigation.spec!r} reads different files of one name "
                f"({', '.join(sorted(digests))}); results name a file by its name: rename one"
            )
        content = mitigation.content_spec(digests)
        seen = by_spec.setdefault(mitigation.spec, (content, mitigation))
        if seen[0] != content:
            files = [*identity.input_identities(seen[1]), *digests]
            raise UsageError(
                f"--mitigations reads two different files as {mitigation.spec!r} "
                f"({', '.join(files)}); results name a file by its name: rename one"
            )
        kept.setdefault(content, mitigation)
    return list(kept.values())


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    models: list[ModelSource]
    mitigations: list[Mitigation]
    tasks: list[Task]
    units: list[Unit]
    skipped: list[str] = field(default_factory=list)  # combinations that do not apply, named


def build_plan(
    models: list[ModelSource], mitigations: list[Mitigation], tasks: list[Task], dtype: str
) -> Plan:
    """Every (model, mitigation, task unit) that applies. A mitigation or task that applies to
    none of the models (or a task to none of the mitigations) is refused (UsageError); in a
    run of several families or mitigations, the combinations that do not apply are skipped and
    listed in `skipped` (e.g. rri beside a transformer, state-stats under window). A mitigation
    given twice (one file through two paths) is run once (`distinct`)."""
    mitigations = distinct(mitigations)
    for what in (*mitigations, *tasks):
        if not any(model.family in what.families for model in models):
            kind, name = (
                ("mitigation", what.spec) if isinstance(what, Mitigation) else ("task", what.name)
            )
            found = ", ".join(f"{m.name} (family {m.family})" for m in models)
            raise UsageError(
                f"{kind} {name!r} does not apply to {found}; it applies to: "
                + ", ".join(sorted(what.families))
            )
    for task in tasks:
        if task.reads_state and all(m.replaces_scan for m in mitigations):
            raise UsageError(
                f"task {task.name!r} reads the plain state h, which "
                f"{', '.join(m.spec for m in mitigations)} replaces; run it with a mitigation "
                "that keeps the scan (none, rri, state-norm...)"
            )
        for mitigation in mitigations:
            if mitigation.strategy() is not None and not task.prompt_parts:
                raise UsageError(
                    f"mitigation {mitigation.spec!r} is an inference strategy that splits a "
                    f"prompt's context; task {task.name!r} scores one whole sequence, so it "
                    "cannot serve it (tasks that can: passkey)"
                )
    units, skipped = [], []
    for model, mitigation, task in itertools.product(models, mitigations, tasks):
        reason = _not_applicable(model, mitigation, task)
        if reason is None:
            units += [Unit(task, model, mitigation, params, dtype) for params in task.units()]
        elif reason not in skipped:
            skipped.append(reason)
    return Plan(models, mitigations, tasks, units, skipped)


def _not_applicable(model: ModelSource, mitigation: Mitigation, task: Task) -> str | None:
    """Why this combination is not run, or None when it is."""
    if model.family not in mitigation.families:
        return f"{mitigation.spec} on {model.name} ({model.family})"
    if model.family not in task.families:
        return f"{task.name} on {model.name} ({model.family})"
    if task.reads_state and mitigation.replaces_scan:
        return f"{task.name} under {mitigation.spec}"
    return None
