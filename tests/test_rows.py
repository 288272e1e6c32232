"""Every input row is accounted for: an empty side of a text pair is valid input, a row with no text at all is
dropped from training and validation with a count, and keeps its place (not predicted) in predictions.csv."""

from __future__ import annotations

import csv
import random

import numpy as np
import pytest
from datasets import ClassLabel, Dataset
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, TrainingArguments
from transformers.trainer_utils import PredictionOutput

from recipes.classify import main
from tests.tiny import NEUTRAL, build_tokenizer, review
from transferkit.arguments import DataArguments, ModelArguments
from transferkit.data import load_classification_splits, load_corpus_splits
from transferkit.labels import SINGLE, LabelSpec
from transferkit.preprocess import _tokenize_batch
from transferkit.reports import predict_and_report
from transferkit.trainers import ClassificationTrainer

HEADER = ["condition", "review", "label"]
MODEL = ModelArguments(model_name_or_path="unused")


def reviews_with_conditions(rows: int, seed: int) -> list[list[str]]:
    """Rows of (condition, review, label); every third row has no condition, as a review site's export might."""
    rng = random.Random(seed)
    table = []
    for index in range(rows):
        positive = index % 2 == 0
        condition = "" if index % 3 == 0 else rng.choice(NEUTRAL[:8])
        table.append([condition, review(rng, positive), "pos" if positive else "neg"])
    return table


def write_csv(path, rows: list[list[str]]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return str(path)


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


BLANK_TRAIN = [["", "", "pos"], ["  ", "", "neg"]]  # no text at all: dropped from training, with a count
BLANK_VALIDATION = [["", " ", "pos"]]


def test_test_file_rows_keep_their_place_in_predictions(tiny_bert, tmp_path, capsys):
    """predictions.csv has one row per test-file row, in order; a row with no text is there, not predicted."""
    train = write_csv(tmp_path / "train.csv", reviews_with_conditions(40, seed=0) + BLANK_TRAIN)
    validation = write_csv(tmp_path / "validation.csv", reviews_with_conditions(8, seed=1) + BLANK_VALIDATION)
    test_rows = reviews_with_conditions(10, seed=2)
    test_rows.insert(4, ["", "", "neg"])  # both sides empty, labelled
    test_rows.append(["", "", ""])  # a trailing empty row, as spreadsheet exports leave them: no text, no label
    test = write_csv(tmp_path / "test.csv", test_rows)
    out = tmp_path / "run"
    metrics = main(
        [
            "--model_name_or_path",
            tiny_bert,
            "--train_file",
            train,
            "--validation_file",
            validation,
            "--test_file",
            test,
            "--text_column_names",
            "condition",
            "review",
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--max_seq_length",
            "32",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
        ]
    )
    written, given = read_csv(out / "predictions.csv"), read_csv(test)
    assert len(written) == len(given) == 12
    for column in HEADER:  # the texts (and gold labels) match the file row by row: nothing dropped or reordered
        assert [row[column] for row in written] == [row[column] for row in given], column
    not_predicted = [index for index, row in enumerate(written) if not row["predicted"]]
    assert not_predicted == [4, 11]  # the rows without any text, and only those
    assert all(row["prob_pos"] == row["prob_neg"] == "" for row in (written[4], written[11]))
    assert all(row["predicted"] in ("neg", "pos") for index, row in enumerate(written) if index not in (4, 11))
    assert metrics["test_samples"] == 10 and metrics["test_not_predicted"] == 2  # scored: the 10 rows with text
    log = capsys.readouterr().err  # the recipe's setup_logging replaces the root handlers (and caplog's)
    assert "Dropped 2 rows of the train split with an empty text" in log
    assert "Dropped 1 rows of the validation split with an empty text" in log


class ScoringTrainer:
    """Stands in for the Trainer: a row's logits are (0, its review's length), so every row's scores are its own."""

    def __init__(self, output_dir) -> None:
        self.args, self.predicted = type("Args", (), {"output_dir": str(output_dir)})(), None

    def predict(self, dataset: Dataset, metric_key_prefix: str) -> PredictionOutput:
        self.predicted = dataset
        logits = np.array([[0.0, float(len(text))] for text in dataset["review"]])
        return PredictionOutput(logits, np.array(dataset["label"]), {f"{metric_key_prefix}_accuracy": 1.0})

    def log_metrics(self, *args) -> None: ...

    def save_metrics(self, *args) -> None: ...

    def is_world_process_zero(self) -> bool:
        return True


def test_predictions_line_up_with_the_rows_they_were_made_for(tmp_path):
    rows = {
        "condition": [None, "film", None, "plot", " "],
        "review": ["a good film", "bad", None, "a bland plot , really", "fun"],
        "label": [1, 0, None, 0, 1],
    }
    test = Dataset.from_dict(rows).cast_column("label", ClassLabel(names=["neg", "pos"]))
    trainer = ScoringTrainer(tmp_path)
    metrics = predict_and_report(trainer, test, ["condition", "review"], LabelSpec(SINGLE, ("neg", "pos")))
    assert trainer.predicted["review"] == ["a good film", "bad", "a bland plot , really", "fun"]  # the rows with text
    assert metrics == {"test_accuracy": 1.0, "test_samples": 4, "test_not_predicted": 1}
    written = read_csv(tmp_path / "predictions.csv")
    assert [row["review"] for row in written] == ["a good film", "bad", "", "a bland plot , really", "fun"]
    assert [row["condition"] for row in written] == ["", "film", "", "plot", " "]
    assert [row["label"] for row in written] == ["pos", "neg", "", "neg", "pos"]
    for row in written:
        expected = "" if not row["review"] else f"{1 / (1 + np.exp(-len(row['review']))):.6f}"
        assert row["prob_pos"] == expected


@pytest.mark.parametrize(
    ("setting", "predicted"), [({"dataloader_drop_last": True}, 8), ({"eval_do_concat_batches": False}, 10)]
)
def test_trainer_settings_that_change_prediction_keep_every_row(tiny_bert, tmp_path, setting, predicted):
    """Trainer applies dataloader_drop_last to prediction too (the last incomplete batch comes back unpredicted), and
    eval_do_concat_batches false returns predictions batch by batch: every row still has its line, in order."""
    tokenizer = build_tokenizer()
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    texts = [f"good film {'the ' * index}" for index in range(10)]
    test = Dataset.from_dict({"text": texts}).map(lambda batch: tokenizer(batch["text"]), batched=True)
    args = TrainingArguments(
        tmp_path, per_device_eval_batch_size=4, report_to="none", dataloader_pin_memory=False, **setting
    )
    trainer = ClassificationTrainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer))
    predict_and_report(trainer, test, ["text"], LabelSpec(SINGLE, ("neg", "pos")))
    written = read_csv(tmp_path / "predictions.csv")
    assert [row["text"] for row in written] == texts
    assert [bool(row["predicted"]) for row in written] == [True] * predicted + [False] * (10 - predicted)


