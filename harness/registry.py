"""Names -> tasks and mitigations, like lm-eval's registries: each name once, loaded on demand.

The built-ins are a table of name -> "module:Class"; a plugin package adds a task or a
mitigation with one entry point, e.g. in its pyproject:

    [project.entry-points."harness.tasks"]
    my-task = "my_pkg.my_task:MyTask"

(group `harness.mitigations` for a mitigation; the class's `name` must be the entry point's
name) and nothing in the harness changes. Code that is already imported can also register
with the decorator, `@TASKS.register("my-task")`.

Listing the names imports nothing: a module is imported only when one of its names is asked
for, so a plugin that is broken or heavy costs nothing to runs that do not use it. A name
given twice (two plugins, or a plugin and a built-in) is an error naming both targets; a loaded
class that is not a Task (Mitigation) subclass, or whose `name` differs, is an error too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any


class RegistryError(ValueError):
    """A name clash, a target that cannot be loaded, or one of the wrong kind."""


@dataclass
class Registry:
    """One kind of plugin: its built-ins and entry-point group, loaded as names are asked for."""

    kind: str  # "task" | "mitigation", for messages
    group: str  # entry-point group
    base: str  # "module:Class" every registered class must subclass
    builtins: dict[str, str]  # name -> "module:Class"
    _targets: dict[str, str] | None = field(default=None, init=False, repr=False)
    _classes: dict[str, type] = field(default_factory=dict, init=False, repr=False)

    def names(self) -> list[str]:
        """Every registered name, built-ins first; imports nothing."""
        return list(self._table())

    def __contains__(self, name: object) -> bool:
        return name in self._table()

    def get(self, name: str) -> type:
        """The class registered as `name`, imported and checked on first use (KeyError if none)."""
        if name not in self._classes:
            target = self._table()[name]
            self._classes[name] = self._check(name, target, _load(target, self.kind, name))
        return self._classes[name]

    def register(self, name: str) -> Callable[[type], type]:
        """A class decorator adding the class as `name` (a clash is a RegistryError)."""

        def add(cls: type) -> type:
            target = f"{cls.__module__}:{cls.__qualname__}"
            _add(self._table(), name, target, self.kind)
            self._classes[name] = self._check(name, target, cls)
            return cls

        return add

    def _table(self) -> dict[str, str]:
        if self._targets is None:
            from importlib.metadata import entry_points  # 0.1 s: only when a name is asked for

            table: dict[str, str] = {}
            for name, target in self.builtins.items():
                _add(table, name, target, self.kind)
            for ep in entry_points(group=self.group):
                _add(table, ep.name, ep.value, self.kind)
            self._targets = table
        return self._targets

    def _check(self, name: str, target: str, cls: Any) -> type:
        base = _load(self.base, self.kind, name)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise RegistryError(
                f"{self.kind} {name!r} is registered as {target}, which is not a subclass of "
                f"{self.base}"
            )
        if getattr(cls, "name", name) != name:
            raise RegistryError(
                f"{self.kind} {name!r} is registered as {target}, whose name is {cls.name!r}; "
                "give both the same name"
            )
        return cls


def _add(table: dict[str, str], name: str, target: str, kind: str) -> None:
    if name in table and table[name] != target:
        raise RegistryError(
            f"{kind} name {name!r} is registered twice: as {table[name]} and as {target}; "
            "uninstall or rename one of them"
        )
    table[name] = target


def _load(target: str, kind: str, name: str) -> Any:
    module, _, attr = target.partition(":")
    try:
        found: Any = import_module(module)
        for part in attr.split("."):
            found = getattr(found, part)
    except Exception as err:  # a plugin may fail in any way while importing
        raise RegistryError(
            f"{kind} {name!r} cannot be loaded from {target}: {type(err).__name__}: {err}"
        ) from err
    return found


TASKS = Registry(
    kind="task",
    group="harness.tasks",
    base="tasks.base:Task",
    builtins={
        "passkey": "tasks.passkey:Passkey",
        "perplexity": "tasks.perplexity:Perplexity",
        "state-stats": "tasks.state_stats:StateStats",
        "state-capacity": "tasks.state_capacity:StateCapacity",
    },
)

MITIGATIONS = Registry(
    kind="mitigation",
    group="harness.mitigations",
    base="harness.mitigations.base:Mitigation",
    builtins={
        "none": "harness.mitigations.base:NoMitigation",
        "rri": "harness.mitigations.rri:RRI",
        "dt-scale": "harness.mitigations.scale:DtScale",
        "a-scale": "harness.mitigations.scale:AScale",
        "state-norm": "harness.mitigations.state_norm:StateNorm",
        "window": "harness.mitigations.window:Window",
        "longmamba": "harness.mitigations.longmamba:LongMamba",
        "oprm": "harness.mitigations.oprm:OPRM",
    },
)
