"""Several seeds in one classify command: one complete run per seed, then what they say together.

A single run's test accuracy moves by a point or two with the seed alone, so one run cannot tell a better config
from a luckier one. With `seeds` (or `num_seeds`) the recipe runs once per seed in `output_dir/seed-<n>/`, every
run on the same data split (`split_seed`, default: the `seed` option), so the seeds vary the initialisation and
the data order, not the examples. Then, in output_dir:
- all_results.json: for every numeric train_/eval_/test_ metric k, its mean over seeds (k), sample standard
  deviation (k_std) and Student-t 95% interval (k_ci95_low, k_ci95_high); num_seeds, seeds, and per_seed;
- summary.md: that table, and for each seed a percentile-bootstrap 95% interval over its test examples (also in
  seed-<n>/bootstrap.json): how much the figure would move on another test set of the same size;
- run_finished.json once every seed has finished.

A rerun skips the seeds whose folder holds a finished run and resumes a seed cut short from its last checkpoint.
Under `accelerate launch` every process runs every seed, one after another. With push_to_hub no seed pushes on its
own: once the aggregate is written, the first seed's model is pushed, its card naming the seed and reporting the
aggregate (the first seed, not one chosen on a metric: picking the best of several seeds on test would flatter it).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence

import numpy as np
import yaml
from accelerate import PartialState
from transformers import TrainingArguments

from transferkit.arguments import ClassificationArguments, DataArguments, RunArguments
from transferkit.config import config_file
from transferkit.data import data_split_seed
from transferkit.errors import TransferKitError
from transferkit.evidence import stats
from transferkit.hub import MERGED_DIR
from transferkit.labels import MULTI, REGRESSION, SINGLE
from transferkit.lora import check_quantization_runs
from transferkit.model_card import add_card_section
from transferkit.preprocess import reporting_users_argv
from transferkit.publish import PushTarget, prepare_push, publish
from transferkit.resume import FINISHED_MARKER, RESUME_AUTO, is_finished, mark_finished

logger = logging.getLogger(__name__)
SUMMARY_FILE = "summary.md"
BOOTSTRAP_FILE = "bootstrap.json"
AGGREGATED_PREFIXES = ("test_", "eval_", "train_")  # in this order in summary.md
N_RESAMPLES = 1000
# What each seed's predictions.csv is bootstrapped for, by problem type: the headline figures of the bundled modules
BOOTSTRAP_METRICS: dict[str, dict[str, stats.Metric]] = {
    SINGLE: {"accuracy": stats.accuracy, "f1_macro": stats.f1_macro},
    MULTI: {"accuracy": stats.subset_accuracy, "f1_micro": stats.f1_micro_multi_label},
    REGRESSION: {"mse": stats.mean_squared_error},
}
# The aggregate's own keys, and the speed and count figures that summary.md and the card leave to all_results.json
NOT_IN_TABLES = ("_std", "_ci95_low", "_ci95_high", "_runtime", "_per_second", "_seconds", "_samples", "_predicted")
# What a single run (not a seed loop) leaves in its output_dir: every save writes training_args.bin, with a model
# (config.json) or an adapter (adapter_config.json)
SINGLE_RUN_FILES = ("training_args.bin", "config.json", "adapter_config.json", "model.safetensors", "pytorch_model.bin")
# Keys a single seed's run must not see: the seed loop's own, and the merged repo (no seed pushes on its own)
SEED_LOOP_KEYS = ("seeds", "num_seeds", "hub_merged_model_id")


def seed_list(cls_args: ClassificationArguments, training_args: TrainingArguments) -> list[int]:
    """`seeds` as given, or `num_seeds` consecutive seeds from the `seed` option."""
    if cls_args.seeds:
        return list(cls_args.seeds)
    return [training_args.seed + offset for offset in range(cls_args.num_seeds or 1)]


def seed_dir(output_dir: str, seed: int) -> str:
    return os.path.join(output_dir, f"seed-{seed}")


def run_seeds(
    main: Callable[[list[str]], dict],
    argv: Sequence[str] | None,
    training_args: TrainingArguments,
    cls_args: ClassificationArguments,
    data_args: DataArguments,
    run_args: RunArguments,
    lora_args=None,
) -> dict:
    """Run `main` (the recipe's) once per seed on the same split, then write the aggregate (main process)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    output_dir, seeds = training_args.output_dir, seed_list(cls_args, training_args)
    _check_output_dir(output_dir, training_args.resume_from_checkpoint)
    push = None
    if not data_args.preprocess_only:  # a node that only prepares the data needs neither a GPU nor the Hub
        check_quantization_runs(lora_args)  # before any seed starts (each seed's start_run would, one at a time)
        push = prepare_push(training_args, lora_args)  # the repo is checked before any seed trains
    split = data_split_seed(data_args, training_args)
    with tempfile.TemporaryDirectory() as scratch:  # per process: each writes its own copy of the config
        base = seed_run_argv(argv, scratch)
        if run_args.dry_run or data_args.preprocess_only:  # the same plan and data for every seed: once is enough
            with reporting_users_argv(argv):  # preprocess_only's next command: the user's, not the first seed's
                return main(one_seed_argv(base, seeds[0], output_dir, split))
        todo = [seed for seed in seeds if run_args.overwrite_output_dir or not is_finished(seed_dir(output_dir, seed))]
        if training_args.should_log:
            _log_plan(seeds, todo, split, output_dir, push)
        if todo and training_args.should_save and os.path.isfile(os.path.join(output_dir, FINISHED_MARKER)):
            os.remove(os.path.join(output_dir, FINISHED_MARKER))  # finished again only when every seed is
        for seed in todo:
            main(one_seed_argv(base, seed, output_dir, split))
    PartialState().wait_for_everyone()  # the main process reads what each seed's main process wrote
    if not training_args.should_save:
        return {}
    aggregate = write_aggregate(output_dir, seeds, split)
    mark_finished(output_dir, "text-classification")  # complete locally; a failed push below keeps it so
    if push is not None and training_args.process_index == 0:
        publish_first_seed(output_dir, seeds, aggregate, push)
    return aggregate


def seed_run_argv(argv: list[str], scratch: str) -> list[str]:
    """The user's options without the seed loop's own (from the command line and from a copy of the --config
    file), for one seed's run; the seed, its folder and the split seed are appended after them."""
    options = _without_options(argv, (*SEED_LOOP_KEYS, "config"))
    config = config_file(argv)
    if config is None:
        return options
    with open(config, encoding="utf-8") as handle:
        keys = yaml.safe_load(handle) or {}
    if set(SEED_LOOP_KEYS) & set(keys):
        config = os.path.join(scratch, os.path.basename(config))
        with open(config, "w", encoding="utf-8") as handle:
            yaml.safe_dump({k: v for k, v in keys.items() if k not in SEED_LOOP_KEYS}, handle, sort_keys=False)
    return ["--config", config, *options]


def one_seed_argv(base: list[str], seed: int, output_dir: str, split: int) -> list[str]:
    """One seed's run: its seed, its folder, the shared split; resumed if cut short; never pushed on its own."""
    options = ["--seed", seed, "--output_dir", seed_dir(output_dir, seed), "--split_seed", split]
    options += ["--resume_from_checkpoint", "auto", "--push_to_hub", "false"]
    return [*base, *map(str, options)]


def _without_options(argv: list[str], names: Sequence[str]) -> list[str]:
    """`argv` less the options `names` (`--name value...`, `--name=value`) and their values."""
    kept, skipping = [], False
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            skipping = name in names
            if skipping:
                continue
        elif skipping:
            continue
        kept.append(token)
    return kept


def _check_output_dir(output_dir: str, resume_from_checkpoint: str | None) -> None:
    if resume_from_checkpoint and resume_from_checkpoint not in RESUME_AUTO:
        raise TransferKitError(
            f"resume_from_checkpoint {resume_from_checkpoint} with seeds: each seed resumes from its own folder's "
            "last checkpoint. Leave resume_from_checkpoint unset (or auto)."
        )
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    single = [name for name in names if name.startswith("checkpoint-") or name in SINGLE_RUN_FILES]
    if single:
        raise TransferKitError(
            f"output_dir {output_dir} holds a single run ({', '.join(sorted(single))}); the seeds' runs go into "
            "output_dir/seed-<n>/. Choose another output_dir for the seeds."
        )


def _log_plan(seeds: list[int], todo: list[int], split: int, output_dir: str, push: PushTarget | None) -> None:
    done = [seed for seed in seeds if seed not in todo]
    logger.warning(
        "%d seeds %s on the split of split_seed %d, in %s/seed-<n>%s.",
        len(seeds),
        seeds,
        split,
        output_dir,
        f"; already finished, not run again: {done}" if done else "",
    )
    if push is not None and push.strategy != "end":  # each seed runs with push_to_hub off (one_seed_argv)
        logger.warning(
            "hub_strategy %s is not used with seeds: no checkpoint is pushed while the seeds train; seed %d's model "
            "is pushed to %s once, after every seed has finished.",
            push.strategy,
            seeds[0],
            push.repo_id,
        )


# -- the aggregate ----------------------------------------------------------------------------------------------------
def write_aggregate(output_dir: str, seeds: list[int], split: int) -> dict:
    """all_results.json and summary.md in output_dir, from each seed's all_results.json and predictions.csv."""
    per_seed = {seed: _read_json(os.path.join(seed_dir(output_dir, seed), "all_results.json")) for seed in seeds}
    bootstrap = {seed: seed_bootstrap(seed_dir(output_dir, seed)) for seed in seeds}
    aggregate = aggregate_metrics(per_seed)
    aggregate["per_seed"] = {str(seed): {**per_seed[seed], **_intervals_only(bootstrap[seed])} for seed in seeds}
    with open(os.path.join(output_dir, "all_results.json"), "w", encoding="utf-8") as handle:
        json.dump(aggregate, handle, indent=2)
    with open(os.path.join(output_dir, SUMMARY_FILE), "w", encoding="utf-8") as handle:
        handle.write(summary_markdown(aggregate, per_seed, bootstrap, split))
    return aggregate


def _intervals_only(figures: dict) -> dict:
    """A seed's bootstrap figures less the metrics recomputed from predictions.csv (rounded there): the run's own
    all_results.json values stay the seed's figures, as the means are taken over them."""
    return {key: value for key, value in figures.items() if "_bootstrap95_" in key or key == "test_examples"}


def aggregate_metrics(per_seed: dict[int, dict]) -> dict:
    """Flat: k (mean), k_std, k_ci95_low, k_ci95_high for each numeric metric; then num_seeds and seeds."""
    keys = {key for metrics in per_seed.values() for key, value in metrics.items() if _is_metric(key, value)}
    aggregate = {}
    for key in sorted(keys, key=_metric_order):
        interval = stats.seed_interval([m[key] for m in per_seed.values() if _is_metric(key, m.get(key))])
        aggregate.update({key: interval.estimate, f"{key}_std": interval.std})
        aggregate.update({f"{key}_ci95_low": interval.low, f"{key}_ci95_high": interval.high})
    return {**aggregate, "num_seeds": len(per_seed), "seeds": list(per_seed)}


def _is_metric(key: str, value) -> bool:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return key.startswith(AGGREGATED_PREFIXES) and is_number and math.isfinite(value)


def _metric_order(key: str) -> tuple[int, str]:
    return next(i for i, prefix in enumerate(AGGREGATED_PREFIXES) if key.startswith(prefix)), key


def seed_bootstrap(folder: str) -> dict[str, float]:
    """Bootstrap intervals over the test examples of one seed's predictions.csv, written to its bootstrap.json:
    test_<metric>, test_<metric>_bootstrap95_low / _high, test_examples. Empty without labelled predictions."""
    problem_type = _problem_type(folder)
    gold, predicted = read_predictions(os.path.join(folder, "predictions.csv"), problem_type)
    if not len(gold):
        return {}
    figures: dict[str, float] = {"test_examples": len(gold)}
    for name, metric in BOOTSTRAP_METRICS[problem_type].items():
        interval = stats.bootstrap_interval(gold, predicted, metric, n_resamples=N_RESAMPLES, seed=0)
        figures[f"test_{name}"] = interval.estimate
        figures[f"test_{name}_bootstrap95_low"] = interval.low
        figures[f"test_{name}_bootstrap95_high"] = interval.high
    with open(os.path.join(folder, BOOTSTRAP_FILE), "w", encoding="utf-8") as handle:
        json.dump({**figures, "n_resamples": N_RESAMPLES, "problem_type": problem_type}, handle, indent=2)
    return figures


def read_predictions(path: str, problem_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Gold and predicted labels of a predictions.csv (columns label, predicted): label names, multi-hot rows
    (multi-label, names joined by ';') or floats (regression). Rows not predicted (no text) are skipped."""
    if not os.path.isfile(path):
        return np.array([]), np.array([])
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        if "label" not in header or "predicted" not in header:
            return np.array([]), np.array([])
        gold_at, predicted_at = header.index("label"), header.index("predicted")
        # a row not predicted has empty predicted and score cells; a multi-label row predicted with no label, only
        # an empty predicted cell
        rows = [(row[gold_at], row[predicted_at]) for row in reader if any(row[predicted_at:])]
    gold, predicted = [g for g, _ in rows], [p for _, p in rows]
    if problem_type == REGRESSION:
        return np.asarray(gold, dtype=float), np.asarray(predicted, dtype=float)
    if problem_type == MULTI:
        names = sorted({name for cell in gold + predicted for name in cell.split(";") if name})
        return _multi_hot(gold, names), _multi_hot(predicted, names)
    return np.asarray(gold), np.asarray(predicted)


def _multi_hot(cells: list[str], names: list[str]) -> np.ndarray:
    return np.array([[name in cell.split(";") for name in names] for cell in cells], dtype=bool).reshape(-1, len(names))


def _problem_type(folder: str) -> str:
    """From the model's config.json, or label_config.json next to a LoRA adapter."""
    for name in ("config.json", "label_config.json"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            problem_type = _read_json(path).get("problem_type")
            if problem_type in BOOTSTRAP_METRICS:
                return problem_type
    return SINGLE


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise TransferKitError(f"{path} is missing: the seed's run in {os.path.dirname(path)} did not finish.")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


# -- summary.md and the card ------------------------------------------------------------------------------------------
def summary_markdown(aggregate: dict, per_seed: dict[int, dict], bootstrap: dict[int, dict], split: int) -> str:
    seeds = list(per_seed)
    lines = [
        f"# {len(seeds)} seeds: {', '.join(map(str, seeds))}",
        "",
        f"Every seed trained on the same data split (split_seed {split}): the spread below is the seeds' "
        "(initialisation, data order), not the test set's. Mean, sample standard deviation and Student-t 95% "
        "confidence interval of the mean over seeds.",
        "",
        *seed_table(aggregate, per_seed, prefixes=AGGREGATED_PREFIXES),
        "",
        "Speed and counts (runtime, samples per second, ...): in all_results.json.",
        "",
        "## Over test examples, per seed",
        "",
    ]
    metrics = sorted({name for figures in bootstrap.values() for name in _bootstrapped(figures)})
    if not metrics:
        return "\n".join([*lines, "No labelled test predictions (predictions.csv): no bootstrap intervals.", ""])
    lines += [
        f"Percentile bootstrap ({N_RESAMPLES} resamples of the test examples, with replacement) 95% interval of each "
        "seed's test metrics, from its predictions.csv: how far the figure could move on another test set of the "
        "same size. Multi-label accuracy is exact match over all labels; regression is bootstrapped for mse.",
        "",
        f"| seed | test examples | {' | '.join(metrics)} |",
        "|---" * (len(metrics) + 2) + "|",
    ]
    for seed in seeds:
        figures = bootstrap[seed]
        cells = [_with_interval(figures, f"test_{name}") for name in metrics] if figures else ["-"] * len(metrics)
        lines.append(f"| {seed} | {figures.get('test_examples', '-')} | {' | '.join(cells)} |")
    return "\n".join([*lines, ""])


def seed_table(aggregate: dict, per_seed: dict[int, dict], prefixes: Sequence[str]) -> list[str]:
    """metric | mean | std | 95% CI | per-seed values, for the aggregated metrics with one of `prefixes`."""
    seeds = list(per_seed)
    lines = [f"| metric | mean | std | 95% CI | per seed ({', '.join(map(str, seeds))}) |", "|---|---|---|---|---|"]
    for key in aggregate:
        if not key.startswith(tuple(prefixes)) or key.endswith(NOT_IN_TABLES):
            continue
        low, high = aggregate[f"{key}_ci95_low"], aggregate[f"{key}_ci95_high"]
        interval = "-" if low is None else f"{_number(low)} to {_number(high)}"
        values = ", ".join(_number(per_seed[seed][key]) if key in per_seed[seed] else "-" for seed in seeds)
        std = aggregate[f"{key}_std"]
        lines.append(f"| {key} | {_number(aggregate[key])} | {_number(std)} | {interval} | {values} |")
    return lines


def _bootstrapped(figures: dict) -> list[str]:
    """The metric names (accuracy, ...) that `figures` holds a bootstrap interval of."""
    suffix = "_bootstrap95_low"
    return [key.removeprefix("test_").removesuffix(suffix) for key in figures if key.endswith(suffix)]


def _with_interval(figures: dict, key: str) -> str:
    low, high = figures[f"{key}_bootstrap95_low"], figures[f"{key}_bootstrap95_high"]
    return f"{_number(figures.get(key))} ({_number(low)} to {_number(high)})"


def _number(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def publish_first_seed(output_dir: str, seeds: list[int], aggregate: dict, push: PushTarget) -> None:
    """Push the first seed's run, its card (and a merged model's) naming the seed and reporting the aggregate."""
    first = seed_dir(output_dir, seeds[0])
    section = card_section(seeds, aggregate)
    add_card_section(first, f"Results over {len(seeds)} seeds", section, repo_id=push.repo_id)
    merged = push.merged_repo_id is not None and os.path.isdir(os.path.join(first, MERGED_DIR))
    if merged:
        add_card_section(os.path.join(first, MERGED_DIR), f"Results over {len(seeds)} seeds", section,
                         repo_id=push.merged_repo_id)  # fmt: skip
    publish(first, push, merged=merged)


def card_section(seeds: list[int], aggregate: dict) -> str:
    first = aggregate["per_seed"][str(seeds[0])]
    lines = [
        f"This model is the run with seed {seeds[0]}, the first of {len(seeds)} seeds ({', '.join(map(str, seeds))}) "
        "trained with the same configuration on the same data split. It is published because it is the first, "
        "not chosen on any metric; its own figures are under Results. Over the seeds: mean, sample standard "
        "deviation and Student-t 95% confidence interval of the mean.",
        "",
        *seed_table(aggregate, {seed: aggregate["per_seed"][str(seed)] for seed in seeds}, ("test_", "eval_")),
    ]
    if "test_examples" in first:
        shown = ", ".join(f"{name} {_with_interval(first, f'test_{name}')}" for name in _bootstrapped(first))
        lines += ["", f"This model on its {first['test_examples']} test examples (95% bootstrap interval): {shown}."]
    return "\n".join(lines)
