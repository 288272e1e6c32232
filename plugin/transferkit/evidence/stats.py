"""How sure a figure is: intervals over seeds and over test examples, paired differences, McNemar, a verdict.

One seed's test accuracy moves by a point or two with the seed alone, so a difference between two configurations
means something only next to its spread. Two sources of spread are measured here:
- over seeds (initialisation and data order): a Student-t interval on the mean of a few runs;
- over test examples (a finite test set): a percentile bootstrap (Efron & Tibshirani, "An Introduction to the
  Bootstrap", 1993), and McNemar's test on the examples where two models disagree (McNemar 1947; recommended for
  comparing two classifiers on one test set by Dietterich, "Approximate Statistical Tests for Comparing Supervised
  Classification Learning Algorithms", Neural Computation 1998).

McNemar is computed here with scipy rather than through evaluate's "mcnemar" comparison module: that module lives on
the Hub (unreachable offline) and uses the chi-square approximation, which is poor for the few discordant pairs a
small test set gives; the exact binomial test on the discordant pairs is a single scipy call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from transferkit.errors import TransferKitError

Metric = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval; `low`/`high` are None when it cannot be computed (one seed)."""

    estimate: float  # the mean over seeds, or the metric on all test examples (bootstrap)
    low: float | None
    high: float | None
    n: int  # seeds, or test examples
    confidence: float = 0.95
    std: float | None = None  # sample standard deviation over seeds (ddof=1); None for a bootstrap

    @property
    def over_seeds(self) -> bool:
        """True for an interval over seeds, False for a bootstrap over test examples."""
        return self.std is not None or self.low is None


def accuracy(gold: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(gold == predicted))


def f1_macro(gold: np.ndarray, predicted: np.ndarray) -> float:
    """sklearn's f1_score(average="macro", zero_division=0), from one confusion matrix: ~50x faster per resample."""
    matrix = _confusion_matrix(gold, predicted)
    true_positives = np.diag(matrix)
    return float(np.mean(2 * true_positives / (matrix.sum(axis=0) + matrix.sum(axis=1))))


def matthews_correlation(gold: np.ndarray, predicted: np.ndarray) -> float:
    """sklearn's matthews_corrcoef (Gorodkin's multi-class form), from one confusion matrix."""
    matrix = _confusion_matrix(gold, predicted).astype(float)
    gold_counts, predicted_counts, total = matrix.sum(axis=1), matrix.sum(axis=0), matrix.sum()
    covariance = np.trace(matrix) * total - gold_counts @ predicted_counts
    scale = math.sqrt((total**2 - predicted_counts @ predicted_counts) * (total**2 - gold_counts @ gold_counts))
    return float(covariance / scale) if scale else 0.0


