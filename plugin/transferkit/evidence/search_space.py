"""What a hyperparameter search may vary, and how: the classify recipe's `hp_search` option, parsed and checked where
the config is read (so `transferkit validate` and a bad range fail before anything loads).

    hp_search:
      n_trials: 8                 # default 10
      metric: eval_f1_macro       # default: metric_for_best_model, else the problem type's (eval_accuracy, ...)
      direction: maximize         # default: from the metric (loss, mse, ...: minimize)
      seed: 0                     # the sampler's; default: seed
      space:
        learning_rate: {low: 1.0e-5, high: 1.0e-4, log: true}
        num_train_epochs: [2, 3, 4]                # a list: the choices
        warmup_steps: {low: 0.0, high: 0.1}        # below 1: a share of the steps; whole numbers: steps
        head_warmup_steps: {low: 0, high: 400, step: 100}

Each range stays inside the option's own range (transferkit.ranges), in the values Optuna's `suggest_*` take. The
search itself is transferkit.evidence.search.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from transferkit.arguments import ClassificationArguments, with_help
from transferkit.errors import TransferKitError
from transferkit.ranges import COUNT, TRAINING_ARGUMENT_RANGES, Range, option_range

INSTALL = "pip install 'transferkit[search]'"
PLAN_KEYS = ("space", "n_trials", "metric", "direction", "seed")
DIMENSION_KEYS = ("low", "high", "log", "step", "choices")
DIRECTIONS = ("maximize", "minimize")
# The options a search may vary: whole numbers or not. warmup_steps is either: below 1 a share of the steps
# (transformers 5 reads a float warmup_steps < 1 as a ratio), from 1 on a number of steps.
INTEGER_OPTIONS = ("per_device_train_batch_size", "head_warmup_steps")
REAL_OPTIONS = ("learning_rate", "weight_decay")
EITHER_OPTIONS = ("num_train_epochs", "warmup_steps")  # low/high: whole numbers (epochs, steps) or a ratio (warmup)
SEARCHABLE = (*REAL_OPTIONS, *EITHER_OPTIONS, *INTEGER_OPTIONS)
NOT_TRAINING_ARGUMENTS = ("head_warmup_steps",)  # the recipe's own: applied by the trial's model_init
HP_SEARCH_HELP = (
    "Search hyperparameters on the validation split with Optuna ({install}), then retrain the best config in "
    "output_dir and read the test split once. A mapping: space (per option, {{low, high, log, step}} or "
    "{{choices: [...]}} or a list of choices; options: {options}), n_trials (default 10), metric (default "
    "metric_for_best_model, else eval_accuracy / eval_f1_micro / eval_mse by problem type), direction (maximize / "
    "minimize, default from the metric), seed (the sampler's, default seed). On the command line: a JSON mapping "
    "(null turns a config's search off). "
    "Writes output_dir/hp_search/trials.csv and best.yaml (the config with the best values, which runs as it is)."
).format(install=INSTALL, options=", ".join(SEARCHABLE))


@dataclass(frozen=True)
class Dimension:
    """One option's range (low..high, optionally on a log scale or in steps) or its choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def integer(self) -> bool:
        """Whether low..high holds whole numbers: batch sizes and steps always; epochs and warm-up steps when the
        bounds are whole numbers (a warm-up below 1 is a ratio)."""
        if self.name in INTEGER_OPTIONS:
            return True
        return self.name in EITHER_OPTIONS and self.high is not None and self.high >= 1

    def suggest(self, trial: Any) -> Any:
        """The trial's value (Optuna returns the same one when asked again within a trial)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class SearchPlan:
    """The `hp_search` mapping, checked: a space, how many trials, what to optimise and the sampler's seed."""

    space: tuple[Dimension, ...]
    n_trials: int = 10
    metric: str | None = None
    direction: str | None = None
    seed: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dimension.name for dimension in self.space)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Every option's value for `trial`, in the space's order."""
        return {dimension.name: dimension.suggest(trial) for dimension in self.space}

    def training_arguments(self, trial: Any) -> dict[str, Any]:
        """`hp_space` for Trainer.hyperparameter_search: the TrainingArguments values it sets on the trial's args.
        Every option is suggested, so that the trial rank 0 broadcasts under DDP holds head_warmup_steps too."""
        return {name: value for name, value in self.suggest(trial).items() if name not in NOT_TRAINING_ARGUMENTS}


def parse_plan(value: dict | str) -> SearchPlan:
    """The `hp_search` value (a YAML mapping, or JSON from the command line) as a SearchPlan; errors name the key."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise TransferKitError(
                "hp_search takes a mapping; given as text (on the command line), a JSON mapping such as "
                f'\'{{"n_trials": 8, "space": {{"learning_rate": {{"low": 1e-5, "high": 1e-4, "log": true}}}}}}\' '
                f"({err})."
            ) from None
    if not isinstance(value, dict):
        raise TransferKitError(f"hp_search takes a mapping (space, n_trials, metric, ...), got {value!r}.")
    _refuse_unknown(value, PLAN_KEYS, "hp_search")
    space = value.get("space")
    if not isinstance(space, dict) or not space:
        raise TransferKitError(
            "hp_search needs a space: a mapping of options to ranges, e.g. space: {learning_rate: {low: 1.0e-5, "
            f"high: 1.0e-4, log: true}}. Options: {', '.join(SEARCHABLE)}."
        )
    _refuse_unknown(space, SEARCHABLE, "hp_search.space", what="option a search can vary")
    n_trials = _whole_number(value.get("n_trials", 10), "hp_search.n_trials", COUNT)
    seed = value.get("seed")
    seed = None if seed is None else _whole_number(seed, "hp_search.seed", TRAINING_ARGUMENT_RANGES["seed"])
    metric, direction = value.get("metric"), value.get("direction")
    if metric is not None and (not isinstance(metric, str) or not metric.strip()):
        raise TransferKitError(f"hp_search.metric takes a validation metric's name (eval_accuracy), got {metric!r}.")
    if direction is not None and direction not in DIRECTIONS:
        raise TransferKitError(f"hp_search.direction must be maximize or minimize, got {direction!r}.")
    dimensions = tuple(parse_dimension(name, spec) for name, spec in space.items())
    return SearchPlan(dimensions, n_trials, metric and eval_key(metric.strip()), direction, seed)


