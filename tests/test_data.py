"""Loading local files in every format, resolving folders and globs, carving splits, and the errors on bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from transferkit.arguments import DataArguments, ModelArguments
from transferkit.data import (
    _is_utf8,
    carve_splits,
    check_data_file,
    drop_duplicate_texts,
    load_classification_splits,
    load_raw_datasets,
    resolve_data_files,
    resolve_text_columns,
)
from transferkit.errors import TransferKitError

ROWS = [{"text": f"review number {i}", "label": "pos" if i % 3 else "neg"} for i in range(30)]


def write_rows(path, rows=ROWS) -> str:
    frame = pd.DataFrame(rows)
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(row) for row in rows))
    elif suffix == ".parquet":
        frame.to_parquet(path)
    return str(path)


def args(**kwargs) -> DataArguments:
    return DataArguments(**kwargs)


MODEL = ModelArguments(model_name_or_path="unused")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_each_format_loads(tmp_path, suffix):
    path = write_rows(tmp_path / f"train{suffix}")
    raw = load_raw_datasets(args(train_file=path), MODEL)
    assert raw["train"].num_rows == len(ROWS)
    assert raw["train"][0]["text"] == "review number 0"


def test_folder_and_glob(tmp_path):
    (tmp_path / "parts").mkdir()
    write_rows(tmp_path / "parts" / "a.csv", ROWS[:10])
    write_rows(tmp_path / "parts" / "b.csv", ROWS[10:])
    assert len(load_raw_datasets(args(train_file=str(tmp_path / "parts")), MODEL)["train"]) == 30
    assert len(load_raw_datasets(args(train_file=str(tmp_path / "parts" / "*.csv")), MODEL)["train"]) == 30
    assert resolve_data_files(str(tmp_path / "parts" / "a*"), "train_file", (".csv",))[0].endswith("a.csv")


def test_missing_file_names_option_and_path(tmp_path):
    with pytest.raises(TransferKitError, match=r"train_file: no such file.*nope\.csv"):
        load_raw_datasets(args(train_file=str(tmp_path / "nope.csv")), MODEL)


def test_unknown_format_lists_known_ones(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(TransferKitError, match=r"unknown file format \.xlsx.*csv, tsv, json, jsonl, parquet"):
        load_raw_datasets(args(train_file=str(path)), MODEL)


def test_text_columns_default_and_missing(tmp_path):
    raw = load_raw_datasets(args(train_file=write_rows(tmp_path / "t.csv")), MODEL)
    assert resolve_text_columns(raw["train"].column_names, None) == ["text"]
    with pytest.raises(
        TransferKitError,
        match=r"text_column_names: column 'review' is not in the train split.*Columns there: text, label",
    ):
        resolve_text_columns(raw["train"].column_names, ["review"])


def test_no_text_column_found_lists_columns(tmp_path):
    path = write_rows(tmp_path / "t.csv", [{"body": "x", "label": 1}] * 3)
    raw = load_raw_datasets(args(train_file=path), MODEL)
    with pytest.raises(TransferKitError, match="No text column found.*body, label"):
        resolve_text_columns(raw["train"].column_names, None)


def test_drop_duplicates_keeps_first(tmp_path):
    rows = ROWS + ROWS[:5]
    raw = load_raw_datasets(args(train_file=write_rows(tmp_path / "t.csv", rows)), MODEL)
    assert len(drop_duplicate_texts(raw["train"], ["text"])) == 30


def test_splits_are_80_10_10_seeded_stratified_and_disjoint(tmp_path):
    rows = [{"text": f"t{i}", "label": "a" if i % 4 else "b"} for i in range(400)]
    data_args = args(
        train_file=write_rows(tmp_path / "t.csv", rows),
        validation_split_percentage=10,
        test_split_percentage=10,
    )
    splits, columns, spec = load_classification_splits(data_args, MODEL, None, seed=3)
    assert columns == ["text"] and spec.names == ("a", "b")
    assert [len(splits[name]) for name in ("train", "validation", "test")] == [320, 40, 40]
    for name in ("validation", "test"):
        assert splits[name]["label"].count(1) == 10  # 'b' is a quarter of every split
    texts = [set(splits[name]["text"]) for name in ("train", "validation", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    again, _, _ = load_classification_splits(data_args, MODEL, None, seed=3)
    assert again["test"]["text"] == splits["test"]["text"]


def test_existing_validation_split_is_kept(tmp_path):
    data_args = args(train_file=write_rows(tmp_path / "t.csv"), validation_file=write_rows(tmp_path / "v.jsonl"))
    splits, _, _ = load_classification_splits(data_args, MODEL, None, seed=0)
    assert len(splits["train"]) == 30 and len(splits["validation"]) == 30


def test_empty_after_filtering(tmp_path):
    rows = [{"text": "  ", "label": "a"}, {"text": "", "label": "b"}]
    with pytest.raises(TransferKitError, match="empty"):
        load_classification_splits(
            args(train_file=write_rows(tmp_path / "t.csv", rows), validation_split_percentage=0),
            MODEL,
            None,
            seed=0,
        )


def test_max_samples(tmp_path):
    data_args = args(train_file=write_rows(tmp_path / "t.csv"), max_train_samples=5, max_eval_samples=2)
    splits, _, _ = load_classification_splits(data_args, MODEL, None, seed=0)
    assert len(splits["train"]) == 5 and len(splits["validation"]) == 2


def test_carve_splits_without_classlabel_is_not_stratified(tmp_path):
    raw = load_raw_datasets(args(train_file=write_rows(tmp_path / "t.csv")), MODEL)
    splits = carve_splits(raw, args(train_file="x", validation_split_percentage=20), seed=0, stratify_column="label")
    assert len(splits["validation"]) == 6


def test_csv_check_accepts_what_pandas_reads_right(tmp_path):
    """Quoted commas, doubled quotes, a text spanning lines and blank lines are valid csv: no false alarms."""
    path = tmp_path / "ok.csv"
    path.write_text('text,label\n"good, really",pos\n"he said ""dull""",neg\n"two\nlines",pos\n\nfine,pos\n')
    check_data_file(str(path), "train_file", "csv")
    rows = load_raw_datasets(args(train_file=str(path)), MODEL)["train"]
    assert rows["text"] == ["good, really", 'he said "dull"', "two\nlines", "fine"]


