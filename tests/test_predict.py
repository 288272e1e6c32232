"""The predict recipe, `transferkit predict` and `transferkit.predict.predict` on tiny classifiers trained once by the
classify recipe: the same labels as classify's own test predictions, in input order, every input column kept."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import Dataset

from recipes.classify import main as classify
from recipes.predict import main as predict_recipe
from tests.tiny import NEGATIVE, NEUTRAL, POSITIVE, launch_two_processes, write_reviews_csv
from transferkit import predict as predict_module
from transferkit import tables
from transferkit.cli import main as cli
from transferkit.errors import TransferKitError
from transferkit.labels import MULTI, REGRESSION, SINGLE, LabelSpec
from transferkit.predict import predict
from transferkit.reports import result_columns, with_predictions, write_table

COLUMNS = ["id", "text", "label", "source"]


def write_new_data(path, rows: int = 25, seed: int = 3) -> str:
    """Reviews whose lengths jump up and down (length-sorted batches must be put back in order), extra columns on
    both sides of the text, and one row without text (kept in place, not predicted)."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for index in range(rows):
            positive = rng.random() < 0.5
            words = [rng.choice(NEUTRAL) for _ in range(rng.choice([1, 12, 3, 20]))]
            words += [rng.choice(POSITIVE if positive else NEGATIVE) for _ in range(2)]
            rng.shuffle(words)
            text = "" if index == 7 else " ".join(words)
            label = "" if index == 7 else ("pos" if positive else "neg")
            writer.writerow([f"row{index}", text, label, f"shop{index % 3}"])
    return str(path)