def _confusion_matrix(gold: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts over the classes that occur in gold or predicted (sklearn's default label set)."""
    classes, codes = np.unique(np.concatenate([gold, predicted]), return_inverse=True)
    size = len(classes)
    pairs = codes[: len(gold)] * size + codes[len(gold) :]
    return np.bincount(pairs, minlength=size * size).reshape(size, size)


def subset_accuracy(gold: np.ndarray, predicted: np.ndarray) -> float:
    """Multi-label accuracy from multi-hot rows: a row counts when every label is right (sklearn's accuracy_score)."""
    return float(np.mean(np.all(gold == predicted, axis=1)))


def f1_micro_multi_label(gold: np.ndarray, predicted: np.ndarray) -> float:
    """Micro F1 over every (row, label) cell of multi-hot rows: sklearn's f1_score(average="micro")."""
    gold, predicted = gold.astype(bool), predicted.astype(bool)
    true_positives = np.sum(gold & predicted)
    counted = true_positives * 2 + np.sum(gold & ~predicted) + np.sum(~gold & predicted)
    return float(2 * true_positives / counted) if counted else 0.0


def mean_squared_error(gold: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean((np.asarray(gold, dtype=float) - np.asarray(predicted, dtype=float)) ** 2))


# Single-label metrics from label arrays (ids or names), keyed like the bundled metric module's results
METRICS_FROM_LABELS: dict[str, Metric] = {
    "accuracy": accuracy,
    "f1_macro": f1_macro,
    "matthews_correlation": matthews_correlation,
}


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean over seeds with a Student-t interval: mean +- t_{(1+c)/2, n-1} * std / sqrt(n)."""
    values = np.asarray(values, dtype=float)
    _check(values.size > 0, "seed_interval needs at least one value")
    _check_confidence(confidence)
    mean = float(values.mean())
    if values.size == 1:
        return Interval(mean, None, None, 1, confidence, None)
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, values.size - 1)) * std / math.sqrt(values.size)
    return Interval(mean, mean - half, mean + half, int(values.size), confidence, std)


def paired_seed_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """a - b paired by seed: the same seed shares the split and data order, so its difference cancels them."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    _check(a.shape == b.shape, f"paired_seed_difference: {a.size} values against {b.size}; pair them by seed")
    return seed_interval(a - b, confidence)


def bootstrap_interval(
    gold,
    predicted,
    metric: Metric,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap over test examples: how much the metric would move on another test set this size."""
    gold, predicted = _paired_arrays(gold, predicted)
    samples = [metric(gold[rows], predicted[rows]) for rows in _resampled_rows(len(gold), n_resamples, seed)]
    return _percentile_interval(metric(gold, predicted), samples, len(gold), confidence)


def paired_bootstrap_difference(
    gold,
    predicted_a,
    predicted_b,
    metric: Metric,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """metric(a) - metric(b), both on the same resampled examples, so what the examples share cancels."""
    gold, predicted_a = _paired_arrays(gold, predicted_a)
    _, predicted_b = _paired_arrays(gold, predicted_b)
    samples = [
        metric(gold[rows], predicted_a[rows]) - metric(gold[rows], predicted_b[rows])
        for rows in _resampled_rows(len(gold), n_resamples, seed)
    ]
    estimate = metric(gold, predicted_a) - metric(gold, predicted_b)
    return _percentile_interval(estimate, samples, len(gold), confidence)


def mcnemar(gold, predicted_a, predicted_b) -> dict:
    """Exact McNemar test: are a's and b's errors on the same test examples equally likely to go either way?

    Only the discordant examples count (a right and b wrong: `a_only_right`; the reverse: `b_only_right`). Under
    the null hypothesis each is a fair coin, so the two-sided p-value is scipy's exact binomial test; `statistic`
    is the smaller of the two counts, as in the exact test's usual statement. A multi-label row is right when
    every label is.
    """
    gold, predicted_a = _paired_arrays(gold, predicted_a)
    _, predicted_b = _paired_arrays(gold, predicted_b)
    right_a, right_b = _row_right(gold, predicted_a), _row_right(gold, predicted_b)
    a_only = int(np.sum(right_a & ~right_b))
    b_only = int(np.sum(~right_a & right_b))
    discordant = a_only + b_only
    p_value = 1.0 if discordant == 0 else float(stats.binomtest(a_only, discordant, 0.5).pvalue)
    return {"a_only_right": a_only, "b_only_right": b_only, "statistic": min(a_only, b_only), "p_value": p_value}


def verdict(
    what: str,
    difference: Interval,
    unit_scale: float = 100.0,
    unit: str = "points",
    higher_is_better: bool = True,
) -> str:
    """One plain sentence: the difference, its interval, and whether the interval leaves out zero.

    `what` reads before "by", e.g. "adaptation changed test accuracy". For a metric where lower is better (a loss,
    mse) pass higher_is_better=False, so that a negative difference reads as a gain.
    """
    estimate = difference.estimate * unit_scale
    if difference.low is None or difference.high is None:
        shown = _format_numbers([estimate], unit)
        return f"{what} by {shown[0]} on one seed: no interval can be given from one seed"
    low, high = difference.low * unit_scale, difference.high * unit_scale
    shown_estimate, shown_low, shown_high = _format_numbers([estimate, low, high], unit)
    over = f"{difference.n} seeds" if difference.over_seeds else f"{difference.n} test examples"
    interval = f"{round(difference.confidence * 100):g}% CI {shown_low} to {shown_high} over {over}"
    if low > 0:
        outcome = "a gain" if higher_is_better else "a loss"
    elif high < 0:
        outcome = "a loss" if higher_is_better else "a gain"
    else:
        outcome = "not distinguishable from noise"
    return f"{what} by {shown_estimate} ({interval}): {outcome}"


def _format_numbers(values: list[float], unit: str) -> list[str]:
    """Signed numbers with one shared number of decimals: one for points, more for small raw values."""
    largest = max((abs(value) for value in values if value), default=1.0)
    decimals = max(1, 1 - math.floor(math.log10(largest)))
    shown = [f"{value if round(value, decimals) else 0.0:+.{decimals}f}" for value in values]
    return [f"{shown[0]} {unit}" if unit else shown[0], *shown[1:]]


def _resampled_rows(size: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """One resample's row indices at a time: all of them at once would be n_resamples x size integers (8 GB for
    1,000 resamples of a million test rows)."""
    _check(n_resamples >= 1, f"n_resamples must be >= 1, got {n_resamples}")
    generator = np.random.default_rng(seed)
    for _ in range(n_resamples):
        yield generator.integers(0, size, size=size)


def _percentile_interval(estimate: float, samples: list[float], size: int, confidence: float) -> Interval:
    _check_confidence(confidence)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(np.asarray(samples, dtype=float), [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high), size, confidence, None)


def _paired_arrays(gold, predicted) -> tuple[np.ndarray, np.ndarray]:
    gold, predicted = np.asarray(gold), np.asarray(predicted)
    _check(len(gold) > 0, "no test examples to compute an interval on")
    _check(
        gold.shape == predicted.shape,
        f"gold and predicted differ in shape ({gold.shape} and {predicted.shape}): one prediction per example",
    )
    return gold, predicted


def _row_right(gold: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    right = gold == predicted
    return right.all(axis=tuple(range(1, right.ndim))) if right.ndim > 1 else right


def _check_confidence(confidence: float) -> None:
    _check(0 < confidence < 1, f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise TransferKitError(message)
