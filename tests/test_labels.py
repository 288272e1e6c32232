"""Label rules: problem type detection, label sets, encodings, class weights, and the errors on bad labels."""

from __future__ import annotations

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Json, Value

from transferkit.errors import TransferKitError
from transferkit.labels import (
    MULTI,
    REGRESSION,
    SINGLE,
    check_labels_present,
    class_weights,
    encode_labels,
    infer_label_spec,
)


def splits(train: list, validation: list | None = None, features=None) -> DatasetDict:
    parts = {"train": Dataset.from_dict({"text": ["x"] * len(train), "label": train}, features=features)}
    if validation is not None:
        parts["validation"] = Dataset.from_dict(
            {"text": ["x"] * len(validation), "label": validation}, features=features
        )
    return DatasetDict(parts)


def json_labels(labels: list) -> Dataset:
    return Dataset.from_list(
        [{"text": "x", "label": label} for label in labels],
        features=Features({"text": Value("string"), "label": Json()}),
    )


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
    with pytest.raises(
        TransferKitError, match=r"1 rows of the train split have no value in 'label' \(first: data row 2"
    ):
        infer_label_spec(splits(["pos", None, "neg"]), "label", None)


def test_missing_label_names_the_file_row_and_text_and_skips_blank_texts():
    data = Dataset.from_dict({"text": ["good", "   ", "dull", "fun"], "label": ["pos", None, "", "pos"]})
    with pytest.raises(TransferKitError) as info:
        check_labels_present(data, "label", "train", ["text"], source="reviews.csv")
    message = str(info.value)  # the blank-text row 2 is dropped later with a count, so only row 3 counts
    assert message.startswith("1 rows of the train split (reviews.csv) have no value in 'label' (first: data row 3")
    assert "text 'dull'" in message


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        (
            [0, 1, 1, "pos"],
            r"mixes label types: numbers \(3 values, e.g. 0 in data row 1\), text \(1 value, e.g. 'pos'",
        ),
        (
            [0.5, "n/a", 1.5],
            r"numbers \(2 values, e.g. 0.5 in data row 1\), text \(1 value, e.g. 'n/a' in data row 2\)",
        ),
        ([True, False, "maybe"], r"booleans \(2 values, e.g. True in data row 1\), text"),
        ([["a"], "b", ["c"]], r"mixes lists of labels and single labels: lists \(2 values.*text \(1 value, e.g. 'b'"),
        (
            [["a"], ["b", 1]],
            r"mixes label types: text \(2 values, e.g. 'a' in data row 1\), numbers \(1 value, e.g. 1 in data row 2\)",
        ),
    ],
)
def test_mixed_label_types_are_refused(train, expected):
    data = DatasetDict({"train": json_labels(train)})  # as a JSON lines file with such labels loads
    with pytest.raises(TransferKitError, match=expected):
        infer_label_spec(data, "label", None)


def test_mixed_class_names_pass_when_single_label_is_asked_for():
    with pytest.raises(TransferKitError, match=r"numbers \(2 values, e.g. '1' in data row 1\), text \(2 values"):
        infer_label_spec(splits(["1", "0", "pos", "neg"]), "label", None)  # a csv column: all strings
    spec = infer_label_spec(splits(["1", "0", "unsure", "1"]), "label", SINGLE)
    assert spec.names == ("0", "1", "unsure")
    assert infer_label_spec(splits(["1", "2", "2"]), "label", None).names == ("1", "2")  # numbers as text: one kind


def test_regression_needs_numbers_in_every_split():
    with pytest.raises(TransferKitError, match=r"regression but 'label' in the train split holds text \(2 values"):
        infer_label_spec(splits(["pos", "neg"]), "label", REGRESSION)
    with pytest.raises(TransferKitError, match=r"'label' in the validation split holds numbers .*text \(1 value"):
        infer_label_spec(
            DatasetDict({"train": json_labels([0.5, 1.5]), "validation": json_labels([0.2, "high"])}),
            "label",
            REGRESSION,
        )


def test_list_labels_in_single_label_setting():
    with pytest.raises(TransferKitError, match="holds lists of labels"):
        infer_label_spec(splits([["a"], ["b"]]), "label", SINGLE)


def test_missing_label_column_lists_columns():
    with pytest.raises(TransferKitError, match=r"column 'target' is not in the train split.*text, label"):
        infer_label_spec(splits(["a"]), "target", None)


