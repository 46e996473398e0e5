"""Collapse and recall detectors on curves with known answers; the capacity fits."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.detect import (
    PAPER_FORGET,
    PAPER_RECALL,
    CollapseCriterion,
    FitError,
    collapse_length,
    fit_forget,
    fit_recall,
    paper_millions,
    recall_length,
    trailing_mean,
)

T_TRAIN, BUCKET, LENGTH = 2048, 128, 16384
STARTS = np.arange(0, LENGTH, BUCKET)
ENDS = STARTS + BUCKET


def detect(losses: np.ndarray, **criterion: float) -> int | None:
    found = collapse_length(STARTS, ENDS, losses, T_TRAIN, CollapseCriterion(**criterion))
    assert found.searched_to == LENGTH
    return found.length


def curve(base: float = 2.0, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    return base + noise * np.random.default_rng(seed).standard_normal(len(STARTS))


def test_flat_curve_never_collapses() -> None:
    assert detect(curve()) is None
    assert detect(curve(noise=0.1)) is None


def test_step_is_found_where_it_starts() -> None:
    losses = curve(noise=0.05)
    losses[STARTS >= 6144] += 3.0
    assert detect(losses) == 6144
    assert detect(losses, smoothing=BUCKET) == 6144
    assert detect(losses, margin=5.0) is None  # the step is below a 5-nat margin


def test_slow_drift_crosses_at_the_margin() -> None:
    losses = curve() + np.maximum(STARTS - T_TRAIN, 0) / 4096  # +1 nat every 4096 tokens
    # unsmoothed, the first bucket above 2.5 starts after T_train + 2048 tokens
    assert detect(losses, smoothing=BUCKET, margin=0.5) == T_TRAIN + 2048 + BUCKET
    smoothed = detect(losses, smoothing=1024, margin=0.5)
    assert smoothed is not None and T_TRAIN + 2048 < smoothed <= T_TRAIN + 2048 + 1024


def test_a_spike_that_is_not_sustained_is_ignored() -> None:
    losses = curve(noise=0.05, seed=1)
    losses[(STARTS >= 5000) & (STARTS < 5600)] += 4.0  # 5 buckets, 640 tokens
    assert detect(losses, window=1024) is None
    assert detect(losses, window=512) is not None  # long enough for a shorter window
    late = curve()
    late[STARTS >= LENGTH - 512] += 4.0  # starts too near the end to be confirmed
    assert detect(late, window=1024) is None


def test_collapse_inside_the_training_window_is_not_beyond_it() -> None:
    losses = curve()
    losses[(STARTS >= 512) & (STARTS < 1024)] += 3.0
    assert detect(losses) is None


def test_level_is_the_mean_over_the_second_half_of_the_training_window() -> None:
    losses = np.where(STARTS < T_TRAIN // 2, 5.0, 2.0)
    found = collapse_length(STARTS, ENDS, losses, T_TRAIN, CollapseCriterion())
    assert found.level == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no bucket lies in"):
        collapse_length([0], [LENGTH], [2.0], T_TRAIN, CollapseCriterion())


def test_trailing_mean() -> None:
    assert trailing_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist() == [1.0, 2.0, 4.0, 6.0]


@pytest.mark.parametrize(
    ("accuracies", "expected"),
    [
        ([1.0, 1.0, 0.96, 0.5, 0.0], 4096),
        ([1.0, 0.95, 0.94, 0.0, 0.0], 2048),
        ([0.5, 0.0, 0.0, 0.0, 0.0], None),
        ([1.0, 1.0, 1.0, 1.0, 1.0], 16384),
    ],
)
def test_recall_length(accuracies: list[float], expected: int | None) -> None:
    assert recall_length([1024, 2048, 4096, 8192, 16384], accuracies) == expected


def test_recall_threshold_is_settable() -> None:
    assert recall_length([1024, 2048], [1.0, 0.6], threshold=0.5) == 2048


N_S = np.array([1.1, 1.6, 2.4, 4.8, 12.9])


def test_fits_recover_known_coefficients() -> None:
    forget = fit_forget(N_S, 3.0 * N_S - 1.5)
    assert forget.coefficients == pytest.approx({"a": 3.0, "b": -1.5})
    assert forget.r2 == pytest.approx(1.0) and forget.points == 5
    truth = {"a": 1.5, "b": 2.0, "c": 0.25}
    recall = fit_recall(N_S, truth["b"] * (truth["a"] ** N_S - 1) + truth["c"])
    assert recall.coefficients == pytest.approx(truth, rel=1e-6)
    assert recall.r2 == pytest.approx(1.0)


def test_fits_recover_the_paper_curves_from_noisy_points() -> None:
    noise = 1 + 0.01 * np.random.default_rng(0).standard_normal(len(N_S))
    forget = fit_forget(N_S, (PAPER_FORGET["a"] * N_S + PAPER_FORGET["b"]) * noise)
    assert forget.coefficients["a"] == pytest.approx(PAPER_FORGET["a"], rel=0.05)
    a, b, c = PAPER_RECALL.values()
    recall = fit_recall(N_S, (b * (a**N_S - 1) + c) * noise)
    assert recall.coefficients["a"] == pytest.approx(a, rel=0.05)
    assert recall.r2 > 0.99


def test_fits_refuse_fewer_points_than_parameters() -> None:
    with pytest.raises(FitError, match="needs at least 2 distinct state sizes; got 1"):
        fit_forget([4.8], [16.0])
    with pytest.raises(FitError, match="needs at least 2 distinct state sizes; got 1"):
        fit_forget([4.8, 4.8], [16.0, 20.0])
    with pytest.raises(FitError, match="needs at least 3 distinct state sizes; got 2"):
        fit_recall([1.1, 4.8], [1.0, 16.0])


def test_paper_units() -> None:
    assert paper_millions(12_582_912) == pytest.approx(12.88, abs=0.01)  # mamba2-370m: 12.9M
