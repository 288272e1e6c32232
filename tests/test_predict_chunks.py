"""The predict recipe a chunk of rows at a time (chunk_rows, streaming): the file that one chunk writes, in input
order, whatever the chunking; no output file when a chunk fails; the input's checks before anything is written. And
a classifier (a full model, a LoRA adapter) pushed to the local test Hub predicts as its local folder does."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, Features, Value

from recipes.predict import main as predict_recipe
from tests.hub_server import HubServer, hub_server_fixture  # noqa: F401 - provides the `hub_server` fixture
from tests.test_predict import read_csv, runs  # noqa: F401 - `runs`: the classify runs the predictions are checked on
from transferkit import chunked
from transferkit import predict as predict_module
from transferkit.chunked import summed_metrics
from transferkit.cli import main as cli
from transferkit.errors import TransferKitError
from transferkit.hub import push_output_dir
from transferkit.tables import TableWriter

BLANK_CHUNK = range(8, 12)  # with chunk_rows 4, the third chunk: no text (nor label) in any of its rows


@pytest.fixture(scope="module")
def data(runs) -> str:  # noqa: F811 - the fixture imported above
    """runs' 25 new reviews (row 7 without text) with rows 8-11 blanked too: a chunk of 4 without any text, whose
    result cells are all empty (typed as the other chunks' in a parquet file)."""
    path = os.path.join(runs["root"], "with-a-blank-chunk.csv")
    rows = read_csv(runs["data"])
    for index in BLANK_CHUNK:
        rows[index].update(text="", label="")
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def predict_to(model: str, data: str, output, *extra: str, batch: int = 4) -> str:
    predict_recipe(
        ["--model_name_or_path", model, "--test_file", data, "--output_file", str(output), *extra]
        + ["--per_device_eval_batch_size", str(batch), "--all_probabilities", "true"]
    )
    return str(output)


def read_rows(path: str) -> list[dict]:
    if path.endswith(".csv"):
        return read_csv(path)
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]
    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("extension", [".csv", ".jsonl", ".parquet"])
