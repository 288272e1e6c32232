"""Label rules: problem type detection, label sets, encodings, class weights, and the errors on bad labels."""

from __future__ import annotations

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from transferkit.errors import TransferKitError
from transferkit.labels import MULTI, REGRESSION, SINGLE, class_weights, encode_labels, infer_label_spec


def splits(train: list, validation: list | None = None, features=None) -> DatasetDict:
    parts = {"train": Dataset.from_dict({"text": ["x"] * len(train), "label": train}, features=features)}
    if validation is not None:
        parts["validation"] = Dataset.from_dict(
            {"text": ["x"] * len(validation), "label": validation}, features=features
        )
    return DatasetDict(parts)


def test_string_labels_single_label_sorted():
    data = splits(["pos", "neg", "pos"], ["neg"])
    spec = infer_label_spec(data, "label", None)
    assert spec.problem_type == SINGLE and spec.names == ("neg", "pos")
    assert spec.id2label == {0: "neg", 1: "pos"}
    encoded = encode_labels(data, spec, "label")
    assert encoded["train"]["label"] == [1, 0, 1]
    assert isinstance(encoded["train"].features["label"], ClassLabel)


def test_int_labels_sorted_numerically():
    spec = infer_label_spec(splits([10, 2, 2, 10, 1]), "label", None)
    assert spec.names == ("1", "2", "10")


def test_classlabel_names_kept():
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    data = splits([1, 0, 1], [0], features=features)
    spec = infer_label_spec(data, "label", None)
    assert spec.names == ("neg", "pos")
    assert encode_labels(data, spec, "label")["validation"]["label"] == [0]


def test_multi_label_multi_hot():
    data = splits([["a", "b"], ["c"], []], [["b"]])
    spec = infer_label_spec(data, "label", None)
    assert spec.problem_type == MULTI and spec.names == ("a", "b", "c")
    assert encode_labels(data, spec, "label")["train"]["label"] == [
        [1.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.0] * 3,
    ]


def test_regression_floats():
    data = splits([0.5, 1.25, 3.0])
    spec = infer_label_spec(data, "label", None)
    assert spec.problem_type == REGRESSION and spec.num_labels == 1
    assert encode_labels(data, spec, "label")["train"]["label"] == [0.5, 1.25, 3.0]


def test_unseen_validation_label_is_named():
    with pytest.raises(
        TransferKitError, match=r"validation split has label 'neutral' \(1 rows\).*Known labels: neg, pos"
    ):
        infer_label_spec(splits(["pos", "neg"], ["neutral", "pos"]), "label", None)


def test_rows_without_label():
    with pytest.raises(TransferKitError, match=r"1 rows of the train split have no value in 'label' \(first: row 1\)"):
        infer_label_spec(splits(["pos", None, "neg"]), "label", None)


def test_list_labels_in_single_label_setting():
    with pytest.raises(TransferKitError, match="holds lists of labels"):
        infer_label_spec(splits([["a"], ["b"]]), "label", SINGLE)


def test_missing_label_column_lists_columns():
    with pytest.raises(TransferKitError, match=r"column 'target' is not in the train split.*text, label"):
        infer_label_spec(splits(["a"]), "target", None)


def test_rare_label_warns(caplog):
    infer_label_spec(splits(["pos"] * 300 + ["neg"] * 300 + ["pso"]), "label", None)
    assert "Label 'pso' has only 1 training rows" in caplog.text


def test_class_weights_auto_and_explicit():
    spec = infer_label_spec(splits(["a", "a", "a", "b"]), "label", None)
    assert class_weights(spec, [0, 0, 0, 1], ["auto"]) == pytest.approx([4 / 6, 2.0])
    assert class_weights(spec, [0, 1], ["1", "3"]) == [1.0, 3.0]
    with pytest.raises(TransferKitError, match="one weight per label"):
        class_weights(spec, [0, 1], ["1"])
