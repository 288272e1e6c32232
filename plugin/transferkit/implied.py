"""What the options a user set imply for the others, so that none of them is silently inert.

A command line copied from transformers' example scripts means what it meant there: `--save_steps 8` saves every 8
steps (TrainingArguments' default strategy is `steps`; the recipes' default of `epoch` would make it inert),
`--do_train --do_eval` predicts nothing. Settled on the parsed values, before any dataclass is built, where it is
still known which keys came from the user (`where`: key -> the YAML file or "command line") and which from defaults.

Two user-set options that disagree: the one from the higher-precedence source wins (the command line over the
YAML file, as for any other key) and a warning names the one that yields; from the same source, it is an error.
"""

from __future__ import annotations

import logging
from typing import Any

from transferkit.errors import TransferKitError
from transferkit.precision import FLAGS, LAUNCHER_ENV, Choice, apply_choice, auto_choice, launcher_precision

logger = logging.getLogger(__name__)
COMMAND_LINE = "command line"

# An interval only counts under the `steps` strategy (TrainingArguments docs: save_steps, eval_steps, logging_steps).
STEP_INTERVALS = {"save_steps": "save_strategy", "eval_steps": "eval_strategy", "logging_steps": "logging_strategy"}
PHASES = ("do_train", "do_eval", "do_predict")
NO_EVALUATE_ONLY = (
    "do_train is off: the recipes always train; there is no evaluate- or predict-only mode. To label data with a "
    "trained classifier: transferkit predict MODEL DATA --output FILE (recipes/predict.py); to train, set do_train "
    "(or none of do_train, do_eval, do_predict)."
)


def settle(values: dict[str, Any], where: dict[str, str]) -> dict[str, Any]:
    """`values` with the settings that the user-set options imply; an error where two of them contradict."""
    values, where = dict(values), dict(where)
    _step_intervals(values, where)
    _best_model_strategies(values, where)
    _phases(values, where)
    _precision(values, where)
    _seed_loop(values, where)
    return values


def _word(value: Any) -> str:
    return str(getattr(value, "value", value))  # IntervalStrategy members and plain strings alike


def _said(key: str, values: dict[str, Any], where: dict[str, str]) -> str:
    value = values[key]
    if isinstance(value, list):  # seeds: 1,2 or 1 2, as given
        return f"{key} {','.join(map(str, value))}"
    return f"{key} {value:g}" if isinstance(value, float) else f"{key} {_word(value)}"


def _winner(first: str, second: str, values: dict[str, Any], where: dict[str, str], fix: str) -> str:
    """Of two user-set keys that disagree, the one from the higher-precedence source; same source: an error."""
    if where[first] == where[second]:
        raise TransferKitError(
            f"{_said(first, values, where)} ({where[first]}) contradicts {_said(second, values, where)} "
            f"({where[second]}): {fix}"
        )
    winner, loser = (first, second) if where[first] == COMMAND_LINE else (second, first)
    logger.warning(
        "%s (%s) wins over %s (%s), which has no effect.",
        _said(winner, values, where),
        where[winner],
        _said(loser, values, where),
        where[loser],
    )
    return winner


def _step_intervals(values: dict[str, Any], where: dict[str, str]) -> None:
    for interval, strategy in STEP_INTERVALS.items():
        if interval not in where or values.get(interval) is None or strategy not in values:
            continue
        if _word(values[strategy]) == "steps" or (strategy in where and _word(values[strategy]) == "no"):
            continue  # steps: it counts; a strategy the user turned off: nothing to count
        if strategy in where:
            fix = f"set {strategy} to steps, or remove {interval}."
            if _winner(interval, strategy, values, where, fix) == strategy:
                continue
        logger.warning("%s %g given: %s is steps (it was %s).", interval, values[interval], strategy,
                       _word(values[strategy]))  # fmt: skip
        values[strategy] = "steps"
        where[strategy] = where[interval]


def _best_model_strategies(values: dict[str, Any], where: dict[str, str]) -> None:
    """Keeping the best model needs saves at the evaluations (TrainingArguments checks that save and eval strategies
    match): an interval given for one of them alone moves the other, left to the defaults, to the same steps."""
    if not ("load_best_model_at_end" in where or values.get("early_stopping_patience") is not None):
        return
    pairs = (("save_strategy", "save_steps", "eval_strategy", "eval_steps"),
             ("eval_strategy", "eval_steps", "save_strategy", "save_steps"))  # fmt: skip
    for strategy, interval, other, other_interval in pairs:
        if _word(values.get(strategy)) != "steps" or other in where or _word(values.get(other)) == "steps":
            continue
        values[other] = "steps"
        if other_interval not in where:
            values[other_interval] = values[interval]
        logger.warning("Keeping the best model: %s is steps too, every %g steps.", other, values[other_interval])
        return