def test_any_chunking_writes_the_one_chunk_file(runs, data, tmp_path, extension):  # noqa: F811
    """25 rows in chunks of 7 (loaded) and 4 (streamed): the file one chunk writes (csv and jsonl byte for byte;
    parquet the same rows, a row group per chunk), in input order, the rows without text in place. The stream has
    never been loaded, so its types are guessed per chunk: its third chunk (rows 8-11) has no text at all, a null
    column, cast to the first chunk's type in the parquet file.

    Batches of one row: a row then has the same padding, so the same float32 logits, however the rows are chunked.
    In larger batches a row's batch, and so its padding, is chosen within its chunk, which can move a score in its
    last digits (tests/benchmarks/README.md: 23 of 200,000 rows by 6e-8); the other tests here predict in batches."""
    whole = predict_to(runs["full"], data, tmp_path / f"whole{extension}", "--chunk_rows", "25", batch=1)
    classify_rows = read_csv(os.path.join(runs["full"], "predictions.csv"))
    expected = [("" if i in BLANK_CHUNK else row["predicted"]) or None for i, row in enumerate(classify_rows)]
    assert [row["predicted"] or None for row in read_rows(whole)] == expected
    assert [row["id"] for row in read_rows(whole)] == [f"row{index}" for index in range(25)]
    fresh = ["--cache_dir", str(tmp_path / "cache")]
    for chunking in (["--chunk_rows", "7"], ["--chunk_rows", "4", "--streaming", "true", *fresh]):
        chunked = predict_to(runs["full"], data, tmp_path / f"chunked{extension}", *chunking, batch=1)
        if extension == ".parquet":
            mine, reference = pq.read_table(chunked), pq.read_table(whole)
            assert mine.to_pylist() == reference.to_pylist()
            assert pq.ParquetFile(chunked).num_row_groups == -(-25 // int(chunking[1]))
            same_types = [name for name in mine.column_names if mine.schema.field(name) == reference.schema.field(name)]
            # the stream's text columns are typed string, the loaded input's large_string; the results alike
            assert same_types == (
                mine.column_names if len(chunking) == 2 else ["predicted", "score", "prob_neg", "prob_pos"]
            )
        else:
            with open(chunked, "rb") as mine, open(whole, "rb") as reference:
                assert mine.read() == reference.read()
        os.remove(chunked)
    assert sorted(os.listdir(tmp_path)) == ["cache", f"whole{extension}"]  # no temporary file left


def test_a_stream_builds_no_arrow_cache_and_labels_a_hub_dataset_split(runs, data, tmp_path):  # noqa: F811
    """streaming reads the files as they are (no Arrow copy of the input in the datasets cache), local files or a
    dataset by name (a local folder here, which load_dataset streams as it would a Hub repo)."""
    cache = tmp_path / "cache"
    args = ["--cache_dir", str(cache), "--chunk_rows", "4", "--streaming", "true"]
    streamed = predict_to(runs["full"], data, tmp_path / "streamed.csv", *args)
    assert not [name for _, _, names in os.walk(cache) for name in names if name.endswith(".arrow")]
    loaded = predict_to(runs["full"], data, tmp_path / "loaded.csv", "--cache_dir", str(cache))
    assert [name for _, _, names in os.walk(cache) for name in names if name.endswith(".arrow")]  # the check works
    assert read_csv(streamed) == read_csv(loaded)

    folder = tmp_path / "reviews"
    folder.mkdir()
    shutil.copy(runs["data"], folder / "test.csv")
    output = tmp_path / "hub.jsonl"
    flags = ["--dataset_name", str(folder), "--output", str(output), "--streaming", "true", "--chunk_rows", "7"]
    assert cli(["predict", runs["full"], *flags]) == 0
    expected = read_csv(os.path.join(runs["full"], "predictions.csv"))
    assert [row["predicted"] or "" for row in read_rows(str(output))] == [row["predicted"] for row in expected]


def test_no_chunk_stays_in_memory_after_it_is_written(runs, data, tmp_path, monkeypatch):  # noqa: F811
    """Trainer.predict prepares a DataLoader per chunk, which accelerate would keep (and with it the chunk: held in
    memory when streamed) until the run ends; each is dropped once its chunk is predicted."""
    labelled, prepared = chunked.label_chunk, []

    def counting(trainer, *args):
        prepared.append(len(trainer.accelerator._dataloaders))
        return labelled(trainer, *args)

    monkeypatch.setattr(chunked, "label_chunk", counting)
    predict_to(runs["full"], data, tmp_path / "labelled.csv", "--chunk_rows", "4", "--streaming", "true")
    assert len(prepared) == 7 and len(set(prepared)) == 1


@pytest.mark.parametrize("streaming", ["false", "true"])
@pytest.mark.parametrize("extension", [".csv", ".parquet"])
def test_a_failure_in_the_third_chunk_leaves_no_file(runs, data, tmp_path, monkeypatch, streaming, extension):  # noqa: F811
    predicted = predict_module.predict_rows_with_text
    calls = []

    def failing_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            assert [name for name in os.listdir(tmp_path) if name.endswith(".partial")]  # chunks 1-2 are written
            raise RuntimeError("out of memory in chunk 3")
        return predicted(*args, **kwargs)

    monkeypatch.setattr(predict_module, "predict_rows_with_text", failing_third)
    output = tmp_path / f"labelled{extension}"
    with pytest.raises(RuntimeError, match="out of memory in chunk 3"):
        predict_to(runs["full"], data, output, "--chunk_rows", "7", "--streaming", streaming)
    assert len(calls) == 3
    assert os.listdir(tmp_path) == []  # neither the output nor a partial file


def _no_prediction(*args, **kwargs):
    raise AssertionError("predicted before the input was checked")


def write_csv(path, header: str, *lines: str) -> str:
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing column", "text_column_names: column 'review' is not in the input split. Columns there: id, text"),
        ("columns the output writes", "already has the column\\(s\\) predicted, score"),
        ("empty input", "holds no rows: nothing to predict"),
        ("no text anywhere", "has no text in any row \\(text are empty\\): nothing to predict"),
        ("chunk_rows 0", "chunk_rows"),
    ],
)
def test_a_streamed_input_is_checked_before_anything_is_written(runs, tmp_path, monkeypatch, case, message):  # noqa: F811
    """A stream's columns are checked on its first chunk, before any prediction; that it holds no text at all is
    known at its end (every chunk read, none predicted): an error then, and no file."""
    if case != "no text anywhere":
        monkeypatch.setattr(predict_module, "predict_rows_with_text", _no_prediction)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    data, extra = runs["data"], ["--chunk_rows", "4", "--streaming", "true"]
    if case == "missing column":
        extra += ["--text_column_names", "review"]
    elif case == "columns the output writes":
        data = write_csv(inputs / "before.csv", "text,predicted,score", "good film,pos,0.9")
    elif case == "empty input":
        data = write_csv(inputs / "empty.csv", "id,text")
    elif case == "no text anywhere":
        data = write_csv(inputs / "blank.csv", "id,text", *(f"row{index}," for index in range(10)))
    else:
        extra[1] = "0"
    output = tmp_path / "labelled.parquet"
    with pytest.raises(TransferKitError, match=message):
        predict_recipe(
            ["--model_name_or_path", runs["full"], "--test_file", data, "--output_file", str(output), *extra]
        )
    assert sorted(os.listdir(tmp_path)) == ["inputs"]


