"""From a results folder to a Leaderboard: load, resolve clashing settings, aggregate, draw.

A section is left out when its table, or a column it needs, is absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from harness.leaderboard import figures, lm_eval, tables
from harness.leaderboard.columns import (
    CELLS,
    FACTS,
    FIT_COLUMNS,
    LM_EVAL,
    MODEL,
    PASSKEY,
    PERPLEXITY,
    ROW,
    STATE_CAPACITY,
    STATE_STATS,
)
from harness.leaderboard.conflicts import resolve
from harness.leaderboard.figures import Plot
from harness.leaderboard.identities import label_models
from harness.leaderboard.load import load_results
from harness.leaderboard.options import Options


@dataclass
class Leaderboard:
    source: Path
    options: Options
    main: pd.DataFrame  # one row per (model, mitigation), numeric
    failures: pd.DataFrame  # one row per unit with status != ok
    fits: pd.DataFrame  # cross-model rows (state-capacity fits), FIT_COLUMNS
    plots: dict[str, list[Plot]]  # model -> its figures
    overview: list[Plot]  # figures of every model together (the passkey length cliff)
    warnings: list[str]
    chance: float = math.nan  # key log-probability of a uniform guess (NaN: no passkey keys)
    created: datetime = field(default_factory=lambda: datetime.now(UTC))


def build(root: Path, options: Options, draw: bool = True) -> Leaderboard:
    """The leaderboard of every result under `root` (NoResultsError when there is none);
    without `draw`, the tables only."""
    results = load_results(root)
    labelled = label_models(results.tables)
    warnings = [*results.problems, *labelled.warnings]
    resolved = {}
    for name, frame in labelled.tables.items():
        if name in CELLS:
            outcome = resolve(frame, name)
            resolved[name] = outcome.rows
            warnings += outcome.warnings
    everything = list(labelled.tables.values())
    facts = tables.first_valid(everything, FACTS)
    contexts = tables.train_contexts(facts)
    failed = tables.failures(labelled.tables)
    behind_numbers = tables.provenance(resolved.values(), results.device_names)
    warnings += tables.mixed_dtypes(behind_numbers)
    every_unit = tables.provenance(everything, results.device_names)  # rows whose units all failed
    provenance = pd.concat([behind_numbers, every_unit]).drop_duplicates(list(ROW))
    columns = [
        facts,
        *sections(resolved, labelled.tables, contexts, options, warnings),
        tables.row_status(labelled.tables, failed),
        provenance,
    ]
    main = tables.main_table(tables.row_keys(everything), columns)
    models = main[MODEL].unique() if draw else []
    plots = {model: model_plots(model, resolved, contexts) for model in models}
    overview = overview_plots(resolved, contexts, warnings) if draw else []
    fits = results.combined.reindex(columns=list(FIT_COLUMNS))
    drawn = {m: p for m, p in plots.items() if p}
    passkey = resolved.get(PASSKEY.table)
    chance = tables.chance_logprob(passkey) if passkey is not None else math.nan
    return Leaderboard(root, options, main, failed, fits, drawn, overview, warnings, chance)


def sections(
    resolved: dict[str, pd.DataFrame],
    raw: dict[str, pd.DataFrame],
    contexts: pd.Series,
    options: Options,
    warnings: list[str],
) -> list[pd.DataFrame]:
    """The main table's passkey, perplexity and state-capacity columns, where available."""
    found = []
    passkey = resolved.get(PASSKEY.table)
    if usable(passkey, PASSKEY.table, [PASSKEY.correct], warnings):
        raw_passkey = raw[PASSKEY.table]
        found.append(tables.passkey_columns(passkey, raw_passkey, options.threshold))
    losses = perplexity_losses(resolved, warnings)
    if losses is not None:
        found.append(tables.perplexity_columns(losses, contexts, options.positions))
    capacity = resolved.get(STATE_CAPACITY.table)
    lengths = [STATE_CAPACITY.collapse_length, STATE_CAPACITY.recall_length]
    if capacity is not None and any(c in capacity.columns for c in lengths):
        found.append(tables.capacity_columns(capacity))
    scores = lm_eval_scores(resolved, warnings)
    if scores is not None:
        found.append(lm_eval.columns(scores))
    return found


