"""Labels: which problem the data poses (single-label, multi-label, regression), the label set, and its encoding.

The rules are the ones users know from run_classification.py (lists mean multi-label, floats mean regression,
ClassLabel names are kept), made strict: a row without a label, a label type that changes between rows, or a
validation/test label that training never saw stops the run with the split, the value and the fix.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from datasets import ClassLabel, DatasetDict, Sequence, Value

from transferkit.errors import TransferKitError

logger = logging.getLogger(__name__)

SINGLE, MULTI, REGRESSION = "single_label_classification", "multi_label_classification", "regression"


@dataclass(frozen=True)
class LabelSpec:
    problem_type: str
    names: tuple[str, ...]  # empty for regression

    @property
    def num_labels(self) -> int:
        return 1 if self.problem_type == REGRESSION else len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names)) if self.names else {0: "score"}

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in self.id2label.items()}


def infer_label_spec(splits: DatasetDict, column: str, problem_type: str | None) -> LabelSpec:
    """Detect the problem type from the train labels and fix the label set (from train; others are checked)."""
    train = splits["train"]
    if column not in train.column_names:
        raise TransferKitError(
            f"label_column_name: column '{column}' is not in the train split. "
            f"Columns there: {', '.join(train.column_names)}."
        )
    for name, split in splits.items():
        if column in split.column_names:
            _check_no_missing(split[column], name, column)
    feature = train.features[column]
    detected = _detect_problem_type(feature, train[column])
    if problem_type is not None and problem_type != detected:
        _check_override(problem_type, detected, column)
    problem_type = problem_type or detected
    if problem_type == REGRESSION:
        return LabelSpec(REGRESSION, ())
    spec = LabelSpec(problem_type, _label_names(feature, train[column], problem_type))
    for name, split in splits.items():
        if name != "train" and column in split.column_names and not _is_class_label_of(split, column, spec):
            _check_known(spec, split[column], name, column)
    _warn_rare(spec, train[column])
    return spec


def _check_no_missing(values: list, split: str, column: str) -> None:
    missing = [index for index, value in enumerate(values) if value is None or value == ""]
    if missing:
        raise TransferKitError(
            f"{len(missing)} rows of the {split} split have no value in '{column}' (first: row {missing[0]}). "
            "Fill in or drop those rows, or point label_column_name at the right column."
        )


def _detect_problem_type(feature, values: list) -> str:
    if isinstance(feature, ClassLabel):
        return SINGLE
    if isinstance(feature, (Sequence, list)) or any(isinstance(value, list) for value in values):
        return MULTI
    if all(isinstance(value, float) for value in values) and not all(value.is_integer() for value in values):
        return REGRESSION
    if isinstance(feature, Value) and feature.dtype.startswith("float") and len(set(values)) > 20:
        return REGRESSION
    return SINGLE


def _check_override(requested: str, detected: str, column: str) -> None:
    if detected == MULTI and requested != MULTI:
        raise TransferKitError(
            f"problem_type is {requested} but '{column}' holds lists of labels. "
            f"Set problem_type: {MULTI} (or leave it unset), or give one label per row."
        )
    if requested == MULTI:
        raise TransferKitError(
            f"problem_type is {MULTI} but '{column}' holds one label per row; multi-label needs a list per row."
        )


def _label_names(feature, values: list, problem_type: str) -> tuple[str, ...]:
    if isinstance(feature, ClassLabel):
        return tuple(feature.names)
    if problem_type == MULTI:
        values = [item for row in values for item in row]
    distinct = set(values)
    ordered = sorted(distinct) if all(isinstance(v, (int, float)) for v in distinct) else sorted(map(str, distinct))
    return tuple(_label_str(value) for value in ordered)


def _label_str(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _check_known(spec: LabelSpec, values: list, split: str, column: str) -> None:
    known = set(spec.names)
    seen = (item for row in values for item in row) if spec.problem_type == MULTI else iter(values)
    unseen = Counter(_label_str(value) for value in seen if _label_str(value) not in known)
    if unseen:
        label, count = unseen.most_common(1)[0]
        raise TransferKitError(
            f"The {split} split has label '{label}' ({count} rows) that the train split never has. "
            f"Known labels: {', '.join(spec.names)}. Fix the typo, or add training examples of '{label}'."
        )


def _is_class_label_of(split, column: str, spec: LabelSpec) -> bool:
    """True when the column already holds ids of exactly this label set (a Hub dataset's ClassLabel)."""
    feature = split.features[column]
    if isinstance(feature, ClassLabel) and tuple(feature.names) != spec.names:
        raise TransferKitError(
            f"'{column}' has different class names in different splits: {feature.names} vs {list(spec.names)}."
        )
    return isinstance(feature, ClassLabel)


def _warn_rare(spec: LabelSpec, values: list) -> None:
    flat = [item for row in values for item in row] if spec.problem_type == MULTI else values
    counts = Counter(_label_str(value) for value in flat)
    largest = max(counts.values())
    for label, count in counts.items():
        if count < 5 and count < 0.01 * largest:
            logger.warning(
                "Label '%s' has only %d training rows (largest class: %d). A typo in the data? Check it.",
                label,
                count,
                largest,
            )


def encode_labels(splits: DatasetDict, spec: LabelSpec, column: str) -> DatasetDict:
    """Turn labels into what the model's loss expects, in a column named 'label'; single-label becomes ClassLabel."""
    encoded = {}
    for name, split in splits.items():
        if column not in split.column_names:
            encoded[name] = split
            continue
        if not _is_class_label_of(split, column, spec):
            split = split.map(
                _encode_batch,
                batched=True,
                fn_kwargs={"spec": spec, "column": column},
                desc=f"Encoding {name} labels",
            )
        elif column != "label":
            split = split.rename_column(column, "label")
        if column != "label" and column in split.column_names:
            split = split.remove_columns(column)
        if spec.problem_type == SINGLE:
            split = split.cast_column("label", ClassLabel(names=list(spec.names)))
        encoded[name] = split
    return DatasetDict(encoded)


def _encode_batch(batch: dict, spec: LabelSpec, column: str) -> dict:
    values = batch[column]
    if spec.problem_type == REGRESSION:
        return {"label": [float(value) for value in values]}
    ids = spec.label2id
    if spec.problem_type == MULTI:
        hot = []
        for row in values:
            vector = [0.0] * spec.num_labels
            for item in row:
                vector[ids[_label_str(item)]] = 1.0
            hot.append(vector)
        return {"label": hot}
    return {"label": [ids[_label_str(value)] for value in values]}


def class_weights(spec: LabelSpec, train_labels: list[int], requested: list[str]) -> list[float]:
    """Loss weight per class: 'auto' is n / (k * count), so each class contributes equally to the loss."""
    if spec.problem_type != SINGLE:
        raise TransferKitError(f"class_weights is for single-label classification; this data is {spec.problem_type}.")
    if requested == ["auto"]:
        counts = Counter(train_labels)
        total, classes = len(train_labels), spec.num_labels
        return [total / (classes * counts[index]) if counts[index] else 0.0 for index in range(classes)]
    if len(requested) != spec.num_labels:
        raise TransferKitError(
            f"class_weights has {len(requested)} values but there are {spec.num_labels} labels "
            f"({', '.join(spec.names)}); give one weight per label, in that order, or 'auto'."
        )
    return [float(weight) for weight in requested]
