"""State capacity from measurements (paper-notes.md sections 2 and 4): where a loss curve
collapses, how long passkey retrieval holds, and the paper's two fits against state size.

Pure functions over numbers: no model, no file.

- Collapse length: the first position beyond the training length from which the smoothed
  loss stays above the in-context level (mean loss over [T_train/2, T_train]) plus `margin`
  nats, for at least `window` tokens. Smoothing is a trailing moving average over `smoothing`
  tokens, so a detection never precedes the change it reports. An excess that starts less
  than `window` tokens before the end of the curve is not confirmed.
- Recall length: the largest length whose passkey accuracy is at least `threshold`
  (the paper's 95%).
- Fits, in the paper's units (T in K = 1024 tokens, N_S in M state elements as the paper
  counts them, see `paper_millions`):
  forget threshold T_forget = a * N_S + b, recall capacity T_recall = b * (a^N_S - 1) + c.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

PAPER_FORGET = {"a": 5.172, "b": -4.469}  # T_forget = a * N_S + b
PAPER_RECALL = {"a": 1.365, "b": 4.756, "c": -0.742}  # T_recall = b * (a^N_S - 1) + c
PAPER_STATE_UNIT = 1e6 / 1.024  # the paper's sizes are 1.024x ours (paper-notes.md section 1)
K_TOKENS = 1024  # tokens per K in the fits
GOLDEN = (math.sqrt(5) - 1) / 2


class FitError(ValueError):
    """Too few or degenerate points for a fit."""


@dataclass(frozen=True)
class CollapseCriterion:
    margin: float = 0.5  # nats above the in-context level
    window: int = 1024  # tokens the excess must last
    smoothing: int = 256  # tokens of the trailing moving average


@dataclass(frozen=True)
class Collapse:
    length: int | None  # first position of the sustained excess; None: no collapse seen
    level: float  # in-context level (mean loss over [T_train/2, T_train])
    searched_to: int  # end of the curve


@dataclass(frozen=True)
class Fit:
    name: str  # forget | recall
    coefficients: dict[str, float]
    r2: float
    points: int


def paper_millions(state_size: int) -> float:
    """A state size in M elements as the paper counts them (to reuse its coefficients)."""
    return state_size / PAPER_STATE_UNIT


def paper_forget(n_s: float) -> float:
    """The paper's T_forget(N_S), K tokens."""
    return PAPER_FORGET["a"] * n_s + PAPER_FORGET["b"]


def paper_recall(n_s: float) -> float:
    """The paper's T_recall(N_S), K tokens."""
    return PAPER_RECALL["b"] * (PAPER_RECALL["a"] ** n_s - 1) + PAPER_RECALL["c"]


def in_context_level(
    starts: np.ndarray, ends: np.ndarray, losses: np.ndarray, train_context: int
) -> float:
    """Mean loss of the buckets whose middle lies in [T_train/2, T_train]."""
    middle = (starts + ends) / 2
    inside = (middle >= train_context / 2) & (middle <= train_context)
    if not inside.any():
        raise ValueError(
            f"no bucket lies in [{train_context // 2}, {train_context}] (the in-context "
            f"window); use buckets smaller than {train_context // 2} tokens or a longer curve"
        )
    return float(losses[inside].mean())


def trailing_mean(values: np.ndarray, width: int) -> np.ndarray:
    """out[i] = mean of values[max(0, i - width + 1) : i + 1]."""
    sums = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    index = np.arange(1, len(values) + 1)
    low = np.maximum(index - width, 0)
    return (sums[index] - sums[low]) / (index - low)


def collapse_length(
    starts: Sequence[int],
    ends: Sequence[int],
    losses: Sequence[float],
    train_context: int,
    criterion: CollapseCriterion,
) -> Collapse:
    """Where a bucketed loss curve (bucket [starts[i], ends[i]) has mean losses[i]) collapses."""
    start, end, loss = (np.asarray(v) for v in (starts, ends, losses))
    level = in_context_level(start, end, loss, train_context)
    width = max(1, round(criterion.smoothing / float(np.median(end - start))))
    above = trailing_mean(loss.astype(np.float64), width) > level + criterion.margin
    i = 0
    while i < len(start):
        if start[i] < train_context or not above[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(start) and above[j + 1]:
            j += 1
        if end[j] - start[i] >= criterion.window:
            return Collapse(int(start[i]), level, int(end[-1]))
        i = j + 1
    return Collapse(None, level, int(end[-1]))


def recall_length(
    lengths: Sequence[int], accuracies: Sequence[float], threshold: float = 0.95
) -> int | None:
    """The largest length with accuracy >= threshold; None when no length reaches it."""
    passed = [n for n, acc in zip(lengths, accuracies, strict=True) if acc >= threshold]
    return max(passed) if passed else None


def r_squared(y: np.ndarray, predicted: np.ndarray) -> float:
    residual = float(((y - predicted) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    if total == 0:
        return 1.0 if residual == 0 else math.nan
    return 1 - residual / total


def _points(
    x: Sequence[float], y: Sequence[float], needed: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xs) != len(ys):
        raise FitError(f"{name} fit: {len(xs)} state sizes but {len(ys)} lengths")
    if len(np.unique(xs)) < needed:
        raise FitError(
            f"{name} fit has {needed} parameters and needs at least {needed} distinct state "
            f"sizes; got {len(np.unique(xs))}"
        )
    return xs, ys


def fit_forget(n_s: Sequence[float], t_forget: Sequence[float]) -> Fit:
    """Least squares T_forget = a * N_S + b."""
    x, y = _points(n_s, t_forget, 2, "forget")
    design = np.stack([x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    return Fit("forget", {"a": float(a), "b": float(b)}, r_squared(y, design @ [a, b]), len(x))


def fit_recall(n_s: Sequence[float], t_recall: Sequence[float]) -> Fit:
    """Least squares T_recall = b * (a^N_S - 1) + c with a > 1.

    For a fixed a the model is linear in (b, c), so the fit searches log a alone (a log grid,
    then golden-section refinement) and solves (b, c) exactly at each step.
    """
    x, y = _points(n_s, t_recall, 3, "recall")
    highest = 700.0 / max(float(np.abs(x).max()), 1e-12)  # a^N_S stays finite
    grid = np.geomspace(1e-6, highest, 400)
    residuals = [_linear_part(x, y, r)[1] for r in grid]
    best = int(np.argmin(residuals))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    rate = _golden_minimum(lambda r: _linear_part(x, y, r)[1], low, high)
    (b, c), _ = _linear_part(x, y, rate)
    predicted = b * np.expm1(rate * x) + c
    coefficients = {"a": math.exp(rate), "b": b, "c": c}
    return Fit("recall", coefficients, r_squared(y, predicted), len(x))


def _linear_part(x: np.ndarray, y: np.ndarray, rate: float) -> tuple[tuple[float, float], float]:
    """For a = e^rate: the least-squares (b, c) and the residual sum of squares."""
    design = np.stack([np.expm1(rate * x), np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = float(((design @ coef - y) ** 2).sum())
    return (float(coef[0]), float(coef[1])), residual


def _golden_minimum(f: Callable[[float], float], low: float, high: float) -> float:
    """The minimum of a unimodal f on [low, high], to a relative tolerance of 1e-12."""
    a, b = low, high
    while b - a > 1e-12 * max(abs(b), 1e-300):
        c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
        if f(c) < f(d):
            b = d
        else:
            a = c
    return (a + b) / 2
