"""Units -> jobs: each job holds units of one model (loaded once per job), ordered as the
worker runs them, and jobs are balanced by an estimated cost.

The estimate is for ordering and balancing only: model size x tokens processed, times
(1 + length / ATTENTION_SCALE) for transformers, whose attention makes a token's cost grow
with its position (quadratic in length overall). With one slot, each model is one job (one
load); with more, a model's units are split into jobs of about total / (2 x slots) so that
the slots stay busy, and jobs are handed out largest first. With the early stop on, a
(model, mitigation, task) series is never split: it must run in ascending length on one
worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import groupby

from harness.models.loading import WEIGHT_PATTERNS, ModelSource
from harness.plan import Unit
from harness.runner import length_of, series_key

ATTENTION_SCALE = 8192  # tokens at which attention costs about as much as the rest (~6 d_model)
FLOAT_BYTES = 4  # weights on disk per parameter, for local checkpoints (float32)
UNKNOWN_SIZE = 1e8  # parameters assumed where nothing tells (a hub model without a config)
TINY_SIZE = 1e5  # the built-in random-weight tiny models


def model_size(source: ModelSource) -> float:
    """Parameters, from the catalog, the weight files, or the config's shape."""
    if source.spec is not None:
        return float(source.spec.params)
    if source.path is not None:
        files = {f for pattern in WEIGHT_PATTERNS for f in source.path.glob(pattern)}
        return sum(f.stat().st_size for f in files) / FLOAT_BYTES or UNKNOWN_SIZE
    config = source.config
    width = config.get("hidden_size", config.get("d_model"))
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    if width and layers:
        return 12.0 * layers * width**2
    return TINY_SIZE if not config and source.repo is None else UNKNOWN_SIZE


def unit_cost(unit: Unit) -> float:
    work = model_size(unit.model) * unit.task.cost(unit.params)
    if unit.model.family == "transformer":
        work *= 1 + length_of(unit) / ATTENTION_SCALE
    return work


def order(units: Sequence[Unit]) -> list[Unit]:
    """As the worker runs them: by model and mitigation as planned, then task, then length."""
    models = _first_seen(u.model.name for u in units)
    mitigations = _first_seen(u.mitigation.spec for u in units)
    tasks = _first_seen(u.task.name for u in units)
    return sorted(
        units,
        key=lambda u: (
            models[u.model.name],
            mitigations[u.mitigation.spec],
            tasks[u.task.name],
            length_of(u),
        ),
    )


def _first_seen(values: Iterable[str]) -> dict[str, int]:
    seen: dict[str, int] = {}
    for value in values:
        seen.setdefault(value, len(seen))
    return seen


def pack(units: Sequence[Unit], slots: int, keep_series: bool) -> list[list[Unit]]:
    """Jobs of units (one model each); see the module's docstring."""
    ordered = order(units)
    costs = {u.id: unit_cost(u) for u in ordered}
    cap = sum(costs.values()) / (2 * slots) if slots > 1 else float("inf")
    jobs: list[list[Unit]] = []
    for _, model_units in groupby(ordered, key=lambda u: u.model.name):
        blocks = (
            [list(s) for _, s in groupby(model_units, key=series_key)]
            if keep_series
            else [[u] for u in model_units]
        )
        current: list[Unit] = []
        for block in blocks:
            block_cost = sum(costs[u.id] for u in block)
            if current and sum(costs[u.id] for u in current) + block_cost > cap:
                jobs.append(current)
                current = []
            current += block
        jobs.append(current)
    if slots > 1:
        jobs.sort(key=lambda job: -sum(costs[u.id] for u in job))
    return jobs
