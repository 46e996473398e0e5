"""What `harness export` writes, computed from a results folder: per (model, mitigation), each
exportable task with its metrics aggregated over the scored documents.

Exported: the `lm_eval` table (lm-eval tasks run as harness units) and the `passkey` table
as lm-eval's `harness_passkey` (same prompts, keys and scoring: README, lm-evaluation-harness).
The other tables (loss by position, state statistics, capacity) have no lm-eval counterpart
that computes the same numbers and are not exported.

Rows are read as the leaderboard reads them (ok rows, the newest setting per cell, named in
warnings otherwise). A metric's value is the mean over documents, its standard error the
sample standard deviation over sqrt(n) (lm-eval's `mean_stderr`); a metric named by a length
(lm-eval's RULER convention) leaves out RULER's -1 placeholders, as its `aggregate_metrics`
does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from harness.lm_eval import include_path

LM_EVAL, PASSKEY = "lm_eval", "passkey"
PLACEHOLDER = -1.0  # RULER's value of a length metric on a document of another length


@dataclass(frozen=True)
class Metric:
    name: str  # lm-eval's name: "acc", "1024" (a length), "exact_match"
    value: float
    stderr: float | None  # None for fewer than two documents
    documents: int
    higher_is_better: bool
    length: int | None  # the documents' length, for a metric named by one


@dataclass
class TaskScores:
    task: str  # lm-eval's task name
    library: str  # "lm_eval" (run by lm-eval) or "harness" (harness run, lm-eval's layout)
    version: str | None
    config: dict[str, Any]
    task_hash: str | None
    docs_total: int  # documents the task has (lm-eval's n-samples original)
    docs: int  # documents scored
    metrics: list[Metric]
    dataset: str | None  # a hub dataset the documents come from, None when built here


@dataclass
class Evaluation:
    """One (model, mitigation) of the results folder."""

    model: str
    mitigation: str
    facts: dict[str, Any]  # model_ref, model_id, family, params, dtype, backend, device, seed...
    started: datetime
    finished: datetime
    tasks: list[TaskScores] = field(default_factory=list)


def evaluations(tables: dict[str, pd.DataFrame]) -> list[Evaluation]:
    """Every (model, mitigation) with exportable results, tasks by name."""
    found: dict[tuple[str, str], Evaluation] = {}
    for table, collect in ((LM_EVAL, lm_eval_tasks), (PASSKEY, passkey_task)):
        rows = tables.get(table)
        if rows is None or not len(rows):
            continue
        for (model, mitigation), own in rows.groupby(["model", "mitigation"], sort=True):
            key = (str(model), str(mitigation))
            if key not in found:
                found[key] = Evaluation(
                    *key, facts(own), own["created_at"].min(), own["created_at"].max()
                )
            evaluation = found[key]
            evaluation.started = min(evaluation.started, own["created_at"].min())
            evaluation.finished = max(evaluation.finished, own["created_at"].max())
            evaluation.tasks += collect(own)
    for evaluation in found.values():
        evaluation.tasks.sort(key=lambda t: t.task)
    return list(found.values())


FACTS = (
    "model_ref", "model_id", "family", "params", "state_size", "train_context", "dtype",
    "backend", "device", "seed", "harness_version", "git_commit", "lm_eval_version",
)  # fmt: skip


def facts(rows: pd.DataFrame) -> dict[str, Any]:
    """The first non-null value of each provenance column."""
    found = {}
    for column in FACTS:
        if column in rows.columns and rows[column].notna().any():
            value = rows[column].dropna().iloc[0]
            found[column] = value.item() if hasattr(value, "item") else value
    return found


def mean_and_stderr(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def lm_eval_tasks(rows: pd.DataFrame) -> list[TaskScores]:
    found = []
    for task, own in rows.groupby("lm_eval_task", sort=True):
        own = own.sort_values(["length", "doc_id"], na_position="first")
        by_metric: dict[str, list[float]] = {}
        for metrics in own["metrics"]:
            for name, value in metrics:
                by_metric.setdefault(name, []).append(value)
        directions = _directions(own)
        metrics = []
        for name, values in sorted(by_metric.items(), key=lambda item: _metric_order(item[0])):
            kept = [v for v in values if not (name.isdigit() and v == PLACEHOLDER)]
            if not kept:
                continue  # RULER's placeholder only: no document of that length here
            mean, stderr = mean_and_stderr(kept)
            length = int(name) if name.isdigit() else None
            metrics.append(
                Metric(name, mean, stderr, len(kept), directions.get(name, True), length)
            )
        config = json.loads(own["task_config"].iloc[0]) if own["task_config"].notna().any() else {}
        lengths = sorted(int(n) for n in own["length"].dropna().unique())
        if lengths:
            config.setdefault("metadata", {})["max_seq_lengths"] = lengths
        units = own.drop_duplicates("unit_id")
        found.append(
            TaskScores(
                task=str(task),
                library="lm_eval",
                version=str(own["task_version"].iloc[0]),
                config=config,
                task_hash=_task_hash(own),
                docs_total=int(units["docs_total"].sum()),
                docs=len(own),
                metrics=metrics,
                dataset=config.get("dataset_path") or None,
            )
        )
    return found


def _metric_order(name: str) -> tuple[int, int, str]:
    return (1, int(name), "") if name.isdigit() else (0, 0, name)


def _directions(rows: pd.DataFrame) -> dict[str, bool]:
    """higher_is_better per metric, from the task's config; metrics named by lengths follow
    the config's length metrics (RULER lists only its default lengths)."""
    if not rows["task_config"].notna().any():
        return {}
    config = json.loads(rows["task_config"].iloc[0])
    found = {
        str(m.get("metric")): bool(m.get("higher_is_better", True))
        for m in config.get("metric_list") or []
        if isinstance(m, dict)
    }
    by_length = [v for k, v in found.items() if k.isdigit()]
    names = {name for metrics in rows["metrics"] for name, _ in metrics}
    for name in names:
        if name.isdigit() and name not in found and by_length:
            found[name] = by_length[0]
    return found


