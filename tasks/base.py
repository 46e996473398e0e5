"""What every task plugin is: units of work, and rows for one unit on one model.

A task never loads a model nor writes a file: the runner hands it a loaded model (with any
mitigation installed) and the parameters of one unit, and stores the rows it returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from harness.models.base import LanguageModel

Progress = Callable[[int], None]  # advance the run's progress bar by n units of cost


class NonFiniteError(ArithmeticError):
    """A model produced NaN or infinite values; the unit is recorded with status nonfinite."""


@dataclass(frozen=True)
class TaskOptions:
    """The options of `harness run` that tasks read; None means the task's default."""

    lengths: tuple[int, ...] | None = None
    depths: tuple[float, ...] | None = None
    samples: int | None = None
    seed: int = 0


class Task(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    table: ClassVar[str]  # results/<table>/
    schema: ClassVar[pa.Schema]  # the task's own columns (the runner adds the common ones)
    families: ClassVar[frozenset[str]] = frozenset({"mamba2", "transformer"})

    def __init__(self, options: TaskOptions) -> None:
        self.options = options

    @abstractmethod
    def units(self) -> list[dict[str, Any]]:
        """The parameters of each unit (JSON-serialisable, the same for every model)."""

    def cost(self, params: dict[str, Any]) -> int:
        """The unit's share of the progress bar, e.g. tokens to process."""
        return 1

    @abstractmethod
    def run(self, model: LanguageModel, params: dict[str, Any], progress: Progress) -> list[dict]:
        """The rows of one unit: dicts with the keys of `schema`."""

    def summary(self, rows: list[dict[str, Any]]) -> str:
        """One short human line about a finished unit, for the end-of-run table."""
        return f"{len(rows)} rows"
