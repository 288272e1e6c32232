"""Long texts: head_tail keeps a text's first and last tokens; windows reads it in overlapping windows, in training
each window an example with its document's label, in classify's evaluation and test predictions and in predict
with the windows' logits aggregated per document."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import BertForSequenceClassification, TrainingArguments

from recipes.classify import main as classify
from recipes.predict import main as predict_recipe
from tests.tiny import NEGATIVE, NEUTRAL, POSITIVE, build_tokenizer, tiny_bert_config
from transferkit.arguments import DataArguments
from transferkit.errors import TransferKitError
from transferkit.preprocess import LongText, document_windows, tokenize_for_classification
from transferkit.trainers import WINDOW_DOCUMENT, ClassificationTrainer, WindowCollator

TOKENIZER = build_tokenizer()
CLS, SEP = TOKENIZER.cls_token_id, TOKENIZER.sep_token_id
WORDS = NEUTRAL + POSITIVE + NEGATIVE  # every one a single token of the tiny vocabulary


def text_of(length: int, offset: int = 0) -> str:
    """`length` words, in a fixed cycle through the vocabulary, so that any slice of them is recognisable."""
    return " ".join(WORDS[(offset + index) % len(WORDS)] for index in range(length))


def token_ids(text: str) -> list[int]:
    return TOKENIZER(text, add_special_tokens=False)["input_ids"]


def tokenize(texts: list[str], long_text: LongText, max_seq_length: int, split: str = "test") -> Dataset:
    splits = DatasetDict({split: Dataset.from_dict({"text": texts})})
    data_args = DataArguments(train_file="(in memory)")
    args = TrainingArguments("unused", report_to="none")
    return tokenize_for_classification(splits, TOKENIZER, ["text"], max_seq_length, data_args, args, long_text)[split]


def test_head_tail_keeps_the_first_and_last_tokens_with_the_special_tokens_around_them():
    long, short = text_of(40), text_of(5, offset=7)
    rows = tokenize([long, short], LongText("head_tail", head_tokens=3), max_seq_length=12)
    ids = token_ids(long)
    assert len(ids) == 40
    assert rows[0]["input_ids"] == [CLS, *ids[:3], *ids[-7:], SEP]  # 12 = [CLS] + 3 head + 7 tail + [SEP]
    assert rows[0]["token_type_ids"] == [0] * 12 and rows[0]["attention_mask"] == [1] * 12
    assert rows[1]["input_ids"] == TOKENIZER(short)["input_ids"]  # a text that fits is read whole, as truncate does
    default = tokenize([long], LongText("head_tail"), max_seq_length=12)[0]["input_ids"]
    assert default == [CLS, *ids[:3], *ids[-7:], SEP]  # the default head: round(10 * 128 / 510) = 3
    truncated = tokenize([long], LongText("truncate"), max_seq_length=12)[0]["input_ids"]
    assert truncated == [CLS, *ids[:10], SEP]


def test_windows_are_the_documented_ones_and_the_tokenizers_own_overflowing_windows():
    """20 text tokens, windows of 10 (8 text tokens), starts 5 apart: starts 0, 5, 10, 15 (the last one reaching the
    end); the same windows transformers' fast tokenizer cuts with return_overflowing_tokens (stride = overlap)."""
    text = text_of(20)
    ids = token_ids(text)
    windows = document_windows([CLS, *ids, SEP], prefix=1, suffix=1, room=8, stride=5)
    assert windows == [[CLS, *ids[start : start + 8], SEP] for start in (0, 5, 10, 15)]
    overflowing = TOKENIZER(text, truncation=True, max_length=10, stride=3, return_overflowing_tokens=True)
    assert windows == overflowing["input_ids"]
    assert document_windows([CLS, *ids[:6], SEP], 1, 1, room=8, stride=5) == [[CLS, *ids[:6], SEP]]


