"""State capacity (paper-notes.md section 4): per model, how long until the loss collapses and
how long passkey retrieval holds; across models, the paper's two fits against state size.

One unit per (model, mitigation), run on the loaded model:

1. loss by position (tasks/perplexity.py) over `loss_length` tokens of `source` (the newline
   prompt by default), bucket means, then the collapse length (tasks/detect.py): the first
   position past the training length from which the smoothed loss stays `margin` nats above
   the in-context level for `window` tokens;
2. passkey retrieval (tasks/passkey.py) at the run's lengths, samples and depths, then the
   recall length: the largest length with accuracy >= `recall_threshold`.

The row keeps the loss curve and the accuracies, so the detectors can be re-run with other
settings without the model.

The fits need every model's row, which no single unit has: `StateCapacity.combine` takes the
state_capacity table (results.read_table) and returns, per mitigation, one row per fit:
- forget threshold T_forget = a * N_S + b: per state size, the shortest training length among
  the models of that size that show no collapse (the paper's "minimum training length without
  state collapse"; sizes where every model collapses give no point);
- recall capacity T_recall = b * (a^N_S - 1) + c: per state size, the longest recall length;
in the paper's units (K = 1024 tokens, N_S in the paper's M), with R^2 and the paper's
coefficients beside them. A fit with too few state sizes gets a row with its reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from harness.settings import setting
from tasks.base import Progress, Task, TaskOptions
from tasks.detect import (
    K_TOKENS,
    PAPER_FORGET,
    PAPER_RECALL,
    Collapse,
    CollapseCriterion,
    FitError,
    collapse_length,
    fit_forget,
    fit_recall,
    paper_forget,
    paper_millions,
    paper_recall,
    recall_length,
)
from tasks.passkey import DEFAULT_LENGTHS as PASSKEY_LENGTHS
from tasks.passkey import DEFAULT_SAMPLES, Passkey
from tasks.perplexity import Bucket, loss_buckets
from tasks.settings import require_positive
from tasks.sources import SourceSettings, documents, source_from

if TYPE_CHECKING:
    from harness.models.base import LanguageModel

MODEL_ROW = "model"
FIT_ROWS = {"forget": "fit-forget", "recall": "fit-recall"}


@dataclass(frozen=True)
class StateCapacitySettings(SourceSettings):
    loss_length: int = setting(32768, "tokens of the loss curve; must go past the training length")
    bucket: int = setting(128, "positions per bucket of the loss curve")
    chunk: int = setting(2048, "tokens per forward call (the state is carried between calls)")
    margin: float = setting(0.5, "nats above the in-context loss that count as collapsed")
    window: int = setting(1024, "tokens the smoothed loss must stay above that level")
    smoothing: int = setting(256, "tokens of the trailing mean that smooths the loss curve")
    recall_threshold: float = setting(
        0.95, "passkey accuracy that counts as recalled, in (0, 1] (paper 0.95)"
    )


class StateCapacity(Task):
    name = "state-capacity"
    description = (
        "collapse length (loss by position over loss_length tokens) and recall length "
        "(passkey at --lengths) per model; T_forget and T_recall fits across models"
    )
    table = "state_capacity"
    schema = pa.schema(
        [
            ("kind", pa.string()),  # model | fit-forget | fit-recall
            ("n_s", pa.float64()),  # state size in the paper's M elements
            ("collapse_length", pa.int64()),  # null: no collapse up to collapse_searched_to
            ("collapse_searched_to", pa.int64()),
            ("in_context_loss", pa.float64()),
            ("recall_length", pa.int64()),  # null: no length reached the threshold
            ("recall_lengths", pa.list_(pa.int64())),
            ("recall_accuracy", pa.list_(pa.float64())),
            ("loss_starts", pa.list_(pa.int64())),  # the loss curve: bucket starts
            ("loss_means", pa.list_(pa.float64())),  # and mean losses
            ("paper_forget_k", pa.float64()),  # the paper's fits at this n_s, K tokens
            ("paper_recall_k", pa.float64()),
            ("source", pa.string()),
            ("bucket_size", pa.int64()),
            ("margin", pa.float64()),
            ("window", pa.int64()),
            ("smoothing", pa.int64()),
            ("recall_threshold", pa.float64()),
            ("fit_a", pa.float64()),
            ("fit_b", pa.float64()),
            ("fit_c", pa.float64()),
            ("fit_r2", pa.float64()),
            ("fit_points", pa.int64()),
            ("fit_models", pa.string()),  # the models whose rows made the points
            ("fit_note", pa.string()),  # why a fit could not be made
            ("paper_a", pa.float64()),
            ("paper_b", pa.float64()),
            ("paper_c", pa.float64()),
        ]
    )
    Settings = StateCapacitySettings

    @classmethod
    def parse_settings(cls, raw: dict[str, str]) -> StateCapacitySettings:
        settings = super().parse_settings(raw)
        positive = ("loss_length", "bucket", "chunk", "margin", "window", "smoothing")
        require_positive(cls.name, settings, positive)
        if not 0 < settings.recall_threshold <= 1:
            raise ValueError(
                f"task {cls.name!r} option recall_threshold={settings.recall_threshold} "
                "must be in (0, 1]"
            )
        source_from(asdict(settings))
        return settings

    def units(self) -> list[dict[str, Any]]:
        o = self.options
        return [
            {
                "recall_lengths": list(o.lengths or PASSKEY_LENGTHS),
                "samples": o.samples or DEFAULT_SAMPLES,
                "depths": list(o.depths) if o.depths is not None else None,
                "seed": o.seed,
                **self.params,
            }
        ]

    def _passkey(self, params: dict[str, Any]) -> Passkey:
        depths = tuple(params["depths"]) if params["depths"] is not None else None
        return Passkey(
            TaskOptions(
                lengths=tuple(params["recall_lengths"]),
                depths=depths,
                samples=params["samples"],
                seed=params["seed"],
            )
        )

    def cost(self, params: dict[str, Any]) -> int:
        passkey = self._passkey(params)
        return params["loss_length"] + sum(passkey.cost(u) for u in passkey.units())

    def run(self, model: LanguageModel, params: dict[str, Any], progress: Progress) -> list[dict]:
        collapse, curve = self._collapse(model, params, progress)
        lengths, accuracy = self._recall(model, params, progress)
        n_s = paper_millions(model.info.state_size) if model.info.state_size else None
        return [
            {
                "kind": MODEL_ROW,
                "n_s": n_s,
                "collapse_length": collapse.length,
                "collapse_searched_to": collapse.searched_to,
                "in_context_loss": collapse.level,
                "recall_length": recall_length(lengths, accuracy, params["recall_threshold"]),
                "recall_lengths": lengths,
                "recall_accuracy": accuracy,
                "loss_starts": [b.start for b in curve],
                "loss_means": [b.mean_loss for b in curve],
                "paper_forget_k": paper_forget(n_s) if n_s is not None else None,
                "paper_recall_k": paper_recall(n_s) if n_s is not None else None,
                "source": params["source"],
                "bucket_size": params["bucket"],
                "margin": params["margin"],
                "window": params["window"],
                "smoothing": params["smoothing"],
                "recall_threshold": params["recall_threshold"],
            }
        ]

    def _collapse(
        self, model: LanguageModel, params: dict[str, Any], progress: Progress
    ) -> tuple[Collapse, list[Bucket]]:
        """Where the loss curve over loss_length tokens collapses, and the curve."""
        train_context = model.info.train_context
        if params["loss_length"] <= train_context:
            raise ValueError(
                f"state-capacity: loss_length={params['loss_length']} does not go past the "
                f"training length of {model.info.name} ({train_context}); set a longer "
                "loss_length"
            )
        source = source_from(params)
        [doc] = documents(
            source, model.encode, params["loss_length"], 1, params["short_docs"], model.eos_token_id
        )
        curve = loss_buckets(model, doc.ids, params["bucket"], params["chunk"], progress, "prompt")
        criterion = CollapseCriterion(params["margin"], params["window"], params["smoothing"])
        starts, ends = [b.start for b in curve], [b.end for b in curve]
        means = [b.mean_loss for b in curve]
        return collapse_length(starts, ends, means, train_context, criterion), curve

    def _recall(
        self, model: LanguageModel, params: dict[str, Any], progress: Progress
    ) -> tuple[list[int], list[float]]:
        """Passkey accuracy per length."""
        passkey = self._passkey(params)
        lengths, accuracy = [], []
        for unit in passkey.units():
            rows = passkey.run(model, unit, progress)
            lengths.append(unit["length"])
            accuracy.append(sum(r["correct"] for r in rows) / len(rows))
        return lengths, accuracy

    def summary(self, rows: list[dict[str, Any]]) -> str:
        [row] = rows
        collapse = row["collapse_length"]
        collapsed = (
            f"collapse at {collapse}"
            if collapse is not None
            else f"no collapse up to {row['collapse_searched_to']}"
        )
        recall = row["recall_length"]
        return f"{collapsed}; recall length {recall if recall is not None else 'none'}"

    @classmethod
    def combine(cls, table: pa.Table) -> dict[str, list[dict[str, Any]]]:
        """The fit rows of a state_capacity table (results.read_table), per mitigation."""
        return capacity_fits(table.to_pylist())


def capacity_fits(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per mitigation: a forget-fit row and a recall-fit row from the models' ok rows."""
    by_mitigation: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("status") == "ok" and row.get("kind") == MODEL_ROW and row.get("state_size"):
            by_mitigation[row["mitigation"]].append(row)
    return {
        mitigation: [
            _fit_row("forget", forget_points(models)),
            _fit_row("recall", recall_points(models)),
        ]
        for mitigation, models in sorted(by_mitigation.items())
    }