def test_rare_label_warns(caplog):
    infer_label_spec(splits(["pos"] * 300 + ["neg"] * 300 + ["pso"]), "label", None)
    assert "Label 'pso' has only 1 training rows (largest class: 300). Did you mean 'pos' (300 rows)?" in caplog.text


def test_label_typo_warns_in_a_small_dataset_too(caplog):
    """Under 1% of the largest class is never reached with 40 rows a class; a close spelling is enough."""
    infer_label_spec(splits(["pos"] * 40 + ["neg"] * 40 + ["Neg", "neg "]), "label", None)
    assert "Label 'Neg' has only 1 training rows (largest class: 40). Did you mean 'neg' (40 rows)?" in caplog.text
    assert "Label 'neg ' has only 1 training rows" in caplog.text
    caplog.clear()
    infer_label_spec(splits(["pos"] * 40 + ["neg"] * 40 + ["mixed"] * 3), "label", None)  # a small real class
    assert "mixed" not in caplog.text


def test_class_weights_auto_and_explicit():
    spec = infer_label_spec(splits(["a", "a", "a", "b"]), "label", None)
    assert class_weights(spec, [0, 0, 0, 1], ["auto"]) == pytest.approx([4 / 6, 2.0])
    assert class_weights(spec, [0, 1], ["1", "3"]) == [1.0, 3.0]
    with pytest.raises(TransferKitError, match="one weight per label"):
        class_weights(spec, [0, 1], ["1"])


# -- Hub datasets whose ClassLabel column holds -1 for "no label" (GLUE test splits, IMDB's `unsupervised`) ----------
@pytest.fixture
def hub_dataset(monkeypatch, reviews_csv):
    """`dataset_name` resolves to an in-memory DatasetDict shaped like IMDB: ClassLabel train, a hidden test split
    (every label -1) and a large `unsupervised` split that the run must never tokenize."""
    import transferkit.data

    train = Dataset.from_csv(reviews_csv).class_encode_column("label")
    layout = {"train": train, "test": train.select(range(20)).map(lambda row: {"label": -1})}
    layout["unsupervised"] = train.map(lambda row: {"label": -1})

    def fake_load_dataset(name, *args, **kwargs):
        assert name == "someone/imdb-like"
        return DatasetDict(layout)

    monkeypatch.setattr(transferkit.data, "load_dataset", fake_load_dataset)
    return layout


def run_on_hub_dataset(tiny_bert, tmp_path, monkeypatch) -> tuple[dict, list[str]]:
    import transferkit.recipes.classify as classify

    tokenized = []
    original = classify.tokenize_for_classification

    def spy(splits, *args, **kwargs):
        tokenized.extend(splits)
        return original(splits, *args, **kwargs)

    monkeypatch.setattr(classify, "tokenize_for_classification", spy)
    args = ["--model_name_or_path", tiny_bert, "--dataset_name", "someone/imdb-like", "--output_dir", str(tmp_path)]
    args += "--max_steps 2 --per_device_train_batch_size 8 --save_strategy no --report_to none".split()
    return classify.main(args), tokenized


def test_a_test_split_without_labels_is_predicted_and_not_scored(hub_dataset, tiny_bert, tmp_path, monkeypatch):
    import csv

    metrics, tokenized = run_on_hub_dataset(tiny_bert, tmp_path / "run", monkeypatch)
    assert sorted(tokenized) == ["test", "train", "validation"]  # `unsupervised` is not used, so not tokenized
    assert not [key for key in metrics if key.startswith("test_")] and "eval_accuracy" in metrics
    with open(tmp_path / "run" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20 and "label" not in rows[0] and {row["predicted"] for row in rows} <= {"neg", "pos"}


def test_a_split_mixing_labels_and_minus_one_is_refused(hub_dataset, tiny_bert, tmp_path, monkeypatch):
    hub_dataset["test"] = (
        hub_dataset["train"]
        .select(range(20))
        .map(lambda row, index: {"label": -1 if index < 5 else row["label"]}, with_indices=True)
    )
    with pytest.raises(TransferKitError, match=r"test split.*5 of its 20 rows.*-1"):
        run_on_hub_dataset(tiny_bert, tmp_path / "run", monkeypatch)
    assert not (tmp_path / "run").exists()


def test_a_validation_split_without_labels_is_refused_with_the_reason(hub_dataset, tiny_bert, tmp_path, monkeypatch):
    hub_dataset["validation"] = hub_dataset["test"]  # every label -1
    with pytest.raises(TransferKitError, match="validation split has no labels .*-1.* every row"):
        run_on_hub_dataset(tiny_bert, tmp_path / "run", monkeypatch)
