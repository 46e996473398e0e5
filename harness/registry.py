"""Names -> tasks and mitigations: the built-ins plus any installed plugin.

A plugin package adds a task or a mitigation with one entry point, e.g. in its pyproject:

    [project.entry-points."harness.tasks"]
    my-task = "my_pkg.my_task:MyTask"

and nothing in the harness changes.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from harness.mitigations import MITIGATIONS
from harness.mitigations.base import Mitigation
from tasks.base import Task
from tasks.passkey import Passkey
from tasks.perplexity import Perplexity
from tasks.state_capacity import StateCapacity
from tasks.state_stats import StateStats

BUILTIN_TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (Passkey, Perplexity, StateStats, StateCapacity)
}


def _with_plugins(builtins: dict[str, type], group: str) -> dict[str, type]:
    found = dict(builtins)
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep.load())
    return found


def tasks() -> dict[str, type[Task]]:
    return _with_plugins(BUILTIN_TASKS, "harness.tasks")


def mitigations() -> dict[str, type[Mitigation]]:
    return _with_plugins(MITIGATIONS, "harness.mitigations")
