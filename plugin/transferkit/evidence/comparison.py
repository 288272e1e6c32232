"""What the adaptation bought: the pipeline's report of the model finetuned from the adapted encoder against the
same finetuning from the base model (comparison.json / comparison.md).

One seed's test accuracy moves by a point or two with the seed alone, so the report pairs the two stages twice:
- over seeds: both classify stages ran on the same seeds and split, so each seed gives one difference (adapted -
  base) in which the split and the data order cancel; their mean gets a Student-t interval (`paired_seed_difference`);
- over the test examples of each seed: McNemar's exact test on the examples where the two models disagree, and a
  paired bootstrap interval of the difference (Dietterich, "Approximate Statistical Tests for Comparing Supervised
  Classification Learning Algorithms", Neural Computation 1998). These read both stages' predictions.csv row by row,
  so the rows must be the same examples in the same order: the report stops if they are not.
The headline is one sentence for test accuracy (`stats.verdict`): a gain, a loss, or not distinguishable from noise.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict

import numpy as np

from transferkit.errors import TransferKitError
from transferkit.evidence.stats import (
    METRICS_FROM_LABELS,
    Interval,
    mcnemar,
    paired_bootstrap_difference,
    paired_seed_difference,
    verdict,
)

REPORTED = ("test_accuracy", "test_f1_macro", "test_matthews_correlation", "eval_accuracy", "eval_perplexity")
# Paired over seeds where the runs report them: single-label, multi-label (f1_micro) and regression (mse, r) metrics
PAIRED = ("test_accuracy", "test_f1_macro", "test_matthews_correlation", "test_f1_micro", "test_mse", "test_pearsonr")
HEADLINE = "test_accuracy"
NOT_COMPARED = ("predicted", "score")  # predictions.csv columns that may differ between the stages; prob_* too


def stage_row(name: str, metrics: dict) -> dict:
    """One stage's reported figures (means over seeds for a multi-seed stage). The adapt stage's eval_accuracy is
    masked-token (or next-token) accuracy, so it gets its own row, never to be read against the classifiers'."""
    keys = (*REPORTED, "num_seeds", "train_runtime", "stage_seconds")
    row = {key: metrics[key] for key in keys if metrics.get(key) is not None}
    if name == "adapt" and "eval_accuracy" in row:
        row["eval_token_accuracy"] = row.pop("eval_accuracy")
    return row


def compare(results: dict[str, dict], stage_dirs: dict[str, str], seed: int) -> dict:
    """The report: each stage's row, the mean gain, and with a baseline the paired tests and the verdict.
    `seed` names the run of a single-seed stage (a multi-seed stage lists its seeds in its results)."""
    report = {name: stage_row(name, metrics) for name, metrics in results.items()}
    if "baseline" not in results:
        return report
    adapted, base = results["finetune"], results["baseline"]
    report["gain"] = {key: adapted[key] - base[key] for key in REPORTED if key in adapted and key in base}
    adapted_seeds, base_seeds = seed_results(adapted, seed), seed_results(base, seed)
    if list(adapted_seeds) != list(base_seeds):
        raise TransferKitError(
            f"The finetune stage ran seeds {list(adapted_seeds)} and the baseline {list(base_seeds)}: the comparison "
            "pairs them by seed. Delete the stage folder whose seeds are out of date and rerun the pipeline."
        )
    report["seeds"] = [int(name) for name in adapted_seeds]
    report["paired_over_seeds"] = paired_over_seeds(list(adapted_seeds.values()), list(base_seeds.values()))
    if single_label(next(iter(adapted_seeds.values()))):
        report["per_seed_tests"] = {
            name: per_example_tests(
                seed_dir(stage_dirs["finetune"], name, adapted), seed_dir(stage_dirs["baseline"], name, base)
            )
            for name in adapted_seeds
        }
    if HEADLINE in report["paired_over_seeds"]:
        report["verdict"] = headline(report)
    return report