def parse_dimension(name: str, spec: Any) -> Dimension:
    """One option of the space: {low, high, log, step}, {choices: [...]} or a list of choices."""
    where = f"hp_search.space.{name}"
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise TransferKitError(
            f"{where} takes {{low: ..., high: ...}} (log: true for a log scale) or {{choices: [...]}}, got {spec!r}."
        )
    _refuse_unknown(spec, DIMENSION_KEYS, where)
    allowed = searched_option_range(name)
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise TransferKitError(f"{where}: choices exclude {', '.join(sorted(set(spec) - {'choices'}))}.")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise TransferKitError(f"{where}.choices takes a non-empty list of values, got {choices!r}.")
        whole = name in INTEGER_OPTIONS
        choices = [_number(choice, f"{where}.choices", allowed, whole=whole) for choice in choices]
        return Dimension(name, choices=tuple(int(choice) if whole else choice for choice in choices))
    if "low" not in spec or "high" not in spec:
        raise TransferKitError(f"{where} needs both low and high (or choices: [...]), got {spec!r}.")
    low = _number(spec["low"], f"{where}.low", allowed)
    high = _number(spec["high"], f"{where}.high", allowed)
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise TransferKitError(f"{where}.log takes true or false, got {log!r}.")
    if not low < high:
        raise TransferKitError(
            f"{where}: low ({low}) must be below high ({high}); for a fixed value, set {name} in the config instead."
        )
    dimension = Dimension(name, low, high, log, None if step is None else _number(step, f"{where}.step", None))
    _check_range_kind(dimension, where)
    return dimension


def _check_range_kind(dimension: Dimension, where: str) -> None:
    """What Optuna and the option accept of a range: whole bounds for whole-number options, no ratio mixed with
    steps, a log scale only above 0 and without a step, a positive step."""
    low, high, name = dimension.low, dimension.high, dimension.name
    if dimension.integer and not (float(low).is_integer() and float(high).is_integer()):
        kind = {"warmup_steps": "a ratio (both below 1) or steps (whole numbers)"}.get(name, "whole numbers")
        raise TransferKitError(f"{where}: low {low} and high {high} must be {kind}.")
    if name == "num_train_epochs" and not dimension.integer:
        raise TransferKitError(f"{where}: epochs as a range take whole numbers (low: 1, high: 4), or use choices.")
    if dimension.log and (low <= 0 or dimension.step is not None):
        raise TransferKitError(f"{where}: log: true needs low above 0 and no step (got low {low}).")
    if dimension.step is not None:
        if dimension.step <= 0 or (dimension.integer and not float(dimension.step).is_integer()):
            raise TransferKitError(f"{where}.step must be above 0 (a whole number for {name}), got {dimension.step}.")


def searched_option_range(name: str) -> Range | None:
    """The range the option itself has (TrainingArguments' table, or the recipe's field): a search stays inside."""
    if name in TRAINING_ARGUMENT_RANGES:
        return TRAINING_ARGUMENT_RANGES[name]
    fields = {option.name: option for option in dataclasses.fields(ClassificationArguments)}
    return option_range(fields[name])


def _number(value: Any, where: str, allowed: Range | None, whole: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not float(value).is_integer()):
        hint = " (YAML reads 1e-5 as text: write 1.0e-5)" if isinstance(value, str) and "e" in value.lower() else ""
        kind = "a whole number" if whole else "a number"
        raise TransferKitError(f"{where} takes {kind}, got {value!r}{hint}.")
    if allowed is not None and value not in allowed:
        raise TransferKitError(f"{where} must be {allowed} (the option's own range), got {value}.")
    return value


def _whole_number(value: Any, where: str, allowed: Range) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise TransferKitError(f"{where} must be a whole number {allowed}, got {value!r}.")
    return value


def _refuse_unknown(mapping: dict, valid: Sequence[str], where: str, what: str = "key") -> None:
    for key in mapping:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f"Did you mean '{close[0]}'?" if close else f"Valid: {', '.join(valid)}."
            raise TransferKitError(f"{where}: unknown {what} '{key}'. {hint}")


def eval_key(metric: str) -> str:
    """Trainer's name for a validation metric: `accuracy` -> `eval_accuracy`."""
    return metric if metric.startswith("eval_") else f"eval_{metric}"


@dataclass
class SearchArguments:
    """The classify recipe's `hp_search` option; `plan` holds it checked (None: no search)."""

    hp_search: dict | str | None = field(default=None, **with_help(HP_SEARCH_HELP))
    plan: SearchPlan | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.hp_search, str) and self.hp_search.strip().lower() in ("", "null", "none"):
            self.hp_search = None  # `--hp_search null` turns off a config's search
        if self.hp_search is None:
            return
        self.plan = parse_plan(self.hp_search)
        if importlib.util.find_spec("optuna") is None:
            raise TransferKitError(f"hp_search runs its trials with Optuna, which is not installed: {INSTALL}.")
