"""The base of the harness tasks in lm-eval: a YAML task whose metric names depend on metadata.

lm-eval takes a task's metric names from its YAML, but the harness tasks report one metric
per length given at run time (`--metadata '{"max_seq_lengths": [...]}'`). A task YAML names
its class with `class: !function <module>.<Class>`; the class adds those metrics with their
aggregation and direction.

Under data parallel (`accelerate launch`) each rank scores only its share of the documents,
and lm-eval gathers every metric from every rank by name: a rank that saw no document of
some length would have no metric of that length (`4096`). There every document reports
every per-length metric, None where it does not apply, and their aggregations pass the
Nones over (their standard errors are then not computed: lm-eval knows those only for its
own functions).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lm_eval.api.task import ConfigurableTask

from harness.lm_eval import distributed


def by_length(length: int) -> str:
    """The name of a task's main metric over the documents of one length: the length itself,
    e.g. `4096`, as lm-eval's RULER tasks name theirs (one metric per length)."""
    return str(length)


def per_length(metric: str, length: int) -> str:
    """The name of a further metric over the documents of one length, e.g.
    `word_perplexity@4096`."""
    return f"{metric}@{length}"


@dataclass(frozen=True)
class Metric:
    aggregation: Callable[[list[Any]], float]
    higher_is_better: bool


def skipping_missing(aggregation: Callable[[list[Any]], float]) -> Callable[[list[Any]], float]:
    """`aggregation` over the items that are not None."""

    def aggregate(items: list[Any]) -> float:
        return aggregation([item for item in items if item is not None])

    return aggregate


class MetadataTask(ConfigurableTask):
    """A ConfigurableTask built from its YAML, plus the metrics `metadata_metrics` names."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config={key: value for key, value in config.items() if key != "class"})
        self._metadata_metrics = self.metadata_metrics(self.config.metadata or {})

    def metadata_metrics(self, metadata: Mapping[str, Any]) -> dict[str, Metric]:
        """The metrics that depend on the metadata, by name."""
        return {}

    def process_results(self, doc: dict[str, Any], results: list[Any]) -> dict[str, Any]:
        found = super().process_results(doc, results)
        if distributed.from_env().parallel:
            return {**dict.fromkeys(self._metadata_metrics), **found}
        return found

    def aggregation(self) -> dict[str, Callable[[list[Any]], float]]:
        parallel = distributed.from_env().parallel
        extra = {
            name: skipping_missing(m.aggregation) if parallel else m.aggregation
            for name, m in self._metadata_metrics.items()
        }
        return {**super().aggregation(), **extra}

    def higher_is_better(self) -> dict[str, bool]:
        extra = {name: m.higher_is_better for name, m in self._metadata_metrics.items()}
        return {**super().higher_is_better(), **extra}
