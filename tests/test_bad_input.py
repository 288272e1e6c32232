"""Each recipe fed broken input, the way a user runs it: exit status 2, one `error:` line that names the file, line,
column, key or value and the fix, no traceback (unless asked for), and an earlier run in output_dir left untouched.

Cases covered elsewhere are not repeated here: wrong or missing columns, an empty split, max_seq_length above the
model's limit, class_weights of the wrong length (test_classify_e2e.py, test_mlm.py); rows without a label, an
unseen validation label, a rare label (typo) warning (test_labels.py); unknown YAML keys and flags and every wrong
YAML type (test_config.py); an unwritable output_dir (test_reliability.py). Here: malformed CSV rows and JSON lines,
bytes that are not UTF-8, a missing label as a user's file has it, mixed label types, a YAML with a wrong type, a
model path that does not exist, a tokenizer too large for the model, an output_dir that holds a finished run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from recipes.classify import main as classify
from recipes.mlm import main as mlm
from tests.test_reliability import fake_checkpoint
from tests.tiny import REPO, build_tokenizer
from transferkit.errors import DEBUG_HINT, exit_on_user_error
from transferkit.resume import FINISHED_MARKER

GOOD_ROWS = ["the film was good", "a dull plot", "great cast and really fun", "boring and flat", "so warm and clever"]
HEADER = "text,label\n"


def csv_rows(count: int = 40) -> str:
    return "".join(f"{GOOD_ROWS[i % 5]} {i},{'pos' if i % 5 in (0, 2, 4) else 'neg'}\n" for i in range(count))


def jsonl_rows(count: int = 40) -> str:
    return "".join(
        json.dumps({"text": f"{GOOD_ROWS[i % 5]} {i}", "label": "pos" if i % 2 else "neg"}) + "\n" for i in range(count)
    )


# name -> (file name, content, extra arguments, fragments the one error line must hold). Line numbers count from 1,
# with the header as line 1; each bad row comes after a few good ones, so a message that names the wrong line fails.
CLASSIFY_CASES = {
    "csv_row_with_extra_field": (
        "reviews.csv",
        HEADER + csv_rows(6) + "a good film, really,pos\n" + csv_rows(),
        [],
        ["reviews.csv line 8 has 3 fields where the header has 2 (text, label)", "'a good film, really,pos'", "quotes"],
    ),
    "csv_row_without_its_label_field": (
        "reviews.csv",
        HEADER + csv_rows(3) + "a good film without a label\n" + csv_rows(),
        [],
        ["reviews.csv line 5 has 1 fields where the header has 2", "'a good film without a label'"],
    ),
    "csv_unclosed_quote": (
        "reviews.csv",
        HEADER + csv_rows(9) + '"a good film,pos\n' + csv_rows(),
        [],
        ["reviews.csv line 11: a quote that is never closed", "Close the quote"],
    ),
    "jsonl_broken_line": (
        "reviews.jsonl",
        jsonl_rows(4) + '{"text": "a good film", "label": pos}\n' + jsonl_rows(),
        [],
        [
            "reviews.jsonl line 5, column 34: Expecting value",
            '\'{"text": "a good film", "label": pos}\'',
            "one JSON object",
        ],
    ),
    "jsonl_line_not_an_object": (
        "reviews.jsonl",
        jsonl_rows(2) + '["a good film", "pos"]\n' + jsonl_rows(),
        [],
        ["reviews.jsonl line 3 holds a JSON list, not an object"],
    ),
    "json_document_missing_comma": (
        "reviews.json",
        '[\n  {"text": "a good film", "label": "pos"},\n  {"text": "a dull film" "label": "neg"}\n]\n',
        [],
        ["reviews.json line 3, column 26: Expecting ',' delimiter"],
    ),
    "csv_latin1_bytes": (
        "reviews.csv",
        (HEADER + csv_rows(5)).encode() + "a good café,pos\n".encode("latin1") + csv_rows().encode(),
        [],
        ["reviews.csv line 7 (byte", "is not UTF-8: b'\\xe9", "'a good caf", "iconv -f latin1 -t utf-8 reviews.csv"],
    ),
    "jsonl_latin1_bytes": (  # pyarrow loads these bytes and would only fail at the first read of the row
        "reviews.jsonl",
        jsonl_rows(3).encode() + '{"text": "a café", "label": "pos"}\n'.encode("latin1") + jsonl_rows().encode(),
        [],
        ["reviews.jsonl line 4 (byte", "is not UTF-8", "iconv"],
    ),
    "csv_utf16": (
        "reviews.csv",
        (HEADER + csv_rows()).encode("utf-16"),
        [],
        ["reviews.csv line 1 (byte 0) is not UTF-8", "iconv -f utf-16 -t utf-8"],
    ),
    "missing_label": (
        "reviews.csv",
        HEADER + csv_rows(6) + "a good film,\n" + csv_rows(),
        [],
        ["1 rows of the train split (", "reviews.csv) have no value in 'label'", "data row 7", "'a good film'"],
    ),
    "mixed_label_types_jsonl": (
        "reviews.jsonl",
        "".join(json.dumps({"text": f"film {i}", "label": i % 2}) + "\n" for i in range(30))
        + json.dumps({"text": "a good film", "label": "pos"})
        + "\n",
        [],
        [
            "'label' in the train split mixes label types",
            "numbers (30 values, e.g. 0",
            "text (1 value, e.g. 'pos' in data row 31)",
        ],
    ),
    "mixed_label_types_csv": (  # a csv column holding 0/1 and one word is read as text; still a mistake
        "reviews.csv",
        HEADER + "".join(f"film {i},{i % 2}\n" for i in range(30)) + "a good film,pos\n",
        [],
        ["mixes label types", "numbers (30 values, e.g. '0' in data row 1)", "'pos' in data row 31", "problem_type"],
    ),
    "floats_and_words_for_regression": (
        "reviews.csv",
        HEADER + "".join(f"film {i},{i / 10}\n" for i in range(30)) + "a good film,high\n",
        ["--problem_type", "regression"],
        [
            "problem_type is regression but 'label' in the train split holds numbers (30 values",
            "text (1 value, e.g. 'high' in data row 31)",
        ],
    ),
}

MLM_CASES = {
    "txt_latin1_bytes": (
        "corpus.txt",
        b"the film was good\na dull plot\n" + "un film très bon\n".encode("latin1"),
        [],
        ["corpus.txt line 3 (byte 40) is not UTF-8", "'un film tr", "iconv -f latin1 -t utf-8 corpus.txt"],
    ),
    "txt_latin1_bytes_streaming": (  # a stream is checked at its head before training, not when the row is reached
        "corpus.txt",
        b"the film was good\n" + "un film très bon\n".encode("latin1"),
        ["--streaming", "true", "--max_steps", "2"],
        ["corpus.txt line 2 (byte 28) is not UTF-8"],
    ),
    "jsonl_broken_line": (
        "corpus.jsonl",
        jsonl_rows(6) + '{"text": "the film was good"\n' + jsonl_rows(),
        [],
        ["corpus.jsonl line 7, column 29: Expecting ',' delimiter"],
    ),
    "csv_unclosed_quote": (
        "corpus.csv",
        "text\n" + "".join(f"{row}\n" for row in GOOD_ROWS) + '"the film was good\nok" really\nso fun\n',
        [],
        ["corpus.csv line 7: a quote that is never closed", "read up to line 8"],
    ),
}


def write(path: Path, content: str | bytes) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def finished_run(output_dir: Path) -> dict[str, bytes]:
    """An output_dir as a finished run leaves it; returns every file's bytes, to check nothing was touched."""
    output_dir.mkdir(parents=True)
    (output_dir / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.91, "train_loss": 0.2}))
    (output_dir / "model.safetensors").write_bytes(b"weights of the finished run")
    (output_dir / "config.json").write_text("{}")
    (output_dir / FINISHED_MARKER).write_text("{}")
    return snapshot(output_dir)