def paired_over_seeds(adapted: list[dict], base: list[dict]) -> dict[str, dict]:
    """Each test metric's mean difference adapted - base with its interval, seed by seed (same order)."""
    keys = [key for key in PAIRED if not (key == "test_f1_micro" and single_label(adapted[0]))]  # = its accuracy
    shared = [key for key in keys if all(key in run for run in (*adapted, *base))]
    return {
        key: asdict(paired_seed_difference([run[key] for run in adapted], [run[key] for run in base])) for key in shared
    }


def seed_results(metrics: dict, seed: int) -> dict[str, dict]:
    """Each seed's metrics by seed: a multi-seed stage's `per_seed`, else the stage's own under `seed`."""
    if "per_seed" in metrics:
        return {str(name): figures for name, figures in metrics["per_seed"].items()}
    return {str(seed): metrics}


def seed_dir(stage_dir: str, seed: str, metrics: dict) -> str:
    """A multi-seed stage keeps each seed's run in seed-<n>/; a single-seed stage is one run in its folder."""
    return os.path.join(stage_dir, f"seed-{seed}") if "per_seed" in metrics else stage_dir


def single_label(metrics: dict) -> bool:
    """McNemar and the bootstrap here compare single labels (the runs that report MCC); multi-label and regression
    runs get the paired intervals over seeds only."""
    return "test_matthews_correlation" in metrics


def per_example_tests(adapted_dir: str, base_dir: str) -> dict:
    """McNemar and paired bootstrap intervals (adapted - base) over one seed's test examples."""
    gold, adapted, base = matched_predictions(
        os.path.join(adapted_dir, "predictions.csv"), os.path.join(base_dir, "predictions.csv")
    )
    test = mcnemar(gold, adapted, base)
    return {
        "test_examples": len(gold),
        "mcnemar": {
            "adapted_only_right": test["a_only_right"],
            "base_only_right": test["b_only_right"],
            "p_value": test["p_value"],
        },
        "bootstrap": {
            f"test_{name}": asdict(paired_bootstrap_difference(gold, adapted, base, metric))
            for name, metric in METRICS_FROM_LABELS.items()
        },
    }