@pytest.mark.parametrize("how", ["mean", "max"])
def test_window_logits_are_aggregated_per_document_in_input_order(tmp_path, how):
    """Documents short and long, mixed, through classify's prediction path (length-sorted batches of 2, windows
    read 3 at a time): one row of logits per document, in input order, equal to the mean / max of the logits the
    model gives each of its windows read directly."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(len(TOKENIZER), num_labels=3)).eval()
    lengths = [5, 40, 12, 3, 61, 20, 8]
    texts = [text_of(length, offset=index) for index, length in enumerate(lengths)]
    long_text = LongText("windows", window_stride=4, window_aggregation=how)
    rows = tokenize(texts, long_text, max_seq_length=10)
    assert [len(row["input_ids"]) for row in rows] == [length + 2 for length in lengths]  # whole, for the collator

    args = TrainingArguments(str(tmp_path), per_device_eval_batch_size=3, report_to="none", use_cpu=True)
    collator = WindowCollator(TOKENIZER, 10, long_text)
    trainer = ClassificationTrainer(
        model=model, args=args, processing_class=TOKENIZER, data_collator=collator, window_aggregation=how
    )
    args.per_device_eval_batch_size = 2  # documents per batch; windows are read 2 at a time too
    predicted = trainer.predict(rows.remove_columns("text")).predictions
    assert predicted.shape == (len(texts), 3)

    for index, text in enumerate(texts):
        windows = document_windows([CLS, *token_ids(text), SEP], 1, 1, room=8, stride=4)
        assert len(windows) == 1 + max(0, -(-(lengths[index] - 8) // 4))  # 1 + ceil((n - room) / stride)
        with torch.no_grad():
            logits = torch.cat([model(input_ids=torch.tensor([window])).logits for window in windows])
        expected = logits.mean(0) if how == "mean" else logits.max(0).values
        assert predicted[index] == pytest.approx(expected.numpy(), abs=1e-5), index


def test_the_window_collator_leaves_batches_that_fit_alone():
    collator = WindowCollator(TOKENIZER, 10, LongText("windows", window_stride=4))
    fits = [{"input_ids": [CLS, 7, 8, SEP], "label": 1}, {"input_ids": [CLS, 9, SEP], "label": 0}]
    batch = collator(fits)
    assert WINDOW_DOCUMENT not in batch and batch["input_ids"].shape == (2, 4)
    long = collator([fits[1], {"input_ids": [CLS, *range(10, 22), SEP], "label": 1}])  # 12 text tokens: 2 windows
    assert long[WINDOW_DOCUMENT].tolist() == [0, 1, 1] and long["labels"].tolist() == [0, 1, 1]


def test_the_train_split_is_read_as_windows_each_an_example_with_its_documents_labels(tmp_path):
    """A 40-token document becomes its 9 windows (room 8, stride 4: 1 + ceil(32 / 4)), the very windows
    document_windows cuts for evaluation, each with the document's label, multi-label list and regression value; a
    short document stays one example; the test split keeps its documents whole. Trainer's length-grouped sampler
    and the collator then hand every window to training once, with its label."""
    long, short = text_of(40), text_of(5, offset=3)
    columns = {"text": [long, short], "label": [1, 0], "tags": [[1.0, 0.0], [0.0, 1.0]], "score": [0.25, 0.75]}
    splits = DatasetDict({"train": Dataset.from_dict(columns), "test": Dataset.from_dict(columns)})
    data_args = DataArguments(train_file="(in memory)")
    args = TrainingArguments(str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=4)
    long_text = LongText("windows", window_stride=4)
    tokenized = tokenize_for_classification(splits, TOKENIZER, ["text"], 10, data_args, args, long_text)
    train = tokenized["train"]

    windows = document_windows([CLS, *token_ids(long), SEP], 1, 1, room=8, stride=4)
    assert len(windows) == 9 and len(train) == 10
    assert train["input_ids"] == [*windows, [CLS, *token_ids(short), SEP]]
    assert train["label"] == [1] * 9 + [0]
    assert train["tags"] == [[1.0, 0.0]] * 9 + [[0.0, 1.0]]
    assert train["score"] == [0.25] * 9 + [0.75]
    assert "text" not in train.column_names  # not stored once per window: training does not read it
    assert train["attention_mask"] == [[1] * len(ids) for ids in train["input_ids"]]
    assert [len(ids) for ids in tokenized["test"]["input_ids"]] == [42, 7]  # whole, for WindowCollator

    model = BertForSequenceClassification(tiny_bert_config(len(TOKENIZER), num_labels=2))
    args.train_sampling_strategy = "group_by_length"
    trainer = ClassificationTrainer(
        model=model,
        args=args,
        train_dataset=train.select_columns(["input_ids", "attention_mask", "token_type_ids", "label"]),
        processing_class=TOKENIZER,
        data_collator=WindowCollator(TOKENIZER, 10, long_text),
    )
    assert type(trainer._get_train_sampler()).__name__ == "LengthGroupedSampler"
    seen = []
    for batch in trainer.get_train_dataloader():
        assert WINDOW_DOCUMENT not in batch and batch["input_ids"].shape[1] <= 10
        for ids, mask, label in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), batch["labels"]):
            seen.append((tuple(ids[: sum(mask)]), int(label)))
    expected = [(tuple(ids), 1) for ids in windows] + [(tuple([CLS, *token_ids(short), SEP]), 0)]
    assert sorted(seen) == sorted(expected)


def test_a_classify_run_in_windows_trains_on_the_windows_and_its_dry_run_counts_them(tiny_bert, tmp_path, capsys):
    """An epoch of 24 documents (20 to 40 neutral words and 2 sentiment words each; room 14, stride 6) is as many
    examples as they have windows: the dry run plans those, the log says so, and the run takes their steps."""
    train = write_long_reviews(tmp_path / "train.csv", rows=24, seed=3)
    windows = sum(
        len(document_windows([CLS, *token_ids(row["text"]), SEP], 1, 1, room=14, stride=6)) for row in read_csv(train)
    )
    assert 3 * 24 <= windows <= 6 * 24
    args = ["--model_name_or_path", tiny_bert, "--train_file", train, "--max_seq_length", "16"]
    args += ["--long_text", "windows", "--window_stride", "6", "--validation_split_percentage", "0"]
    args += ["--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3"]
    args += ["--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1"]
    capsys.readouterr()
    assert classify([*args, "--output_dir", str(tmp_path / "dry"), "--dry_run", "true"]) == {}
    logged = capsys.readouterr().err  # the recipes log to stderr (transferkit.train.setup_logging)
    assert f"dry run: train: {windows} examples" in logged
    assert f"dry run: {-(-windows // 8)} optimizer steps ({-(-windows // 8)} per epoch" in logged
    assert f"the train split's 24 documents are {windows} training windows" in logged

    metrics = classify([*args, "--output_dir", str(tmp_path / "run")])
    assert metrics["train_samples"] == windows
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == -(-windows // 8)
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == state["global_step"] and all(math.isfinite(loss) for loss in losses)
    assert min(losses[-3:]) < losses[0]  # it learns: the sentiment words are in some windows only


@pytest.mark.parametrize(
    ("long_text", "columns", "message"),
    [
        (LongText("head_tail"), ["a", "b"], "reads one text, and this data is a text pair"),
        (LongText("windows", window_stride=11), ["a"], "window_stride 11 is more than the 10 text tokens"),
        (LongText("head_tail", head_tokens=12), ["a"], "head_tokens 12 is more than the 10 text tokens"),
    ],
)
def test_settings_that_cannot_work_are_an_error_before_tokenizing(long_text, columns, message):
    with pytest.raises(TransferKitError, match=message):
        long_text.check(TOKENIZER, len(columns), None, 12)


def write_long_reviews(path, rows: int, seed: int) -> str:
    """Reviews whose sentiment words come at the end of 20 to 40 neutral words: past a 16-token truncation."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for index in range(rows):
            positive = index % 2 == 0
            words = [rng.choice(NEUTRAL) for _ in range(rng.randint(20, 40))]
            words += [rng.choice(POSITIVE if positive else NEGATIVE) for _ in range(2)]
            writer.writerow([" ".join(words), "pos" if positive else "neg"])
    return str(path)


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_classify_evaluates_and_predicts_in_windows_and_predict_reads_them_the_same_way(tiny_bert, tmp_path):
    """classify with long_text windows: training reads windows, evaluation and the test predictions one row per
    document; predict, given no long-text option, reads the saved settings and gives the same probabilities;
    asked for truncate instead, other ones."""
    train = write_long_reviews(tmp_path / "train.csv", rows=48, seed=1)
    test = write_long_reviews(tmp_path / "test.csv", rows=9, seed=2)
    output_dir = tmp_path / "windows"
    args = ["--model_name_or_path", tiny_bert, "--train_file", train, "--test_file", test]
    args += ["--output_dir", str(output_dir), "--max_steps", "4", "--per_device_train_batch_size", "8"]
    args += ["--max_seq_length", "16", "--long_text", "windows", "--window_stride", "6", "--save_strategy", "no"]
    args += ["--validation_split_percentage", "25", "--report_to", "none", "--disable_tqdm", "true"]
    metrics = classify(args)
    assert 36 * 3 <= metrics["train_samples"] <= 36 * 6  # 36 training documents' windows (3 to 6 each)
    assert metrics["test_samples"] == 9  # documents, not windows
    assert (metrics["eval_accuracy"] * 12) == pytest.approx(round(metrics["eval_accuracy"] * 12))  # of 12 documents
    expected = read_csv(output_dir / "predictions.csv")
    assert [row["text"] for row in expected] == [row["text"] for row in read_csv(test)]

    same = tmp_path / "same.csv"
    predict_recipe(["--model_name_or_path", str(output_dir), "--test_file", test, "--output_file", str(same)])
    rows = read_csv(same)
    for row, gold in zip(rows, expected):
        assert float(row["score"]) == pytest.approx(float(gold[f"prob_{row['predicted']}"]), abs=1e-5)
    truncated = tmp_path / "truncated.csv"
    predict_recipe(
        ["--model_name_or_path", str(output_dir), "--test_file", test, "--output_file", str(truncated)]
        + ["--long_text", "truncate"]
    )
    assert [row["score"] for row in read_csv(truncated)] != [row["score"] for row in rows]