def interrupted_run(output_dir: Path) -> dict[str, bytes]:
    """An output_dir as a run killed after its first checkpoint leaves it: `resume_from_checkpoint: auto` would
    continue it, so only the bad input can stop the rerun. Returns every file's bytes, to check nothing was touched."""
    fake_checkpoint(output_dir, 4)
    return snapshot(output_dir)


def snapshot(output_dir: Path) -> dict[str, bytes]:
    return {str(path.relative_to(output_dir)): path.read_bytes() for path in output_dir.rglob("*") if path.is_file()}


def arguments(model: str, data: str, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        model,
        "--train_file",
        data,
        "--output_dir",
        str(output_dir),
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        "2",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        *extra,
    ]


def run_as_cli(main: Callable, argv: list[str], capsys) -> tuple[object, str]:
    """The recipe's `__main__` path in-process: exit_on_user_error around main(argv); (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        exit_on_user_error(lambda: main(argv), argv)
    return info.value.code, capsys.readouterr().err


def assert_one_clear_error(code: object, stderr: str, fragments: list[str]) -> None:
    assert code == 2, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-2000:]
    assert errors[0].endswith(DEBUG_HINT)
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    assert "Traceback" not in stderr


@pytest.mark.parametrize("case", sorted(CLASSIFY_CASES))
def test_classify_refuses_bad_data(case, tiny_bert, tmp_path, capsys):
    name, content, extra, fragments = CLASSIFY_CASES[case]
    out = tmp_path / "run"
    before = interrupted_run(out)
    argv = arguments(tiny_bert, write(tmp_path / name, content), out, "--resume_from_checkpoint", "auto", *extra)
    code, stderr = run_as_cli(classify, argv, capsys)
    assert_one_clear_error(code, stderr, fragments)
    assert snapshot(out) == before


@pytest.mark.parametrize("case", sorted(MLM_CASES))
def test_mlm_refuses_bad_data(case, tiny_bert, tmp_path, capsys):
    name, content, extra, fragments = MLM_CASES[case]
    out = tmp_path / "run"
    before = interrupted_run(out)
    argv = arguments(tiny_bert, write(tmp_path / name, content), out, "--resume_from_checkpoint", "auto", *extra)
    code, stderr = run_as_cli(mlm, argv, capsys)
    assert_one_clear_error(code, stderr, fragments)
    assert snapshot(out) == before


@pytest.fixture(scope="module")
def large_tokenizer(tmp_path_factory) -> str:
    """The tiny BERT's tokenizer plus three tokens: ids the model has no embedding rows for."""
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["cinema", "popcorn", "sequel"])
    path = str(tmp_path_factory.mktemp("large-tokenizer"))
    tokenizer.save_pretrained(path)
    return path


