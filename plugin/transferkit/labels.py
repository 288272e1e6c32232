"""Labels: which problem the data poses (single-label, multi-label, regression), the label set, and its encoding.

The rules are the ones users know from run_classification.py (lists mean multi-label, floats mean regression,
ClassLabel names are kept), made strict: a row without a label, a label type that changes between rows, or a
validation/test label that training never saw stops the run with the split, the value and the fix.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from datasets import ClassLabel, Dataset, DatasetDict, Value
from datasets import Sequence as SequenceFeature

from transferkit.errors import TransferKitError

logger = logging.getLogger(__name__)

SINGLE, MULTI, REGRESSION = "single_label_classification", "multi_label_classification", "regression"
NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


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
    # Each label column read once as a list: iterating datasets' lazy Column goes row by row (seconds per pass).
    labels = {name: split[column][:] for name, split in splits.items() if column in split.column_names}
    for name, values in labels.items():
        check_labels_present(splits[name], column, name, values=values)
        if problem_type == REGRESSION:
            _check_numeric(values, name, column)
        elif not isinstance(splits[name].features[column], ClassLabel):
            _check_one_kind(values, name, column, single_requested=problem_type == SINGLE)
    feature = train.features[column]
    detected = _detect_problem_type(feature, labels["train"])
    if problem_type is not None and problem_type != detected:
        _check_override(problem_type, detected, column)
    problem_type = problem_type or detected
    if problem_type == REGRESSION:
        return LabelSpec(REGRESSION, ())
    spec = LabelSpec(problem_type, _label_names(feature, labels["train"], problem_type))
    for name, values in labels.items():
        if name != "train" and not _is_class_label_of(splits[name], column, spec):
            _check_known(spec, values, name, column)
    _warn_rare(spec, labels["train"])
    return spec


def drop_missing_class_labels(splits: DatasetDict, column: str) -> DatasetDict:
    """Hub datasets mark "no label" as -1 in a ClassLabel column (GLUE's test splits, IMDB's `unsupervised`).

    A split where every row is -1 is unlabelled: its label column goes, so it is predicted and not scored. A split
    that mixes -1 with labels, or a train split without labels, cannot be used as it is: one error naming it.
    """
    cleaned = {}
    for name, split in splits.items():
        if column in split.column_names and isinstance(split.features[column], ClassLabel):
            missing = sum(1 for value in split[column][:] if value == -1)
            if missing == len(split) and name == "validation":
                raise TransferKitError(
                    f"The validation split has no labels ('{column}' is -1, datasets' 'no label', in every row): it "
                    "cannot score the model. Carve one from train (validation_split_percentage) or give "
                    "validation_file."
                )
            if missing == len(split) and name != "train":
                logger.info("The %s split has no labels (every row is -1): it is predicted, not scored.", name)
                split = split.remove_columns(column)
            elif missing:
                raise TransferKitError(
                    f"'{column}' in the {name} split is -1 (datasets' 'no label') in {missing} of its {len(split)} "
                    f"rows. Training needs a label in every row, and a split is either scored (all labelled) or "
                    f"only predicted (none): filter the -1 rows out or use another split."
                )
        cleaned[name] = split
    return DatasetDict(cleaned)


def has_text(batch: dict, columns: Sequence[str]) -> list[bool]:
    """Per row of a batch: does any of `columns` hold text (not None, not only whitespace)? A row without any is
    dropped from training (data.py) and needs no label (check_labels_present)."""
    rows = zip(*(batch[column] for column in columns))
    return [any(text is not None and str(text).strip() for text in row) for row in rows]


def check_labels_present(
    split: Dataset,
    column: str,
    name: str,
    text_columns: Sequence[str] = (),
    source: str = "",
    values: list | None = None,
) -> None:
    """Every row needs a label; rows with no text at all are not counted (they are dropped with a count, or kept
    unpredicted in a test split); a row with one empty side of a text pair has text, and needs its label."""
    values = split[column][:] if values is None else values
    texts = {text: split[text][:] for text in text_columns}
    counted = has_text(texts, text_columns) if text_columns else [True] * len(values)
    missing = [index for index, value in enumerate(values) if (value is None or value == "") and counted[index]]
    if missing:
        where = f" ({source})" if source else ""
        first_text = " / ".join(str(texts[text][missing[0]]) for text in text_columns)
        first = f", text {first_text!r:.80}" if text_columns else ""
        raise TransferKitError(
            f"{len(missing)} rows of the {name} split{where} have no value in '{column}' (first: data row "
            f"{missing[0] + 1}, counted from 1 after any header{first}). Fill in or drop those rows, or point "
            "label_column_name at the right column."
        )


def _kind(value) -> str:
    """What a label is, as the label rules see it: a number (also a string that reads as one), text, a list, ..."""
    if isinstance(value, list):
        return "list"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)) or (isinstance(value, str) and NUMBER.fullmatch(value)):
        return "number"
    return "text" if isinstance(value, str) else type(value).__name__


def _kinds(rows: Iterable[tuple[int, object]]) -> dict[str, tuple[int, int, object]]:
    """Kind -> (count, first row, first value) over (row, value) pairs, in the order the kinds first appear;
    missing values are skipped."""
    found: dict[str, tuple[int, int, object]] = {}
    for index, value in rows:
        if value is None:
            continue
        kind = _kind(value)
        count, first, example = found.get(kind, (0, index, value))
        found[kind] = (count + 1, first, example)
    return found


def _describe_kinds(kinds: dict[str, tuple[int, int, object]]) -> str:
    described = []
    for kind, (count, first, example) in kinds.items():
        values = "1 value" if count == 1 else f"{count} values"
        described.append(
            f"{kind if kind == 'text' else kind + 's'} ({values}, e.g. {example!r} in data row {first + 1})"
        )
    return ", ".join(described)


def _check_one_kind(values: list, split: str, column: str, single_requested: bool) -> None:
    """One label column, one kind of label: `1` next to `"pos"` (or `0.5` next to `"n/a"`) is a mistake to fix,
    not a third class; lists next to single labels cannot be encoded at all. Class names that happen to mix
    numbers and words pass when problem_type says single-label."""
    kinds = _kinds(enumerate(values))
    if "list" in kinds and len(kinds) > 1:
        raise TransferKitError(
            f"'{column}' in the {split} split mixes lists of labels and single labels: {_describe_kinds(kinds)}. "
            "Multi-label data needs a list in every row ([] for none); single-label data one label per row."
        )
    if "list" in kinds:
        kinds = _kinds((index, item) for index, row in enumerate(values) if row is not None for item in row)
    if len(kinds) > 1 and not single_requested:
        raise TransferKitError(
            f"'{column}' in the {split} split mixes label types: {_describe_kinds(kinds)}. Give every row the same "
            "kind of label (fix the odd rows: a typo?), or, if they are all class names, set "
            f"problem_type: {SINGLE}."
        )


def _check_numeric(values: list, split: str, column: str) -> None:
    kinds = _kinds(enumerate(values))
    if set(kinds) != {"number"}:
        raise TransferKitError(
            f"problem_type is {REGRESSION} but '{column}' in the {split} split holds {_describe_kinds(kinds)}. "
            "Regression needs a number in every row; for class names leave problem_type unset."
        )


def _detect_problem_type(feature, values: list) -> str:
    if isinstance(feature, ClassLabel):
        return SINGLE
    if isinstance(feature, (SequenceFeature, list)) or any(isinstance(value, list) for value in values):
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
    """A class with a handful of rows is often a typo ('pso' among 'pos'): say so, and name the likely label."""
    flat = [item for row in values for item in row] if spec.problem_type == MULTI else values
    counts = Counter(_label_str(value) for value in flat)
    largest = max(counts.values())
    for label, count in counts.items():
        if count >= 5:
            continue
        frequent = [other for other, n in counts.items() if n >= 5 * count and other != label]
        close = difflib.get_close_matches(label, frequent, n=1, cutoff=0.6)
        if close or count < 0.01 * largest:
            hint = f" Did you mean '{close[0]}' ({counts[close[0]]} rows)?" if close else " A typo in the data?"
            logger.warning(
                "Label '%s' has only %d training rows (largest class: %d).%s Fix those rows, or ignore this if the "
                "class is real.",
                label,
                count,
                largest,
                hint,
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