def matched_predictions(adapted_csv: str, base_csv: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gold labels and both stages' predictions for the rows both predicted, after checking that the two files
    hold the same examples in the same order (text and label columns equal row by row)."""
    adapted_rows, base_rows = _read_rows(adapted_csv), _read_rows(base_csv)
    if len(adapted_rows) != len(base_rows):
        raise _mismatch(adapted_csv, base_csv, f"{len(adapted_rows)} rows against {len(base_rows)}")
    for number, (row_a, row_b) in enumerate(zip(adapted_rows, base_rows), start=2):  # line 1 is the header
        compared = [column for column in row_a if column not in NOT_COMPARED and not column.startswith("prob_")]
        differing = [column for column in compared if row_a[column] != row_b.get(column)]
        if differing or bool(row_a["predicted"]) != bool(row_b["predicted"]):
            column = differing[0] if differing else "predicted"
            shown = f"{row_a[column]!r} against {row_b.get(column)!r}"
            raise _mismatch(adapted_csv, base_csv, f"line {number} differs in '{column}' ({shown})")
    kept = [(row_a, row_b) for row_a, row_b in zip(adapted_rows, base_rows) if row_a["predicted"]]
    if not kept:
        raise TransferKitError(f"{adapted_csv} has no predicted row with a label: nothing to compare.")
    return tuple(np.array(values) for values in zip(*[(a["label"], a["predicted"], b["predicted"]) for a, b in kept]))


def _read_rows(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise TransferKitError(
            f"{path} is missing: the comparison reads both classify stages' test predictions (keep do_predict and "
            "a test split: test_file or test_split_percentage)."
        )
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"label", "predicted"} <= set(rows[0]):
        raise TransferKitError(f"{path} has no 'label' and 'predicted' columns: the test split needs its labels.")
    return rows


def _mismatch(adapted_csv: str, base_csv: str, what: str) -> TransferKitError:
    return TransferKitError(
        f"{adapted_csv} and {base_csv} are not the same test examples in the same order: {what}. Both stages must "
        "carve the same split (the same split_seed, or seed, and data options); delete the stage folder that "
        "differs and rerun the pipeline."
    )


def headline(report: dict) -> str:
    """The verdict on test accuracy over seeds; from one seed, also what that seed's test examples alone say."""
    difference = Interval(**report["paired_over_seeds"][HEADLINE])
    sentence = verdict("adaptation changed test accuracy", difference)
    if difference.n == 1 and report.get("per_seed_tests"):
        (seed, tests), *_ = report["per_seed_tests"].items()
        what = f"On the test examples of seed {seed} alone (seeds vary too), adaptation changed test accuracy"
        sentence += ". " + verdict(what, Interval(**tests["bootstrap"][HEADLINE]))
    return sentence


def write_report(output_dir: str, report: dict) -> None:
    """comparison.json, and comparison.md: the verdict first, then the tables."""
    with open(os.path.join(output_dir, "comparison.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    with open(os.path.join(output_dir, "comparison.md"), "w", encoding="utf-8") as handle:
        handle.write("\n\n".join(["# Adapted vs base model", *_verdict(report), *tables(report)]) + "\n")


def console_summary(report: dict) -> str:
    """The tables, then the verdict: the last thing a run prints."""
    return "\n\n".join([*tables(report), *([report["verdict"]] if report.get("verdict") else [])])


def tables(report: dict) -> list[str]:
    return [table for table in (stage_table(report), seed_table(report), example_table(report)) if table]


def _verdict(report: dict) -> list[str]:
    return [f"**{report['verdict']}**"] if report.get("verdict") else []


def stage_table(report: dict) -> str:
    columns = [name for name in ("adapt", "finetune", "baseline", "gain") if name in report]
    keys = sorted({key for name in columns for key in report[name]})
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {key} | " + " | ".join(_cell(report[name].get(key)) for name in columns) + " |" for key in keys]
    return "\n".join(lines)


def seed_table(report: dict) -> str:
    paired = report.get("paired_over_seeds")
    if not paired:
        return ""
    lines = [
        "## Adapted minus base, paired by seed (points)",
        "",
        "| metric | mean difference | 95% CI | std | seeds |",
        "|---|---|---|---|---|",
    ]
    for key, values in paired.items():
        interval = Interval(**values)
        spread = _span(interval) if interval.low is not None else "none from one seed"
        lines.append(_row(key, _points(interval.estimate), spread, _points(interval.std, sign=""), interval.n))
    return "\n".join(lines)


def example_table(report: dict) -> str:
    tests = report.get("per_seed_tests")
    if not tests:
        return ""
    lines = [
        "## Per seed, over the test examples",
        "",
        "McNemar's exact test on the examples only one model got right; the accuracy difference (points) with its "
        "paired bootstrap 95% interval (1,000 resamples of the test examples).",
        "",
        "| seed | test examples | adapted only right | base only right | McNemar p | accuracy difference | 95% CI |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, values in tests.items():
        test, accuracy = values["mcnemar"], Interval(**values["bootstrap"][HEADLINE])
        counts = (values["test_examples"], test["adapted_only_right"], test["base_only_right"])
        lines.append(_row(seed, *counts, f"{test['p_value']:.3g}", _points(accuracy.estimate), _span(accuracy)))
    return "\n".join(lines)


def _row(*cells) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _span(interval: Interval) -> str:
    return f"{_points(interval.low)} to {_points(interval.high)}"


def _points(value: float | None, sign: str = "+") -> str:
    return "" if value is None else f"{value * 100:{sign}.2f}"


def _cell(value) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