def test_chunks_of_one_table_agree_on_columns_types_and_integer_cells(tmp_path):
    """Each chunk's cells are written as the whole table's: an integer column with a missing cell stays integers in
    csv and jsonl (pandas alone writes 2.0 once a chunk holds a gap); parquet casts a chunk whose empty column was
    typed null, and names the column where a chunk's values cannot take the file's type."""
    table = Dataset.from_dict({"n": [1, None, 3, 4], "text": ["a", "b", None, "d"]})
    for extension in (".csv", ".jsonl"):
        with TableWriter(str(tmp_path / f"chunks{extension}")) as writer:
            for start in (0, 2):
                writer.write(table.select(range(start, start + 2)))
        with TableWriter(str(tmp_path / f"one{extension}")) as writer:
            writer.write(table)
        assert (tmp_path / f"chunks{extension}").read_bytes() == (tmp_path / f"one{extension}").read_bytes()
    assert (tmp_path / "one.csv").read_text(encoding="utf-8") == "n,text\n1,a\n,b\n3,\n4,d\n"

    features = Features({"n": Value("int64"), "text": Value("string")})
    with TableWriter(str(tmp_path / "typed.parquet"), features) as writer:
        writer.write(pa.table({"n": [1, 2], "text": ["a", "b"]}))
        writer.write(pa.table({"n": pa.array([None, None], pa.null()), "text": ["c", None]}))
    assert pq.read_table(tmp_path / "typed.parquet").column("n").to_pylist() == [1, 2, None, None]
    with pytest.raises(TransferKitError, match="Column 'n' holds string values in rows 3-3 where the rows before"):
        with TableWriter(str(tmp_path / "mixed.parquet"), features) as writer:
            writer.write(pa.table({"n": [1, 2], "text": ["a", "b"]}))
            writer.write(pa.table({"n": ["three"], "text": ["c"]}))
    with pytest.raises(TransferKitError, match="Rows 3-3 have the columns n, review, the rows before them n, text"):
        with TableWriter(str(tmp_path / "other.csv")) as writer:
            writer.write(pa.table({"n": [1, 2], "text": ["a", "b"]}))
            writer.write(pa.table({"n": [3], "review": ["c"]}))
    assert sorted(os.listdir(tmp_path)) == ["chunks.csv", "chunks.jsonl", "one.csv", "one.jsonl", "typed.parquet"]


def test_a_partial_file_a_killed_writer_left_goes_at_the_next_write(tmp_path):
    """A kill leaves `.<name>.<pid>.partial`; the next writer of the same output removes it, unless its process is
    still running (a live writer's file stays)."""
    dead = _a_pid_not_running()
    stale, live = tmp_path / f".out.csv.{dead}.partial", tmp_path / f".out.csv.{os.getppid()}.partial"
    other = tmp_path / f".other.csv.{dead}.partial"
    for path in (stale, live, other):
        path.write_text("n\n1\n")
    with TableWriter(str(tmp_path / "out.csv")) as writer:
        writer.write(pa.table({"n": [2]}))
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "out.csv"])


def _a_pid_not_running() -> int:
    pid = 4_000_000  # above Linux's default pid_max; checked rather than assumed
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_the_chunks_metrics_add_up():
    chunks = [
        {
            "predict_runtime": 2.0,
            "predict_samples_per_second": 50.0,
            "predict_samples": 100,
            "predict_not_predicted": 1,
        },
        {"predict_samples": 0, "predict_not_predicted": 4},  # a chunk without text: not predicted, no runtime
        {"predict_runtime": 1.0, "predict_samples_per_second": 20.0, "predict_samples": 20, "predict_not_predicted": 0},
    ]
    assert summed_metrics(chunks) == {
        "predict_runtime": 3.0,
        "predict_samples_per_second": 40.0,  # 120 rows in 3 s
        "predict_samples": 120,
        "predict_not_predicted": 5,
        "predict_chunks": 3,
    }


@pytest.mark.parametrize("model", ["full", "lora"])
def test_a_model_pushed_to_the_hub_predicts_as_its_folder(runs, tmp_path, hub_server: HubServer, model):  # noqa: F811
    """The classify run's output folder pushed to the (local test) Hub: a full model, or a LoRA adapter with its
    label_config.json and transferkit_text.json (its base named by a local path, as the run saved it). Predicted
    from its Hub id through `transferkit predict`, it labels each row as the local folder does."""
    repo = f"tester/tiny-{model}"
    push_output_dir(runs[model], repo, backoff_s=0)
    pushed = hub_server.repos[repo].files
    assert predict_module.TEXT_SETTINGS_FILE in pushed
    assert ("label_config.json" in pushed) == (model == "lora") and ("config.json" in pushed) == (model == "full")
    local = predict_to(runs[model], runs["data"], tmp_path / "local.csv")
    hub = tmp_path / "hub.csv"
    assert (
        cli(["predict", repo, runs["data"], "--output", str(hub), "--chunk_rows", "10", "--all_probabilities", "true"])
        == 0
    )
    assert any(
        path.endswith(f"/{repo}/resolve/main/{predict_module.TEXT_SETTINGS_FILE}") for _, path in hub_server.requests
    )
    local_rows, hub_rows = read_csv(local), read_csv(str(hub))
    assert [row["predicted"] for row in hub_rows] == [row["predicted"] for row in local_rows]
    assert [row["prob_pos"] for row in hub_rows] == [row["prob_pos"] for row in local_rows]
    expected = read_csv(os.path.join(runs[model], "predictions.csv"))
    assert [row["predicted"] for row in hub_rows] == [row["predicted"] for row in expected]