def test_tsv_row_with_an_extra_tab(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("text\tlabel\ngood\tpos\ngood\tfilm\tpos\n")
    with pytest.raises(TransferKitError, match=r"t\.tsv line 3 has 3 fields where the header has 2 .* holds a tab"):
        load_raw_datasets(args(train_file=str(path)), MODEL)


def test_utf8_check_across_chunk_boundaries(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("café crème brûlée\n" * 50, encoding="utf-8")
    assert _is_utf8(str(path), chunk_size=3)  # multi-byte characters split between reads are not errors
    path.write_bytes(path.read_bytes() + "naïve\n".encode("latin1"))
    assert not _is_utf8(str(path), chunk_size=3)
    with pytest.raises(TransferKitError, match=r"t\.txt line 51 \(byte 1102\) is not UTF-8: b'\\xefve\\n'"):
        check_data_file(str(path), "train_file", "text")


def test_json_checks(tmp_path):
    pretty = tmp_path / "pretty.json"
    pretty.write_text('{\n  "text": "a good film",\n  "label": "pos"\n}\n')
    check_data_file(str(pretty), "train_file", "json")  # one document over several lines is not JSON lines
    listed = tmp_path / "list.json"
    listed.write_text('[{"text": "a", "label": "pos"}, "b"]')
    with pytest.raises(TransferKitError, match=r"list\.json item 1 of the list is a str, not an object: 'b'"):
        check_data_file(str(listed), "train_file", "json")


def test_stream_head_check(tmp_path):
    """A stream is checked over its first lines only; a head that ends inside a quoted field is not an error."""
    path = tmp_path / "t.csv"
    path.write_text('text\n"starts here\nand goes on"\nfine\nbad,row\n')
    check_data_file(str(path), "train_file", "csv", max_lines=3)
    with pytest.raises(TransferKitError, match=r"t\.csv line 5 has 2 fields"):
        check_data_file(str(path), "train_file", "csv", max_lines=5)


def test_blank_texts_are_dropped_with_a_count(tmp_path, caplog):
    rows = ROWS + [{"text": "   ", "label": "pos"}, {"text": "", "label": "neg"}]
    data_args = args(train_file=write_rows(tmp_path / "t.csv", rows), validation_split_percentage=0)
    splits, _, _ = load_classification_splits(data_args, MODEL, None, seed=0)
    assert len(splits["train"]) == 30
    assert "Dropped 2 rows of the train split with an empty text" in caplog.text


def test_a_hub_dataset_that_is_not_cached_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    data_args = DataArguments(dataset_name="someone/not-cached-anywhere", dataset_revision="v1")
    with pytest.raises(TransferKitError, match=r"'someone/not-cached-anywhere' at revision v1 is not in the local"):
        load_raw_datasets(data_args, ModelArguments(model_name_or_path="unused", cache_dir=str(tmp_path)))
