"""The pipeline's paired report (transferkit.evidence.comparison) on hand-built stage folders with known
differences: the mean difference and its interval over seeds against the hand formula, McNemar's counts, the
verdict sentence."""

from __future__ import annotations

import csv
import json
import math

import pytest

from transferkit.errors import TransferKitError
from transferkit.evidence.comparison import compare, write_report

T_975_2DF = 4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom (3 seeds), from a t table
# Per seed: (both right, adapted only right, base only right, both wrong) over 20 test examples
TABLES = {1: (13, 3, 1, 3), 2: (13, 4, 1, 2), 3: (13, 2, 1, 4)}


def prediction_rows(both: int, adapted_only: int, base_only: int, neither: int) -> tuple[list, list]:
    """Rows (text, label, predicted) of the adapted and the base model on the same examples, in the same order."""
    outcomes = [(1, 1)] * both + [(1, 0)] * adapted_only + [(0, 1)] * base_only + [(0, 0)] * neither
    adapted, base = [], []
    for index, (adapted_right, base_right) in enumerate(outcomes):
        gold, wrong = ("positive", "negative") if index % 2 else ("negative", "positive")
        adapted.append((f"review {index}", gold, gold if adapted_right else wrong))
        base.append((f"review {index}", gold, gold if base_right else wrong))
    return adapted, base


def write_run(folder, rows: list) -> dict:
    """A classify run's predictions.csv and all_results.json; returns its metrics."""
    folder.mkdir(parents=True)
    with open(folder / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "predicted", "prob_negative", "prob_positive"])
        for text, gold, predicted in rows:
            writer.writerow([text, gold, predicted, "0.4", "0.6"])
    accuracy = sum(gold == predicted for _, gold, predicted in rows) / len(rows)
    metrics = {"test_accuracy": accuracy, "test_matthews_correlation": 0.0, "test_samples": len(rows)}
    (folder / "all_results.json").write_text(json.dumps(metrics))
    return metrics


def multi_seed_stages(tmp_path, tables: dict) -> tuple[dict, dict]:
    """finetune/ and baseline/ as classify's multi-seed layout: seed-<n>/ runs and the aggregate's per_seed."""
    results, dirs = {}, {}
    for index, stage in enumerate(("finetune", "baseline")):
        per_seed = {
            str(seed): write_run(tmp_path / stage / f"seed-{seed}", prediction_rows(*table)[index])
            for seed, table in tables.items()
        }
        mean = sum(run["test_accuracy"] for run in per_seed.values()) / len(per_seed)
        results[stage] = {
            "test_accuracy": mean,
            "num_seeds": len(per_seed),
            "seeds": list(tables),
            "per_seed": per_seed,
        }
        dirs[stage] = str(tmp_path / stage)
    return results, dirs


def test_paired_report_over_three_seeds_matches_the_hand_computation(tmp_path):
    results, dirs = multi_seed_stages(tmp_path, TABLES)
    report = compare({"adapt": {"eval_perplexity": 12.5}, **results}, dirs, seed=42)
    write_report(str(tmp_path), report)

    # differences per seed: (3-1)/20, (4-1)/20, (2-1)/20 = 0.10, 0.15, 0.05: mean 0.10, std 0.05
    half = T_975_2DF * 0.05 / math.sqrt(3)
    paired = json.loads((tmp_path / "comparison.json").read_text())["paired_over_seeds"]["test_accuracy"]
    assert paired["estimate"] == pytest.approx(0.10) and paired["std"] == pytest.approx(0.05)
    assert (paired["low"], paired["high"], paired["n"]) == (pytest.approx(0.10 - half), pytest.approx(0.10 + half), 3)
    assert report["gain"]["test_accuracy"] == pytest.approx(0.10)
    assert report["seeds"] == [1, 2, 3]

    for seed, (_, adapted_only, base_only, _) in TABLES.items():
        tests = report["per_seed_tests"][str(seed)]
        assert tests["test_examples"] == 20
        assert (tests["mcnemar"]["adapted_only_right"], tests["mcnemar"]["base_only_right"]) == (
            adapted_only,
            base_only,
        )
        bootstrap = tests["bootstrap"]["test_accuracy"]
        assert bootstrap["estimate"] == pytest.approx((adapted_only - base_only) / 20)
        assert bootstrap["low"] <= bootstrap["estimate"] <= bootstrap["high"]
    # exact McNemar, seed 1: 3 against 1 discordant, two-sided P(X <= 1 or X >= 3 | 4 fair coins) = 10/16
    assert report["per_seed_tests"]["1"]["mcnemar"]["p_value"] == pytest.approx(10 / 16)

    sentence = (
        "adaptation changed test accuracy by +10.0 points (95% CI -2.4 to +22.4 over 3 seeds): "
        "not distinguishable from noise"
    )
    assert report["verdict"] == sentence
    markdown = (tmp_path / "comparison.md").read_text()
    assert markdown.startswith(f"# Adapted vs base model\n\n**{sentence}**")
    assert "| test_accuracy | +10.00 | -2.42 to +22.42 | 5.00 | 3 |" in markdown
    assert "| 1 | 20 | 3 | 1 | 0.625 | +10.00 |" in markdown
    assert "| eval_perplexity | 12.5000 |" in markdown


def test_a_difference_whose_interval_leaves_out_zero_is_a_gain(tmp_path):
    results, dirs = multi_seed_stages(tmp_path, {1: (13, 3, 1, 3), 2: (13, 3, 1, 3), 3: (13, 4, 1, 2)})
    report = compare(results, dirs, seed=42)
    assert report["verdict"].endswith("over 3 seeds): a gain"), report["verdict"]


def test_one_seed_gives_the_per_example_tests_and_says_there_is_no_interval_over_seeds(tmp_path):
    adapted, base = prediction_rows(10, 6, 1, 3)
    results = {
        "finetune": write_run(tmp_path / "finetune", adapted),
        "baseline": write_run(tmp_path / "baseline", base),
    }
    report = compare(results, {name: str(tmp_path / name) for name in results}, seed=7)
    assert report["seeds"] == [7] and report["paired_over_seeds"]["test_accuracy"]["low"] is None
    assert report["per_seed_tests"]["7"]["mcnemar"]["adapted_only_right"] == 6
    first, second = report["verdict"].split(". ", 1)
    assert (
        first == "adaptation changed test accuracy by +25.0 points on one seed: no interval can be given from one seed"
    )
    assert second.startswith("On the test examples of seed 7 alone") and "over 20 test examples" in second


def test_predictions_that_are_not_the_same_examples_in_the_same_order_stop_the_report(tmp_path):
    results, dirs = multi_seed_stages(tmp_path, TABLES)
    path = tmp_path / "baseline" / "seed-2" / "predictions.csv"
    lines = path.read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # the base model's rows in another order
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        TransferKitError, match=r"seed-2/predictions.csv are not the same test examples.*line 2 differs"
    ):
        compare(results, dirs, seed=42)

    results["baseline"]["per_seed"].pop("3")
    with pytest.raises(TransferKitError, match=r"finetune stage ran seeds \['1', '2', '3'\] and the baseline"):
        compare(results, dirs, seed=42)
