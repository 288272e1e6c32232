"""Allowed ranges of the numeric options, checked where the config is read.

One mechanism for every recipe: TransferKit's own options carry their range in the dataclass field's metadata
(`range=...`), `TrainingArguments`' options take theirs from `TRAINING_ARGUMENT_RANGES` below. A value out of range
stops the run before any data or model is loaded, with the option, the value, where it was set and the range, instead
of failing later inside torch (a negative dropout, a zero batch size) or, worse, training with it (a negative
learning rate climbs the loss).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from transferkit.errors import TransferKitError


@dataclass(frozen=True)
class Range:
    """An interval, closed unless said otherwise, plus special values outside it (max_steps' -1 for "unset")."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    special: tuple[Any, ...] = ()

    def __contains__(self, value: Any) -> bool:
        if value is None or value in self.special:
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        low = None if self.low is None else f"{'>' if self.low_open else '>='} {_number(self.low)}"
        high = None if self.high is None else f"{'<' if self.high_open else '<='} {_number(self.high)}"
        text = " and ".join(part for part in (low, high) if part)
        return " or ".join([*(f"{value}" for value in self.special), text]) if self.special else text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def at_least(low: float, special: tuple[Any, ...] = ()) -> Range:
    return Range(low=low, special=special)


def above(low: float) -> Range:
    return Range(low=low, low_open=True)


def between(low: float, high: float, high_open: bool = False, low_open: bool = False) -> Range:
    return Range(low=low, high=high, low_open=low_open, high_open=high_open)


PROBABILITY = between(0, 1)
POSITIVE = above(0)
COUNT = at_least(1)  # sizes, steps, workers: None (unset) always passes

# TrainingArguments' numeric options (transformers' docs give their meaning). Intervals given as floats accept a
# float: logging/save/eval steps and warmup_steps below 1 are a share of the total steps in transformers 5.
TRAINING_ARGUMENT_RANGES: dict[str, Range] = {
    "per_device_train_batch_size": COUNT,
    "per_device_eval_batch_size": COUNT,
    "gradient_accumulation_steps": COUNT,
    "eval_accumulation_steps": COUNT,
    "num_train_epochs": POSITIVE,
    "max_steps": at_least(1, special=(-1,)),
    "learning_rate": at_least(0),
    "warmup_steps": at_least(0),
    "weight_decay": at_least(0),
    "adam_beta1": between(0, 1, high_open=True),
    "adam_beta2": between(0, 1, high_open=True),
    "adam_epsilon": POSITIVE,
    "max_grad_norm": at_least(0),
    "label_smoothing_factor": between(0, 1, high_open=True),
    "neftune_noise_alpha": POSITIVE,
    "torch_empty_cache_steps": COUNT,
    "logging_steps": POSITIVE,
    "eval_steps": POSITIVE,
    "eval_delay": at_least(0),
    "save_steps": POSITIVE,
    "save_total_limit": COUNT,  # 0 would keep every checkpoint (transformers skips rotation), not none
    "seed": between(0, 2**32 - 1),  # numpy's seed range
    "data_seed": between(0, 2**32 - 1),
    "dataloader_num_workers": at_least(0),
    "dataloader_prefetch_factor": COUNT,
    "ddp_bucket_cap_mb": COUNT,
    "ddp_timeout": COUNT,
    "local_rank": at_least(-1),  # set by the launcher, -1 outside one
}


def option_range(field: dataclasses.Field) -> Range | None:
    """The range of one dataclass field: its metadata's, else TrainingArguments' table."""
    return field.metadata.get("range") or TRAINING_ARGUMENT_RANGES.get(field.name)


def numeric_fields(dataclass_types: Iterable[type]) -> list[dataclasses.Field]:
    """The int and float options of `dataclass_types`: what must have a range."""
    return [
        field
        for dtype in dataclass_types
        for field in dataclasses.fields(dtype)
        if field.init and any(name in str(field.type) for name in ("int", "float")) and "str" not in str(field.type)
    ]


def check_own_ranges(options: Any) -> None:
    """A TransferKit dataclass's `__post_init__` check: the same ranges, for options built in code, not parsed."""
    check_ranges([type(options)], dataclasses.asdict(options), where={name: "set in code" for name in vars(options)})


def check_ranges(dataclass_types: Iterable[type], values: dict[str, Any], where: dict[str, str]) -> None:
    """Raise on the first value outside its option's range; `where` says where each user-set key came from."""
    for field in numeric_fields(dataclass_types):
        allowed = option_range(field)
        if allowed is None or field.name not in values:
            continue
        value = values[field.name]
        if value not in allowed:
            source = where.get(field.name, "the recipe's defaults")
            raise TransferKitError(f"{field.name} must be {allowed}, got {value!r} ({source}).")