MODEL_CASES = {
    "model_path_does_not_exist": (["--model_name_or_path", "/no/such/model"], ["'/no/such/model': no such folder"]),
    "relative_model_path_does_not_exist": (["--model_name_or_path", "./checkpoints/bert"], ["no such folder"]),
    "tokenizer_does_not_fit_the_model": (
        ["--tokenizer_name", "LARGE"],
        ["has 55 token ids but the model", "has embeddings for 52", "leave tokenizer_name unset"],
    ),
}


@pytest.mark.parametrize("recipe", ["classify", "mlm"])
@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_bad_model_or_tokenizer(case, recipe, tiny_bert, reviews_csv, large_tokenizer, tmp_path, capsys):
    extra, fragments = MODEL_CASES[case]
    extra = [large_tokenizer if value == "LARGE" else value for value in extra]
    out = tmp_path / "run"
    before = interrupted_run(out)
    argv = arguments(tiny_bert, reviews_csv, out, "--resume_from_checkpoint", "auto", *extra)
    code, stderr = run_as_cli(classify if recipe == "classify" else mlm, argv, capsys)
    assert_one_clear_error(code, stderr, fragments)
    assert snapshot(out) == before


@pytest.mark.parametrize("recipe", ["classify", "mlm"])
def test_yaml_with_a_wrong_type(recipe, tiny_bert, reviews_csv, tmp_path, capsys):
    config = write(tmp_path / "run.yaml", f"model_name_or_path: {tiny_bert}\nnum_train_epochs: three\n")
    out = tmp_path / "run"
    before = finished_run(out)
    argv = ["--config", config, "--train_file", reviews_csv, "--output_dir", str(out)]
    code, stderr = run_as_cli(classify if recipe == "classify" else mlm, argv, capsys)
    assert_one_clear_error(code, stderr, [f"{config}: 'num_train_epochs' expects a number, got 'three' (str)"])
    assert snapshot(out) == before


