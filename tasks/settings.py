"""Checks of task settings (`--option <task>.key=value`): ValueError naming the valid range."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def require_positive(task: str, settings: dict[str, Any], keys: Iterable[str]) -> None:
    """Each of `keys` is a number > 0."""
    for key in keys:
        if not settings[key] > 0:
            raise ValueError(f"task {task!r} option {key}={settings[key]!r} must be > 0")