def classify_args(model: str, train: str, test: str, output_dir, *extra: str) -> list[str]:
    return [
        *("--model_name_or_path", model, "--train_file", train, "--test_file", test, "--output_dir", str(output_dir)),
        *("--max_steps", "6", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--seed", "1"),
        *("--validation_split_percentage", "0", "--save_strategy", "no", "--max_seq_length", "32"),
        *("--report_to", "none", "--disable_tqdm", "true", *extra),
    ]


@pytest.fixture(scope="module")
def runs(tiny_bert, tmp_path_factory) -> dict[str, str]:
    """A full classify run and a LoRA run (merged too) on the same data, each with its test predictions.csv."""
    root = tmp_path_factory.mktemp("predict")
    train = write_reviews_csv(str(root / "train.csv"), rows=80)
    test = write_new_data(root / "new.csv")
    classify(classify_args(tiny_bert, train, test, root / "full"))
    lora = ["--use_peft", "true", "--lora_r", "4", "--merge_adapter", "true", "--learning_rate", "1e-2"]
    classify(classify_args(tiny_bert, train, test, root / "lora", *lora))
    return {"data": test, "full": str(root / "full"), "lora": str(root / "lora"), "root": str(root)}


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def run_predict(model: str, data: str, output, *extra: str) -> list[dict]:
    predict_recipe(["--model_name_or_path", model, "--test_file", data, "--output_file", str(output), *extra])
    return read_csv(output)


def test_full_model_predicts_what_classify_predicted_in_input_order(runs, tmp_path):
    rows = run_predict(runs["full"], runs["data"], tmp_path / "labelled.csv", "--per_device_eval_batch_size", "4")
    expected = read_csv(os.path.join(runs["full"], "predictions.csv"))
    assert list(rows[0]) == [*COLUMNS, "predicted", "score"]  # every input column, in its order, then the results
    assert [{key: row[key] for key in COLUMNS} for row in rows] == read_csv(runs["data"])  # as read, in order
    assert [row["text"] for row in rows] == [row["text"] for row in expected]
    assert [row["predicted"] for row in rows] == [row["predicted"] for row in expected]
    assert len({row["score"] for row in rows}) == 25  # every row its own score: a row out of place would show
    assert rows[7]["predicted"] == rows[7]["score"] == ""  # no text: kept in place, not predicted
    for row, gold in zip(rows, expected):
        if row["predicted"]:
            assert float(row["score"]) == pytest.approx(float(gold[f"prob_{row['predicted']}"]), abs=1e-5)


@pytest.mark.parametrize("folder", ["adapter", "adapter without its tokenizer", "merged"])
def test_lora_adapter_and_merged_model_predict_what_classify_predicted(runs, tmp_path, folder):
    """The adapter folder (labels from label_config.json, the trained head from modules_to_save; the base model's
    tokenizer where the folder has none) and the merged model label each row as the LoRA run did."""
    model = {"adapter": runs["lora"], "merged": os.path.join(runs["lora"], "merged")}.get(folder)
    if model is None:
        model = str(tmp_path / "adapter")
        shutil.copytree(runs["lora"], model, ignore=shutil.ignore_patterns("merged", "tokenizer*"))
    assert os.path.isfile(os.path.join(runs["lora"], "adapter_config.json"))  # the adapter folder, no config.json
    assert not os.path.isfile(os.path.join(runs["lora"], "config.json"))
    rows = run_predict(model, runs["data"], tmp_path / "labelled.csv", "--all_probabilities", "true")
    expected = read_csv(os.path.join(runs["lora"], "predictions.csv"))
    assert [row["predicted"] for row in rows] == [row["predicted"] for row in expected]
    for row, gold in zip(rows, expected):
        if row["predicted"]:
            assert float(row["prob_pos"]) == pytest.approx(float(gold["prob_pos"]), abs=1e-5)


@pytest.mark.parametrize("extension", [".jsonl", ".parquet"])
def test_cli_writes_jsonl_and_parquet_with_every_probability(runs, tmp_path, extension):
    output = tmp_path / f"labelled{extension}"
    assert cli(["predict", runs["full"], runs["data"], "--output", str(output), "--all_probabilities", "true"]) == 0
    if extension == ".jsonl":
        rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    else:
        rows = pq.read_table(output).to_pylist()
    expected = read_csv(os.path.join(runs["full"], "predictions.csv"))
    assert list(rows[0]) == [*COLUMNS, "predicted", "score", "prob_neg", "prob_pos"]
    assert [row["id"] for row in rows] == [f"row{index}" for index in range(25)]
    assert [row["predicted"] or "" for row in rows] == [row["predicted"] for row in expected]
    predicted = [row for row in rows if row["predicted"]]
    assert all(row["prob_neg"] + row["prob_pos"] == pytest.approx(1, abs=1e-5) for row in predicted)
    assert all(row["score"] == max(row["prob_neg"], row["prob_pos"]) for row in predicted)
    assert rows[7]["predicted"] is None and rows[7]["score"] is None
    assert not [name for name in os.listdir(tmp_path) if name != output.name]  # no temporary file left


def test_python_entry_point_takes_texts_and_datasets(runs):
    recipe_rows = read_csv(os.path.join(runs["full"], "predictions.csv"))
    texts = [row["text"] for row in recipe_rows]
    results = predict(runs["full"], texts, batch_size=4)
    assert [result and result["label"] for result in results] == [row["predicted"] or None for row in recipe_rows]
    assert results[0]["score"] == pytest.approx(float(recipe_rows[0][f"prob_{results[0]['label']}"]), abs=1e-5)
    dataset = Dataset.from_dict({"review": texts, "n": list(range(len(texts)))})
    labelled = predict(runs["full"], dataset, text_column_names=["review"], all_probabilities=True)
    assert labelled.column_names == ["review", "n", "predicted", "score", "prob_neg", "prob_pos"]
    assert labelled["predicted"] == [result and result["label"] for result in results]
    pair = predict(runs["full"], [("good film", "a dull plot"), ("fine", "")])
    assert [set(result) for result in pair] == [{"label", "score"}] * 2 and pair[0]["label"] in ("neg", "pos")
    with pytest.raises(TransferKitError, match="column 'text' is not in the input split. Columns there: review, n"):
        predict(runs["full"], dataset, text_column_names=["text"])


def test_a_dataset_by_name_labels_its_test_split(runs, tmp_path):
    """dataset_name goes through transferkit.data's Hub loading (here a local folder, which load_dataset reads the
    same way): its test split by default, and a split it lacks is an error naming the splits there."""
    folder = tmp_path / "reviews"
    folder.mkdir()
    shutil.copy(runs["data"], folder / "test.csv")
    write_new_data(folder / "train.csv", rows=5, seed=9)  # a folder's splits share their columns
    output = tmp_path / "labelled.csv"
    assert cli(["predict", runs["full"], "--dataset_name", str(folder), "--output", str(output)]) == 0
    expected = read_csv(os.path.join(runs["full"], "predictions.csv"))
    assert [row["predicted"] for row in read_csv(output)] == [row["predicted"] for row in expected]
    with pytest.raises(TransferKitError, match="has no split 'validation' \\(splits: (train, test|test, train)\\)"):
        cli(
            [
                "predict",
                runs["full"],
                "--dataset_name",
                str(folder),
                "--dataset_split",
                "validation",
                "--output",
                "x.csv",
            ]
        )


def _no_prediction(*args, **kwargs):
    raise AssertionError("predicted before the input was checked")


def _strip_labels(runs) -> str:
    adapter = os.path.join(runs["root"], "adapter-without-labels")
    if not os.path.isdir(adapter):
        shutil.copytree(runs["lora"], adapter, ignore=shutil.ignore_patterns("merged", "label_config.json"))
    return adapter


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing file", "test_file: no such file, folder or glob match: .*nowhere.csv"),
        ("missing column", "text_column_names: column 'review' is not in the input split. Columns there: id, text"),
        ("empty input", "holds no rows: nothing to predict"),
        ("MLM model", r"is not a sequence classifier: its config.json names \['BertForMaskedLM'\]"),
        ("adapter without labels", "has no label_config.json"),
        ("output extension", "output_file: .*labelled.txt ends in '.txt'; name a .csv, .jsonl, .parquet file"),
        ("columns the output writes", "already has the column\\(s\\) predicted, score"),
    ],
)
def test_bad_input_is_one_clear_error_before_predicting_and_leaves_no_file(
    runs, tiny_bert, tmp_path, monkeypatch, case, message
):
    monkeypatch.setattr(predict_module, "predict_rows_with_text", _no_prediction)
    model, data, output = runs["full"], runs["data"], tmp_path / "labelled.csv"
    extra: list[str] = []
    if case == "missing file":
        data = str(tmp_path / "nowhere.csv")
    elif case == "missing column":
        extra = ["--text_column_names", "review"]
    elif case == "empty input":
        data = str(tmp_path / "empty.csv")
        (tmp_path / "empty.csv").write_text("id,text\n", encoding="utf-8")
    elif case == "MLM model":
        model = tiny_bert
    elif case == "adapter without labels":
        model = _strip_labels(runs)
    elif case == "output extension":
        output = tmp_path / "labelled.txt"
    else:
        data = str(tmp_path / "labelled_before.csv")
        (tmp_path / "labelled_before.csv").write_text("text,predicted,score\ngood film,pos,0.9\n", encoding="utf-8")
    with pytest.raises(TransferKitError, match=message):
        predict_recipe(["--model_name_or_path", model, "--test_file", data, "--output_file", str(output), *extra])
    assert not output.exists()
    assert not [name for name in os.listdir(tmp_path) if "labelled." in name]  # no temporary file either