def _task_hash(rows: pd.DataFrame) -> str | None:
    """lm-eval's task hash over the exported documents (by length, then document id)."""
    import hashlib

    columns = ["doc_hash", "prompt_hash", "target_hash"]
    if not set(columns) <= set(rows.columns) or rows[columns].isna().any().any():
        return None
    joined = "".join(rows[columns].astype(str).sum(axis=1))
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


def passkey_task(rows: pd.DataFrame) -> list[TaskScores]:
    """The passkey rows as lm-eval's harness_passkey reports them: acc, and per length the
    accuracy named by the length."""
    correct = [float(v) for v in rows["correct"]]
    overall, stderr = mean_and_stderr(correct)
    metrics = [Metric("acc", overall, stderr, len(correct), True, None)]
    for length, own in rows.groupby("length", sort=True):
        mean, error = mean_and_stderr([float(v) for v in own["correct"]])
        metrics.append(Metric(str(int(length)), mean, error, len(own), True, int(length)))
    params = json.loads(rows["unit_params"].iloc[0])
    config = {
        **harness_passkey_config(),
        "metadata": {
            "version": harness_passkey_config().get("metadata", {}).get("version"),
            "max_seq_lengths": sorted(int(n) for n in rows["length"].unique()),
            "samples": params.get("samples"),
            "depths": params.get("depths"),
            "seed": params.get("seed"),
        },
    }
    version = config["metadata"]["version"]
    return [
        TaskScores(
            task="harness_passkey",
            library="harness",
            version=None if version is None else str(version),
            config=config,
            task_hash=None,
            docs_total=len(rows),
            docs=len(rows),
            metrics=metrics,
            dataset=None,
        )
    ]


def harness_passkey_config() -> dict[str, Any]:
    """harness_passkey.yaml, `!function` references as their names."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, tag, node: f"{tag} {node.value}")
    path = Path(include_path()) / "harness_passkey.yaml"
    return yaml.load(path.read_text(), Loader=Loader)  # a SafeLoader
