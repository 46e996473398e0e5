"""Checks of task settings (`--option <task>.key=value`): ValueError naming the valid range."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def require_positive(task: str, settings: Any, keys: Iterable[str]) -> None:
    """Each of `keys` of the settings dataclass is a number > 0."""
    for key in keys:
        value = getattr(settings, key)
        if not value > 0:
            raise ValueError(f"task {task!r} option {key}={value!r} must be > 0")
