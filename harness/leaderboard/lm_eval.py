"""lm-eval tasks in the leaderboard: a column per (lm-eval task, length) and a figure per task.

The results hold one row per scored document (tasks.lm_eval_task); the aggregates are
computed here. A unit's score is the mean over its documents of its main metric: the one
named by the unit's length (lm-eval's RULER convention, where the other lengths' entries are
RULER's -1 placeholders) or, for a task without lengths, `acc` where the documents have it,
else their first numeric metric. That mean is lm-eval's own aggregate for RULER's tasks and
for every task whose metric aggregates by mean (acc, exact_match...).
"""

from __future__ import annotations

from typing import Any

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from harness.leaderboard.columns import LM_EVAL, MITIGATION, MODEL, ROW
from harness.leaderboard.figures import LINE_STYLES, MARKERS, Plot, to_png, token_axis
from harness.leaderboard.tables import records_frame, token_label
from tasks.lm_eval_task import main_metric

SCORE, DOCS = "lm_", "lmn_"  # main-table columns: lm_<task>@<L> (score), lmn_<task>@<L> (docs)
FIGURE = "lm-eval-"  # figure file stems: lm-eval-<task>


def scores(rows: pd.DataFrame) -> pd.DataFrame:
    """(model, mitigation, task, length) -> metric, score (mean over documents), docs."""
    task, length, metrics = LM_EVAL.task, LM_EVAL.length, LM_EVAL.metrics
    records = []
    for key, unit in rows.groupby([*ROW, task, length], dropna=False, sort=True):
        values = []
        metric = None
        for found, size in zip(unit[metrics], unit[length], strict=True):
            names = [name for name, _ in found] if found is not None else []
            metric = main_metric(names, int(size) if pd.notna(size) else None)
            if metric is not None:
                values.append(dict(found)[metric])
        if values:
            record = dict(zip([*ROW, task, length], key, strict=True))
            score = sum(values) / len(values)
            records.append({**record, "metric": metric, "score": score, "docs": len(values)})
    return records_frame(records, [*ROW, task, length, "metric", "score", "docs"])


def label(task: str, length: float) -> str:
    return task if pd.isna(length) else f"{task}@{token_label(float(length))}"


def columns(found: pd.DataFrame) -> pd.DataFrame:
    """Per (model, mitigation): lm_<task>@<L> and lmn_<task>@<L>, tasks by name, lengths
    ascending."""
    ordered = found.sort_values([LM_EVAL.task, LM_EVAL.length], na_position="first")
    records: dict[tuple, dict[str, Any]] = {}
    for row in ordered.itertuples(index=False):
        values = row._asdict()
        key = tuple(values[c] for c in ROW)
        record = records.setdefault(key, dict(zip(ROW, key, strict=True)))
        name = label(values[LM_EVAL.task], values[LM_EVAL.length])
        record[SCORE + name] = values["score"]
        record[DOCS + name] = values["docs"]
    return records_frame(list(records.values()), list(ROW))


def figures(found: pd.DataFrame) -> list[Plot]:
    """Per lm-eval task with more than one length: score against length, a line per (model,
    mitigation): a colour per model, a line style and marker per mitigation."""
    plots = []
    with_lengths = found.dropna(subset=[LM_EVAL.length])
    for task, rows in with_lengths.groupby(LM_EVAL.task, sort=True):
        if rows[LM_EVAL.length].nunique() > 1:
            plots.append(_figure(str(task), rows))
    return plots


def _figure(task: str, rows: pd.DataFrame) -> Plot:
    models = list(dict.fromkeys(rows[MODEL]))
    mitigations = list(dict.fromkeys(rows[MITIGATION]))
    colors = matplotlib.colormaps["tab10" if len(models) <= 10 else "tab20"].colors
    figure = Figure(figsize=(7.5, 4.6), layout="constrained")
    axis = figure.subplots()
    for (model, mitigation), line in rows.groupby([MODEL, MITIGATION], sort=False):
        line = line.sort_values(LM_EVAL.length)
        style = mitigations.index(mitigation)
        axis.plot(
            line[LM_EVAL.length].astype(float),
            line["score"],
            color=colors[models.index(model) % len(colors)],
            linestyle=LINE_STYLES[style % len(LINE_STYLES)],
            marker=MARKERS[style % len(MARKERS)],
            alpha=0.85,
            label=f"{model} / {mitigation}",
        )
    token_axis(axis)
    metrics = set(rows["metric"])
    named = "the metric named by the length" if all(m.isdigit() for m in metrics) else None
    ylabel = f"score: mean over documents of\n{named or ', '.join(sorted(metrics))}"
    axis.set(xlabel="length (tokens)", ylabel=ylabel, title=f"lm-eval {task}")
    if rows["score"].between(0.0, 1.0).all():
        axis.set_ylim(-0.04, 1.04)
    axis.legend(fontsize=8)
    return Plot(FIGURE + task, f"lm-eval {task}: score by length", to_png(figure))