def test_a_missing_side_of_a_pair_is_encoded_as_empty_text():
    tokenizer = build_tokenizer()
    batch = {"condition": [None, "   ", "film"], "review": ["a good film", "a bad film", None]}
    encoded = _tokenize_batch(batch, tokenizer, ["condition", "review"], max_seq_length=32)
    expected = tokenizer(["", "   ", "film"], ["a good film", "a bad film", ""], truncation=True, max_length=32)
    assert encoded["input_ids"] == expected["input_ids"]
    assert encoded["token_type_ids"] == expected["token_type_ids"]
    assert "none" not in tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])  # never the text 'None'


def test_splits_keep_half_empty_pairs_and_the_test_split_keeps_every_row(tmp_path, caplog):
    """Training keeps a pair with one empty side; max_test_samples counts the test file's rows, empty ones too."""
    train = write_csv(tmp_path / "train.csv", reviews_with_conditions(30, seed=0) + BLANK_TRAIN)
    test_rows = reviews_with_conditions(6, seed=2)
    test_rows[1:1] = [["", "", ""], [" ", "", "pos"]]
    test = write_csv(tmp_path / "test.csv", test_rows)
    data_args = DataArguments(
        train_file=train,
        test_file=test,
        text_column_names=["condition", "review"],
        validation_split_percentage=0,
        max_test_samples=5,
    )
    with caplog.at_level("INFO"):
        splits, _, spec = load_classification_splits(data_args, MODEL, None, seed=0)
    assert len(splits["train"]) == 30 and splits["train"]["condition"].count(None) == 10
    assert "Dropped 2 rows of the train split with an empty text" in caplog.text
    assert splits["test"]["review"] == [row[1] or None for row in test_rows[:5]]
    labels = [None if label is None else spec.names[label] for label in splits["test"]["label"]]
    assert labels == [row[2] or None for row in test_rows[:5]]


def test_a_corpus_drops_rows_without_text_and_keeps_half_empty_ones(tmp_path, caplog):
    rows = [["film", "a good film", ""], ["", "a bad film", ""], ["", "  ", ""]] * 4
    data_args = DataArguments(
        train_file=write_csv(tmp_path / "corpus.csv", rows),
        text_column_names=["condition", "review"],
        validation_split_percentage=0,
    )
    with caplog.at_level("INFO"):
        splits, _ = load_corpus_splits(data_args, MODEL, streaming=False, seed=0)
    assert len(splits["train"]) == 8
    assert "Dropped 4 rows of the train split with an empty text" in caplog.text


@pytest.mark.parametrize("empty", [None, ""])
def test_tokenize_batch_single_column_none(empty):
    tokenizer = build_tokenizer()
    encoded = _tokenize_batch({"text": [empty, "good"]}, tokenizer, ["text"], max_seq_length=8)
    assert encoded["input_ids"][0] == tokenizer("")["input_ids"]