Points = dict[float, tuple[float, list[str]]]  # n_s -> (length in K, the models giving it)


def forget_points(models: list[dict[str, Any]]) -> Points:
    """Per state size: the shortest training length among its models that did not collapse."""
    kept = [r for r in models if r["collapse_length"] is None]
    candidates = [(r, r["train_context"] / K_TOKENS) for r in kept]
    return _best_per_size(candidates, min)


def recall_points(models: list[dict[str, Any]]) -> Points:
    """Per state size: the longest recall length among its models."""
    kept = [r for r in models if r["recall_length"] is not None]
    candidates = [(r, r["recall_length"] / K_TOKENS) for r in kept]
    return _best_per_size(candidates, max)


def _best_per_size(
    candidates: list[tuple[dict[str, Any], float]], prefer: Callable[[list[float]], float]
) -> Points:
    grouped: dict[float, list[tuple[float, str]]] = defaultdict(list)
    for row, length in candidates:
        grouped[paper_millions(row["state_size"])].append((length, row["model"]))
    points: Points = {}
    for n_s, found in grouped.items():
        best = prefer([length for length, _ in found])
        points[n_s] = (best, sorted(model for length, model in found if length == best))
    return points


def _fit_row(name: str, points: Points) -> dict[str, Any]:
    paper = PAPER_FORGET if name == "forget" else PAPER_RECALL
    sizes = sorted(points)
    row: dict[str, Any] = {
        "kind": FIT_ROWS[name],
        "fit_points": len(sizes),
        "fit_models": ",".join(m for n in sizes for m in points[n][1]),
        "paper_a": paper["a"],
        "paper_b": paper["b"],
        "paper_c": paper.get("c"),
        "fit_a": None,
        "fit_b": None,
        "fit_c": None,
        "fit_r2": None,
        "fit_note": None,
    }
    fit = fit_forget if name == "forget" else fit_recall
    try:
        found = fit(sizes, [points[n][0] for n in sizes])
    except FitError as err:
        return row | {"fit_note": str(err)}
    coefficients = found.coefficients
    return row | {
        "fit_a": coefficients["a"],
        "fit_b": coefficients["b"],
        "fit_c": coefficients.get("c"),
        "fit_r2": found.r2,
    }