def test_the_output_never_replaces_or_joins_its_input(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(predict_module, "predict_rows_with_text", _no_prediction)
    data = tmp_path / "new.csv"
    shutil.copy(runs["data"], data)
    before = data.read_bytes()
    with pytest.raises(TransferKitError, match="is one of the input files"):
        predict_recipe(["--model_name_or_path", runs["full"], "--test_file", str(data), "--output_file", str(data)])
    assert data.read_bytes() == before
    inside = tmp_path / "labelled.csv"
    with pytest.raises(TransferKitError, match="inside the input folder"):
        predict_recipe(
            ["--model_name_or_path", runs["full"], "--test_file", str(tmp_path), "--output_file", str(inside)]
        )
    assert not inside.exists()


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    """The disk fills after the first rows reached the temporary file: it is removed, and out.csv never appears."""
    written = tables.as_text

    def disk_full_at_row_2(table, extension, first_row):
        if first_row == 2:
            assert [name for name in os.listdir(tmp_path) if name.endswith(".partial")]  # the first rows are in
            raise OSError("disk full")
        return written(table, extension, first_row)

    monkeypatch.setattr(tables, "CONVERSION_ROWS", 2)
    monkeypatch.setattr(tables, "as_text", disk_full_at_row_2)
    with pytest.raises(OSError, match="disk full"):
        write_table(Dataset.from_dict({"text": ["a", "b", "c"], "predicted": ["pos"] * 3}), str(tmp_path / "out.csv"))
    assert os.listdir(tmp_path) == []


def test_multi_label_and_regression_columns(tmp_path):
    logits = np.array([[2.0, -1.0, 0.5], [-3.0, -2.0, -0.1]])
    multi = result_columns(logits, LabelSpec(MULTI, ("film", "neg", "pos")), all_probabilities=False, threshold=0.5)
    assert multi["predicted"] == [["film", "pos"], []]
    assert multi["score"][0] == pytest.approx([1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(-0.5))])
    stricter = result_columns(logits, LabelSpec(MULTI, ("film", "neg", "pos")), False, threshold=0.7)
    assert stricter["predicted"] == [["film"], []]
    regression = result_columns(np.array([[1.25], [4.5]]), LabelSpec(REGRESSION, ()), True, 0.5)
    assert regression == {"predicted": [1.25, 4.5]}  # the value itself; no score, no probabilities
    table = with_predictions(Dataset.from_dict({"text": ["a", "b", ""]}), {k: [*v, None] for k, v in multi.items()})
    write_table(table, str(tmp_path / "multi.csv"))
    rows = read_csv(tmp_path / "multi.csv")
    assert [row["predicted"] for row in rows] == ["film;pos", "", ""]  # CSV cells hold no lists
    assert rows[0]["score"] == f"{1 / (1 + np.exp(-2.0)):.6f};{1 / (1 + np.exp(-0.5)):.6f}"
    single = result_columns(np.array([[0.1, 0.3]]), LabelSpec(SINGLE, ("neg", "pos")), True, 0.5)
    assert single["predicted"] == ["pos"] and single["prob_neg"][0] + single["prob_pos"][0] == pytest.approx(1)


