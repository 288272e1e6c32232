"""What the options a user set imply for the others, so that none of them is silently inert.

A command line copied from transformers' example scripts means what it meant there: `--save_steps 8` saves every 8
steps (TrainingArguments' default strategy is `steps`; the recipes' default of `epoch` would make it inert),
`--do_eval false` evaluates nothing. Settled on the parsed values, before any dataclass is built, where it is still
known which keys came from the user (`where`: key -> the YAML file or "command line") and which from defaults.
"""

from __future__ import annotations

import logging
from typing import Any

from transferkit.errors import TransferKitError

logger = logging.getLogger(__name__)

# An interval only counts under the `steps` strategy (TrainingArguments docs: save_steps, eval_steps, logging_steps).
STEP_INTERVALS = {"save_steps": "save_strategy", "eval_steps": "eval_strategy", "logging_steps": "logging_strategy"}

PHASES = ("do_train", "do_eval", "do_predict")
NO_EVALUATE_ONLY = (
    "do_train is off: the recipes always train; there is no evaluate- or predict-only mode. To predict with a "
    "trained model, load its output_dir with transformers' pipeline('text-classification', model=...); to train, "
    "set do_train (or none of do_train, do_eval, do_predict)."
)


def settle(values: dict[str, Any], where: dict[str, str]) -> dict[str, Any]:
    """`values` with the settings that the user-set options imply; an error where two of them contradict."""
    values = dict(values)
    _step_intervals(values, where)
    _phases(values, where)
    return values


def _word(value: Any) -> str:
    return str(getattr(value, "value", value))  # IntervalStrategy members and plain strings alike


def _step_intervals(values: dict[str, Any], where: dict[str, str]) -> None:
    for interval, strategy in STEP_INTERVALS.items():
        if interval not in where or strategy not in values or _word(values[strategy]) == "steps":
            continue
        if strategy in where:
            raise TransferKitError(
                f"{interval} {values[interval]:g} ({where[interval]}) has no effect under {strategy} "
                f"{_word(values[strategy])} ({where[strategy]}): set {strategy} to steps, or remove {interval}."
            )
        logger.info("%s %g given: %s is steps (it was %s).", interval, values[interval], strategy, values[strategy])
        values[strategy] = "steps"


def _phases(values: dict[str, Any], where: dict[str, str]) -> None:
    """do_train / do_eval / do_predict with the example scripts' meaning. The recipes' defaults set all three (train,
    evaluate when there is a validation split, predict when there is a test split); once the user asks for a phase,
    the ones not asked for are off, as there."""
    asked = [name for name in PHASES if name in where and name in values]
    if not asked:
        return
    if any(values[name] for name in asked):
        for name in PHASES:
            if name in values and name not in where:
                values[name] = False
    if values.get("do_train") is False:
        raise TransferKitError(NO_EVALUATE_ONLY)
    if values.get("do_eval") is not False or "eval_strategy" not in values:
        return
    if "eval_strategy" in where and _word(values["eval_strategy"]) != "no":
        if "do_eval" in where:
            raise TransferKitError(
                f"do_eval false ({where['do_eval']}) contradicts eval_strategy {_word(values['eval_strategy'])} "
                f"({where['eval_strategy']}): remove one of them."
            )
        values["do_eval"] = True  # as in TrainingArguments: an eval_strategy other than no evaluates
        return
    values["eval_strategy"] = "no"
    if "validation_split_percentage" in values and "validation_split_percentage" not in where:
        values["validation_split_percentage"] = 0  # nothing is evaluated: keep every training row
