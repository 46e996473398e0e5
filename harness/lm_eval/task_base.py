"""The base of the harness tasks in lm-eval: a YAML task whose metric names depend on metadata.

lm-eval takes a task's metric names from its YAML, but the harness tasks report one metric
per length given at run time (`--metadata '{"max_seq_lengths": [...]}'`). A task YAML names
its class with `class: !function <module>.<Class>`; the class adds those metrics with their
aggregation and direction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lm_eval.api.task import ConfigurableTask


def per_length(metric: str, length: int) -> str:
    """The name of `metric` over the documents of one length, e.g. `acc@4096`."""
    return f"{metric}@{length}"


@dataclass(frozen=True)
class Metric:
    aggregation: Callable[[list[Any]], float]
    higher_is_better: bool


class MetadataTask(ConfigurableTask):
    """A ConfigurableTask built from its YAML, plus the metrics `metadata_metrics` names."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config={key: value for key, value in config.items() if key != "class"})
        self._metadata_metrics = self.metadata_metrics(self.config.metadata or {})

    def metadata_metrics(self, metadata: Mapping[str, Any]) -> dict[str, Metric]:
        """The metrics that depend on the metadata, by name."""
        return {}

    def aggregation(self) -> dict[str, Callable[[list[Any]], float]]:
        extra = {name: m.aggregation for name, m in self._metadata_metrics.items()}
        return {**super().aggregation(), **extra}

    def higher_is_better(self) -> dict[str, bool]:
        extra = {name: m.higher_is_better for name, m in self._metadata_metrics.items()}
        return {**super().higher_is_better(), **extra}
