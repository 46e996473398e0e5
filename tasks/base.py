"""What every task plugin is: units of work, and rows for one unit on one model.

A task never loads a model nor writes a file: the runner hands it a loaded model (with any
mitigation installed) and the parameters of one unit, and stores the rows it returns.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from harness.models.catalog import FAMILIES
from harness.settings import NoSettings, build

if TYPE_CHECKING:
    from harness.models.base import LanguageModel

Progress = Callable[[int], None]  # advance the run's progress bar by n units of cost (tokens)


class NonFiniteError(ArithmeticError):
    """A model produced NaN or infinite values; the unit is recorded with status nonfinite."""


@dataclass(frozen=True)
class TaskOptions:
    """The options of `harness run` that tasks read; None means the task's default."""

    lengths: tuple[int, ...] | None = None
    depths: tuple[float, ...] | None = None
    samples: int | None = None
    seed: int = 0
    extra: dict[str, dict[str, str]] = field(default_factory=dict)  # task -> key -> value


class Task(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    table: ClassVar[str]  # results/<table>/
    schema: ClassVar[pa.Schema]  # the task's own columns (the runner adds the common ones)
    families: ClassVar[frozenset[str]] = FAMILIES
    prompt_parts: ClassVar[bool] = (
        False  # builds PromptParts (an inference strategy may split them)
    )
    reads_state: ClassVar[bool] = False  # observes the plain state h (not under window)
    # What `--option <task>.key=value` sets: a frozen dataclass (harness.settings).
    Settings: ClassVar[type] = NoSettings

    def __init__(self, options: TaskOptions) -> None:
        self.options = options
        self.settings = self.parse_settings(options.extra.get(self.name, {}))

    @classmethod
    def parse_settings(cls, raw: dict[str, str]) -> Any:
        """The task's settings: the defaults overridden by `raw` (ValueError naming the valid
        keys or the type); subclasses add range checks."""
        return build(cls.Settings, raw, f"task {cls.name!r}", "option")

    @property
    def params(self) -> dict[str, Any]:
        """The settings as a dict, as each unit's parameters carry them."""
        return dataclasses.asdict(self.settings)

    @abstractmethod
    def units(self) -> list[dict[str, Any]]:
        """The parameters of each unit (JSON-serialisable, the same for every model)."""

    def cost(self, params: dict[str, Any]) -> int:
        """The unit's share of the progress bar, e.g. tokens to process."""
        return 1

    @abstractmethod
    def run(self, model: LanguageModel, params: dict[str, Any], progress: Progress) -> list[dict]:
        """The rows of one unit: dicts with the keys of `schema`."""

    def combine(self, table: pa.Table) -> dict[str, list[dict[str, Any]]]:
        """Rows computed across models from the task's whole results table (e.g. fits against
        state size), per mitigation spec; the runner stores them under model=_combined."""
        return {}

    def summary(self, rows: list[dict[str, Any]]) -> str:
        """A few words about a finished unit, for the end-of-run table."""
        return f"{len(rows)} rows"

    def at_chance(self, rows: list[dict[str, Any]]) -> bool:
        """Whether a finished unit scored at or below chance, for `--stop-after-fails`: once
        enough lengths in a row do, longer ones are skipped. Tasks without a notion of
        chance never stop early."""
        return False