def _phases(values: dict[str, Any], where: dict[str, str]) -> None:
    """do_train / do_eval / do_predict with the example scripts' meaning. The recipes' defaults set all three (train,
    evaluate when there is a validation split, predict when there is a test split); once the user asks for a phase,
    the ones not asked for are off, as there."""
    asked = [name for name in PHASES if name in where and name in values]
    if not asked:
        return
    implied_from = None  # where the phases not asked for were turned off: where the asked ones were given
    if any(values[name] for name in asked):
        implied_from = COMMAND_LINE if COMMAND_LINE in (where[name] for name in asked) else where[asked[0]]
        for name in PHASES:
            if name in values and name not in where:
                values[name] = False
    if values.get("do_train") is False:
        raise TransferKitError(NO_EVALUATE_ONLY)
    if values.get("do_eval") is False and "eval_strategy" in values:
        _evaluation_off(values, where)
    if values.get("do_predict") is False:
        _no_split_for("test_split_percentage", "do_predict", values, {"do_predict": implied_from, **where})
    if values.get("do_eval") is False:
        _no_split_for("validation_split_percentage", "do_eval", values, {"do_eval": implied_from, **where})


def _evaluation_off(values: dict[str, Any], where: dict[str, str]) -> None:
    """do_eval off. As in TrainingArguments, an eval_strategy other than no, or eval_steps, asks for evaluation: it
    wins over a do_eval that is off only because other phases were asked for."""
    asking = [key for key in ("eval_strategy", "eval_steps") if key in where and _word(values[key]) != "no"]
    if asking and ("do_eval" not in where or _winner("do_eval", asking[0], values, where, "remove one.") != "do_eval"):
        values["do_eval"] = True
        return
    values["eval_strategy"] = "no"


def _no_split_for(percentage: str, phase: str, values: dict[str, Any], where: dict[str, str | None]) -> None:
    """A phase that is off carves no split (its rows stay in train), unless the user's percentage wins: then the
    phase is on, so the split is used."""
    if not values.get(percentage):
        return
    if percentage in where and where[phase] is not None:
        fix = f"set {phase}, or remove {percentage}: the split it carves would go unused."
        if _winner(phase, percentage, values, where, fix) == percentage:
            values[phase] = True
            return
    values[percentage] = 0


def _seed_loop(values: dict[str, Any], where: dict[str, str]) -> None:
    """`seeds` and `num_seeds` both say which seeds to run: one from the command line wins over the YAML file's."""
    if values.get("seeds") is None or values.get("num_seeds") is None or not {"seeds", "num_seeds"} <= set(where):
        return  # one of them unset; or set by the recipe's defaults, which ClassificationArguments then refuses
    loser = "num_seeds" if _winner("seeds", "num_seeds", values, where, "set one of them.") == "seeds" else "seeds"
    values[loser] = None


def _precision(values: dict[str, Any], where: dict[str, str]) -> None:
    """`precision` (transferkit.precision) into TrainingArguments' bf16 / fp16 / use_cpu. Unset: the flags and the
    accelerate config decide, as in TrainingArguments. A bf16 / fp16 flag the user set that disagrees with a
    concrete precision is settled like any two keys; fp32 cannot undo an accelerate config's mixed precision
    (TrainingArguments takes ACCELERATE_MIXED_PRECISION when no flag is on), so that pair is an error."""
    asked = values.get("precision")
    if asked is None:
        return
    if asked == "auto":
        apply_choice(values, auto_choice(values, where))
        return
    for flag in FLAGS:
        if flag in where and bool(values[flag]) != (asked == flag):
            fix = "remove one of them (precision sets the flags)."
            if _winner("precision", flag, values, where, fix) == flag:
                if values[flag]:  # the flag's precision, with what it needs (use_cpu for bf16 on a CPU)
                    apply_choice(values, Choice(flag, f"{flag}: true ({where[flag]})"))
                return
    source = where.get("precision", "the recipe's defaults")
    launcher = launcher_precision()
    if asked == "fp32" and launcher is not None:
        raise TransferKitError(
            f"precision fp32 ({source}) contradicts the accelerate config's "
            f"mixed_precision {launcher} ({LAUNCHER_ENV}): set mixed_precision: no in the accelerate config, or "
            "precision: auto to keep its choice."
        )
    apply_choice(values, Choice(asked, f"precision: {asked} ({source})"))