@pytest.mark.slow
def test_two_processes_give_the_one_process_output_in_order(runs, tmp_path):
    """accelerate launch, 2 CPU processes (cpu_ddp.yaml): Trainer shards the length-sorted batches of each chunk and
    gathers them, the main process appends the chunk; 25 rows in chunks of 7 (odd) and batch size 4 leave one process
    a short last batch in every chunk."""
    one = tmp_path / "one.csv"
    args = ["--model_name_or_path", runs["full"], "--test_file", runs["data"], "--per_device_eval_batch_size", "4"]
    predict_recipe([*args, "--output_file", str(one)])
    chunked = ["--chunk_rows", "7", "--output_file", str(tmp_path / "two.csv")]
    result = launch_two_processes("predict.py", [*args, *chunked])
    log = result.stdout + result.stderr
    assert "predict_samples" in log and "Chunk 4: 25 rows of 25 (100%) labelled." in log
    assert sorted(os.listdir(tmp_path)) == ["one.csv", "two.csv"]  # no temporary file left by either process
    one_rows, two_rows = read_csv(one), read_csv(tmp_path / "two.csv")
    assert [row["id"] for row in two_rows] == [row["id"] for row in one_rows]
    assert [row["predicted"] for row in two_rows] == [row["predicted"] for row in one_rows]
    for a, b in zip(one_rows, two_rows):
        assert (a["score"] == b["score"] == "") or float(a["score"]) == pytest.approx(float(b["score"]), abs=1e-5)