def lm_eval_scores(resolved: dict[str, pd.DataFrame], warnings: list[str]) -> pd.DataFrame | None:
    """Per (model, mitigation, lm-eval task, length): the score over its documents."""
    needed = [LM_EVAL.task, LM_EVAL.length, LM_EVAL.metrics]
    rows = resolved.get(LM_EVAL.table)
    if not usable(rows, LM_EVAL.table, needed, warnings) or rows is None or not len(rows):
        return None
    return lm_eval.scores(rows)


def usable(frame: pd.DataFrame | None, table: str, needed: list[str], warnings: list[str]) -> bool:
    """Whether a resolved table is present with the columns a section needs."""
    if frame is None:
        return False
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        warnings.append(f"{table}: section left out, no column {', '.join(missing)}")
    return not missing


def perplexity_losses(
    resolved: dict[str, pd.DataFrame], warnings: list[str]
) -> pd.DataFrame | None:
    rows = resolved.get(PERPLEXITY.table)
    if rows is None:
        return None
    losses = tables.bucket_losses(rows)
    if losses is None:
        needed = f"{PERPLEXITY.start}, {PERPLEXITY.end}, {PERPLEXITY.mean_loss}"
        warnings.append(f"{PERPLEXITY.table}: section left out, it needs columns {needed}")
    return losses


def model_context(contexts: pd.Series, model: str) -> float:
    own = contexts[contexts.index.get_level_values(MODEL) == model].dropna()
    return float(own.iloc[0]) if len(own) else math.nan


def overview_plots(
    resolved: dict[str, pd.DataFrame], contexts: pd.Series, warnings: list[str]
) -> list[Plot]:
    """Passkey accuracy and key log-probability of every model against length over its
    training length, when the passkey table has results; each lm-eval task's score by length."""
    scores = lm_eval_scores(resolved, [])
    by_task = lm_eval.figures(scores) if scores is not None else []
    passkey = resolved.get(PASSKEY.table)
    if passkey is None or not len(passkey) or PASSKEY.correct not in passkey.columns:
        return by_task
    points = tables.cliff_points(passkey, contexts)
    left_out = sorted(set(passkey[MODEL]) - set(points[MODEL]))
    if left_out:
        warnings.append(
            "passkey by length over the training length: left out "
            + ", ".join(left_out)
            + " (training length unknown)"
        )
    if not len(points):
        return by_task
    return [figures.length_cliff(points, tables.chance_logprob(passkey)), *by_task]


def model_plots(model: str, resolved: dict[str, pd.DataFrame], contexts: pd.Series) -> list[Plot]:
    """The figures of one model that its results allow: heatmap, loss curves, state norms."""
    context = model_context(contexts, model)
    own = {name: frame[frame[MODEL] == model] for name, frame in resolved.items()}
    plots = []
    passkey = own.get(PASSKEY.table)
    if passkey is not None and len(passkey) and PASSKEY.depth in passkey.columns:
        plots.append(figures.passkey_heatmap(model, tables.passkey_heatmaps(passkey)))
    losses = tables.bucket_losses(own[PERPLEXITY.table]) if PERPLEXITY.table in own else None
    if losses is not None and len(losses):
        plots.append(figures.loss_by_position(model, tables.loss_curves(losses), context))
    stats = own.get(STATE_STATS.table)
    norms = tables.head_norms(stats) if stats is not None and len(stats) else None
    choice = tables.heads_to_draw(stats, norms, context) if norms is not None else None
    if choice is not None and choice.heads:
        plots.append(figures.state_norms(model, norms, choice, context))
    return plots