@pytest.mark.parametrize("recipe", ["classify", "mlm"])
def test_output_dir_with_a_finished_run_is_refused(recipe, tiny_bert, reviews_csv, tmp_path, capsys):
    out = tmp_path / "run"
    before = finished_run(out)
    code, stderr = run_as_cli(classify if recipe == "classify" else mlm, arguments(tiny_bert, reviews_csv, out), capsys)
    assert_one_clear_error(
        code, stderr, [f"output_dir {out} already holds a finished run", "overwrite_output_dir: true"]
    )
    assert snapshot(out) == before


def test_overwrite_keeps_the_earlier_run_when_the_input_is_bad(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    before = finished_run(out)
    data = write(tmp_path / "reviews.csv", HEADER + csv_rows(3) + "a good film, really,pos\n")
    code, stderr = run_as_cli(classify, arguments(tiny_bert, data, out, "--overwrite_output_dir", "true"), capsys)
    assert_one_clear_error(code, stderr, ["reviews.csv line 5 has 3 fields"])
    assert snapshot(out) == before


def test_cli_exit_code_and_traceback_only_with_debug_errors(tiny_bert, tmp_path):
    """The real entry point, `python -m transferkit.recipes.classify`, as a subprocess: once plain, once with
    --debug_errors true."""
    data = write(tmp_path / "reviews.csv", HEADER + csv_rows(3) + '"a good film,pos\n' + csv_rows())
    out = tmp_path / "run"
    before = interrupted_run(out)
    command = [sys.executable, "-m", "transferkit.recipes.classify", *arguments(tiny_bert, data, out)]
    command += ["--resume_from_checkpoint", "auto"]
    env = dict(os.environ, PYTHONPATH=REPO, TRANSFERKIT_DEBUG="0")

    plain = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert plain.returncode == 2, plain.stderr[-3000:]
    assert "Traceback" not in plain.stderr
    last = plain.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: train_file: {data} line 5: a quote that is never closed"), last
    assert last.endswith("(--debug_errors true or TRANSFERKIT_DEBUG=1 shows the traceback)")

    debug = subprocess.run([*command, "--debug_errors", "true"], capture_output=True, text=True, env=env, timeout=300)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "TransferKitError: train_file:" in debug.stderr
    assert snapshot(out) == before


def test_debug_errors_from_the_config_file(tiny_bert, tmp_path):
    """`debug_errors: true` in the YAML shows the traceback too (in-process: the exception propagates)."""
    from transferkit.errors import TransferKitError

    data = write(tmp_path / "reviews.csv", HEADER + csv_rows(3) + "a good film, really,pos\n")
    config = write(tmp_path / "run.yaml", "debug_errors: true\n")
    argv = ["--config", config, *arguments(tiny_bert, data, tmp_path / "run")]
    with pytest.raises(TransferKitError, match="line 5 has 3 fields"):
        exit_on_user_error(lambda: classify(argv), argv)


def test_blank_texts_are_dropped_with_a_count(tiny_bert, tmp_path, capsys):
    """Empty or whitespace-only texts are not an error: the rows are dropped and the count is logged (README)."""
    data = write(tmp_path / "reviews.csv", HEADER + csv_rows(20) + "   ,pos\n,neg\n" + csv_rows(20))
    metrics = classify(arguments(tiny_bert, data, tmp_path / "run", "--dry_run", "true"))
    assert metrics == {}
    log = capsys.readouterr().err  # the recipe's setup_logging replaces the root handlers (and caplog's)
    assert "Dropped 2 rows of the train split with an empty text" in log
    assert "dry run: train: 36 examples" in log  # 40 kept, 10% held out for validation