def write_review_column(path, rows: int, seed: int, words: int) -> str:
    """Reviews in a column named `review`, each `words` neutral words long with its two sentiment words at the end:
    past a 32-token truncation, so how long a text is read changes the prediction."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "label"])
        for index in range(rows):
            positive = index % 2 == 0
            text = [rng.choice(NEUTRAL) for _ in range(rng.choice([3, words]))]
            text += [rng.choice(POSITIVE if positive else NEGATIVE) for _ in range(2)]
            writer.writerow([" ".join(text), "pos" if positive else "neg"])
    return str(path)


def test_predict_reads_texts_as_the_classify_run_did(tiny_bert, runs, tmp_path):
    """classify records its text column (`review`) and max_seq_length (32) in transferkit_text.json; predict then
    needs neither flag and gives classify's own test predictions, long texts truncated at 32 tokens as there (the
    tiny model takes 64). An explicit option still wins."""
    train = write_review_column(tmp_path / "train.csv", rows=80, seed=1, words=8)
    test = write_review_column(tmp_path / "test.csv", rows=12, seed=2, words=45)
    output_dir = tmp_path / "review-model"
    classify(classify_args(tiny_bert, train, test, output_dir, "--text_column_names", "review"))
    with open(output_dir / predict_module.TEXT_SETTINGS_FILE, encoding="utf-8") as handle:
        saved = json.load(handle)
    assert saved["text_column_names"] == ["review"] and saved["max_seq_length"] == 32
    assert saved["long_text"] == "truncate"
    assert os.path.isfile(os.path.join(runs["lora"], "merged", predict_module.TEXT_SETTINGS_FILE))

    rows = run_predict(str(output_dir), test, tmp_path / "labelled.csv", "--all_probabilities", "true")
    expected = read_csv(output_dir / "predictions.csv")
    assert [row["predicted"] for row in rows] == [row["predicted"] for row in expected]
    for row, gold in zip(rows, expected):
        assert float(row["prob_pos"]) == pytest.approx(float(gold["prob_pos"]), abs=1e-5)

    longer = run_predict(str(output_dir), test, tmp_path / "longer.csv", "--max_seq_length", "64")
    long_rows = [index for index, row in enumerate(read_csv(test)) if len(row["review"].split()) > 40]
    assert long_rows  # the texts that 32 tokens cut: read whole now, so scored differently
    assert all(longer[i]["score"] != rows[i]["score"] for i in long_rows)
    texts = [row["review"] for row in read_csv(test)]
    assert [result["label"] for result in predict(str(output_dir), texts)] == [row["predicted"] for row in rows]


def test_saved_text_columns_missing_from_new_data(caplog):
    """Saved columns the new data lacks: the usual name when it reads as many columns (with a warning naming both),
    else an error; an explicit choice is taken as it is."""
    choose = predict_module.choose_text_columns
    assert choose(["id", "review"], None, ["review"], "new.csv") == ["review"]
    with caplog.at_level("WARNING", logger="transferkit.predict"):
        assert choose(["id", "text"], None, ["review"], "new.csv") == ["text"]
    assert "trained on the text column(s) review, which new.csv lacks: reading text" in caplog.text
    with pytest.raises(TransferKitError, match="trained on the text column\\(s\\) question, answer, which new.csv"):
        choose(["id", "text"], None, ["question", "answer"], "new.csv")
    assert choose(["body", "text"], ["body"], ["review"], "new.csv") == ["body"]
