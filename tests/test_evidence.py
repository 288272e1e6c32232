"""transferkit.evidence.stats against hand computations: the Student-t interval over seeds, the bootstrap over test
examples, the exact McNemar test, the label metrics (against sklearn) and the verdict's sentences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from transferkit.errors import TransferKitError
from transferkit.evidence.stats import (
    METRICS_FROM_LABELS,
    Interval,
    accuracy,
    bootstrap_interval,
    f1_micro_multi_label,
    mcnemar,
    mean_squared_error,
    paired_bootstrap_difference,
    paired_seed_difference,
    seed_interval,
    subset_accuracy,
    verdict,
)

T_975_2 = 4.302652729911275  # Student t, 97.5th percentile, 2 degrees of freedom (statistical tables: 4.303)
T_975_1 = 12.706204736174707  # 1 degree of freedom (tables: 12.706)


def test_seed_interval_by_hand():
    interval = seed_interval([0.80, 0.82, 0.84])
    # mean 0.82; std sqrt(((-0.02)^2 + 0 + 0.02^2) / 2) = 0.02; half width 4.3027 * 0.02 / sqrt(3) = 0.04968
    assert interval.estimate == pytest.approx(0.82)
    assert interval.std == pytest.approx(0.02)
    assert interval.low == pytest.approx(0.82 - 0.049683, abs=1e-6)
    assert interval.high == pytest.approx(0.82 + 0.049683, abs=1e-6)
    assert (interval.n, interval.confidence) == (3, 0.95)


def test_seed_interval_two_seeds_and_other_confidence():
    interval = seed_interval([1.0, 3.0])  # mean 2, std sqrt(2), half width t * sqrt(2) / sqrt(2) = t
    assert (interval.low, interval.high) == pytest.approx((2 - T_975_1, 2 + T_975_1))
    narrower = seed_interval([0.80, 0.82, 0.84], confidence=0.90)  # t_{0.95, 2} = 2.919986
    assert narrower.high - narrower.estimate == pytest.approx(2.919986 * 0.02 / math.sqrt(3), abs=1e-6)


def test_one_seed_has_no_interval():
    interval = seed_interval([0.83])
    assert interval == Interval(0.83, None, None, 1, 0.95, None)
    with pytest.raises(TransferKitError):
        seed_interval([])


def test_paired_seed_difference_is_the_interval_of_the_differences():
    difference = paired_seed_difference([0.85, 0.80, 0.83], [0.84, 0.78, 0.80])  # differences 0.01, 0.02, 0.03
    half = T_975_2 * 0.01 / math.sqrt(3)
    assert (difference.estimate, difference.std) == pytest.approx((0.02, 0.01))
    assert (difference.low, difference.high) == pytest.approx((0.02 - half, 0.02 + half))
    with pytest.raises(TransferKitError, match="pair them by seed"):
        paired_seed_difference([0.8, 0.9], [0.8])


def test_bootstrap_of_a_perfect_classifier_is_one_to_one():
    gold = np.array(["neg", "pos"] * 20)
    interval = bootstrap_interval(gold, gold.copy(), accuracy)
    assert (interval.estimate, interval.low, interval.high, interval.n, interval.std) == (1.0, 1.0, 1.0, 40, None)


def test_bootstrap_is_reproducible_with_its_seed_and_narrows_with_more_examples():
    def three_quarters_right(n: int) -> tuple[np.ndarray, np.ndarray]:
        gold = np.arange(n) % 2
        predicted = gold.copy()
        predicted[::4] = 1 - predicted[::4]
        return gold, predicted

    gold, predicted = three_quarters_right(400)
    first = bootstrap_interval(gold, predicted, accuracy, n_resamples=4000, seed=3)
    assert first == bootstrap_interval(gold, predicted, accuracy, n_resamples=4000, seed=3)
    assert first != bootstrap_interval(gold, predicted, accuracy, n_resamples=4000, seed=4)
    assert first.estimate == 0.75
    # the normal approximation: 2 * 1.96 * sqrt(0.75 * 0.25 / 400) = 0.0849 wide
    assert first.high - first.low == pytest.approx(2 * 1.96 * math.sqrt(0.75 * 0.25 / 400), rel=0.12)
    small = bootstrap_interval(*three_quarters_right(40), accuracy, n_resamples=4000, seed=3)
    large = bootstrap_interval(*three_quarters_right(4000), accuracy, n_resamples=1000, seed=3)
    assert small.high - small.low > first.high - first.low > large.high - large.low


def test_paired_bootstrap_difference():
    gold = np.arange(200) % 3
    base = gold.copy()
    base[:40] = (base[:40] + 1) % 3  # 40 errors
    better = base.copy()
    better[:10] = gold[:10]  # the same errors less 10: a is never worse on any example
    difference = paired_bootstrap_difference(gold, better, base, accuracy, seed=0)
    assert difference.estimate == pytest.approx(10 / 200)
    assert 0 < difference.low <= difference.estimate <= difference.high
    same = paired_bootstrap_difference(gold, base, base.copy(), accuracy)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)


def test_mcnemar_against_the_binomial_by_hand():
    # 30 examples: both right on 15, both wrong on 5, only a right on 8, only b right on 2
    gold = np.zeros(30, dtype=int)
    a = np.array([0] * 15 + [1] * 5 + [0] * 8 + [1] * 2)
    b = np.array([0] * 15 + [1] * 5 + [1] * 8 + [0] * 2)
    result = mcnemar(gold, a, b)
    # two-sided exact: 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert result["a_only_right"] == 8 and result["b_only_right"] == 2 and result["statistic"] == 2
    assert result["p_value"] == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert mcnemar(gold, b, a)["p_value"] == pytest.approx(result["p_value"])  # symmetric
    assert mcnemar(gold, a, a)["p_value"] == 1.0  # no discordant pair
    multi_gold = np.array([[1, 0], [1, 1], [0, 1]])
    multi_a = np.array([[1, 0], [1, 1], [0, 0]])  # right, right, wrong (one label off)
    multi_b = np.array([[1, 1], [1, 1], [0, 1]])  # wrong, right, right
    assert mcnemar(multi_gold, multi_a, multi_b)["a_only_right"] == 1
    with pytest.raises(TransferKitError, match="shape"):
        mcnemar(gold, a[:10], b)


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_label_metrics_match_sklearn(classes):
    rng = np.random.default_rng(classes)
    gold = rng.integers(0, classes, 300)
    predicted = np.where(rng.random(300) < 0.6, gold, rng.integers(0, classes + 1, 300))  # an extra class too
    names = np.array([f"label-{i}" for i in range(classes + 1)])
    for g, p in ((gold, predicted), (names[gold], names[predicted])):  # ids or label names
        assert METRICS_FROM_LABELS["accuracy"](g, p) == pytest.approx(accuracy_score(g, p))
        assert METRICS_FROM_LABELS["f1_macro"](g, p) == pytest.approx(f1_score(g, p, average="macro", zero_division=0))
        assert METRICS_FROM_LABELS["matthews_correlation"](g, p) == pytest.approx(matthews_corrcoef(g, p))


def test_multi_label_and_regression_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    gold = rng.random((50, 4)) < 0.4
    predicted = np.where(rng.random((50, 4)) < 0.8, gold, ~gold)
    assert subset_accuracy(gold, predicted) == pytest.approx(accuracy_score(gold, predicted))
    assert f1_micro_multi_label(gold, predicted) == pytest.approx(f1_score(gold, predicted, average="micro"))
    assert mean_squared_error(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == pytest.approx(2.5)


def test_verdict_says_noise_gain_loss_and_one_seed():
    what = "adaptation changed test accuracy"
    assert verdict(what, Interval(0.006, -0.002, 0.014, 5, std=0.01)) == (
        "adaptation changed test accuracy by +0.6 points (95% CI -0.2 to +1.4 over 5 seeds): "
        "not distinguishable from noise"
    )
    assert verdict(what, Interval(0.012, 0.004, 0.020, 5, std=0.01)).endswith(
        "by +1.2 points (95% CI +0.4 to +2.0 over 5 seeds): a gain"
    )
    assert verdict(what, Interval(-0.012, -0.020, -0.004, 3, std=0.01)).endswith(": a loss")
    lower_is_better = verdict("mse changed", Interval(-0.5, -0.8, -0.2, 3, std=0.1), 1.0, "", higher_is_better=False)
    assert lower_is_better == "mse changed by -0.50 (95% CI -0.80 to -0.20 over 3 seeds): a gain"
    one = verdict(what, seed_interval([0.006]))
    assert one == f"{what} by +0.60 points on one seed: no interval can be given from one seed"
    bootstrap = verdict(what, Interval(0.05, 0.02, 0.08, 1276))  # std None: a bootstrap over test examples
    assert bootstrap.endswith("(95% CI +2.0 to +8.0 over 1276 test examples): a gain")
