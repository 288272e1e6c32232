"""Data preparation at cluster scale: preprocess_only, workers by split size, the main process checking and caching
the data once for the others, and a barrier timeout that names its fix.

The two-process test runs this file as the child of `torch.distributed.run` (gloo on the CPU), as
tests/test_preprocess_cache.py runs itself for a second process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from tests.test_preprocess_cache import arrow_files, count_calls
from tests.tiny import REPO
from transferkit import data, preprocess
from transferkit.errors import TransferKitError

# ---- preprocess_only ---------------------------------------------------------------------------------------------

RECIPES = {  # recipe -> (its main module, the functions that tokenize, extra arguments)
    "classify": ("recipes.classify", ("transferkit.preprocess", "_tokenize_batch"), []),
    "mlm": ("recipes.mlm", ("transferkit.mlm_data", "_packed_chunks"), ["--max_seq_length", "16"]),
}


def recipe_args(model: str, train_file: str, output_dir, cache, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        model,
        "--train_file",
        train_file,
        "--output_dir",
        str(output_dir),
        "--cache_dir",
        str(cache),
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "8",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--do_eval",
        "false",
        *extra,
    ]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_preprocess_only_caches_and_the_training_run_tokenizes_nothing(recipe, tiny_bert, reviews_csv, tmp_path):
    import importlib

    module_name, (mapped_module, mapped_name), extra = RECIPES[recipe]
    main = importlib.import_module(module_name).main
    tokenize = getattr(importlib.import_module(mapped_module), mapped_name).__code__
    cache, out = tmp_path / "cache", tmp_path / "out"
    messages: list[str] = []
    logger = preprocess.logger
    original_info = logger.info
    logger.info = lambda message, *args: messages.append(message % args)  # setup_logging replaces root handlers
    try:
        calls = count_calls({tokenize: "tokenize"})
        assert main(recipe_args(tiny_bert, reviews_csv, out, cache, "--preprocess_only", "true", *extra)) == {}
        sys.setprofile(None)
    finally:
        sys.setprofile(None)
        logger.info = original_info
    cached = arrow_files(cache)

    assert calls["tokenize"] > 0  # it tokenized
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()  # and did not train
    (report,) = [message for message in messages if message.startswith("preprocess_only")]
    assert str(cache) in report and f"recipes/{recipe}.py" in report
    calls = count_calls({tokenize: "tokenize"})
    try:
        metrics = main(recipe_args(tiny_bert, reviews_csv, out, cache, *extra))
    finally:
        sys.setprofile(None)
    assert calls["tokenize"] == 0  # the training run read the cache
    assert metrics["train_samples"] > 0 and (out / "model.safetensors").exists()
    assert {path: stamp for path, stamp in arrow_files(cache).items() if path in cached} == cached  # none rewritten


def test_preprocess_only_needs_no_hub_and_names_the_recipes_own_arguments(
    tiny_bert, reviews_csv, tmp_path, monkeypatch
):
    """One process filling the cache before a launch: no Hub access check (no token here), and the next command it
    suggests is built from the arguments the recipe got, not from sys.argv (pytest's here)."""
    from recipes.classify import main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token either
    messages: list[str] = []
    monkeypatch.setattr(preprocess.logger, "info", lambda message, *args: messages.append(message % args))
    push = ["--push_to_hub", "true", "--hub_model_id", "someone/model", "--preprocess_only", "true"]
    assert main(recipe_args(tiny_bert, reviews_csv, tmp_path / "out", tmp_path / "cache", *push)) == {}
    (report,) = [message for message in messages if message.startswith("preprocess_only")]
    assert tiny_bert in report and "--hub_model_id someone/model" in report and "--preprocess_only true" not in report


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_preprocess_only_reads_no_weights_and_prepares_a_qlora_run_on_a_cpu(recipe, tiny_bert, reviews_csv, tmp_path):
    """A CPU node preparing a GPU launch's data: the model's weights are never read (the folder here has none) and
    a QLoRA config, which needs CUDA to train, still prepares its data."""
    import importlib

    main = importlib.import_module(RECIPES[recipe][0]).main
    weightless = tmp_path / "weightless"
    shutil.copytree(tiny_bert, weightless, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    qlora = ["--use_peft", "true", "--load_in_4bit", "true", *RECIPES[recipe][2]]
    cache = tmp_path / "cache"
    assert (
        main(recipe_args(str(weightless), reviews_csv, tmp_path / "out", cache, *qlora, "--preprocess_only", "true"))
        == {}
    )
    assert arrow_files(cache)  # tokenized into the cache
    if not torch.cuda.is_available():  # and the training launch on this machine is refused, before any loading
        with pytest.raises(TransferKitError, match="load_in_4bit \\(QLoRA\\) needs a CUDA GPU"):
            main(recipe_args(str(weightless), reviews_csv, tmp_path / "out", cache, *qlora))


def test_preprocess_only_with_seeds_names_the_users_command(tiny_bert, reviews_csv, tmp_path, monkeypatch):
    """The seed loop prepares the data once through its first seed's run; the next command is still the user's
    (their config, no seed folder), not that run's scratch config and options."""
    from recipes.classify import main

    messages: list[str] = []
    monkeypatch.setattr(preprocess.logger, "info", lambda message, *args: messages.append(message % args))
    config = tmp_path / "seeds.yaml"
    config.write_text("seeds: [3, 4]\n")
    argv = recipe_args(tiny_bert, reviews_csv, tmp_path / "out", tmp_path / "cache", "--config", str(config))
    assert main([*argv, "--preprocess_only", "true"]) == {}
    (report,) = [message for message in messages if message.startswith("preprocess_only")]
    assert f"--config {config}" in report and "seed-3" not in report and "--split_seed" not in report


def test_preprocess_only_refuses_a_stream(tiny_bert, reviews_csv, tmp_path):
    from recipes.mlm import main

    args = recipe_args(tiny_bert, reviews_csv, tmp_path / "out", tmp_path / "cache", "--preprocess_only", "true")
    with pytest.raises(TransferKitError, match="streaming"):
        main([*args, "--streaming", "true"])


def test_the_next_command_drops_preprocess_only():
    assert preprocess.next_command(["--train_file", "a.csv", "--preprocess_only", "true", "--seed", "1"]) == [
        "--train_file",
        "a.csv",
        "--seed",
        "1",
    ]
    assert preprocess.next_command(["--preprocess_only=true", "--x", "1"]) == ["--x", "1"]
    assert preprocess.next_command(["--config", "my.yaml"]) == ["--config", "my.yaml", "--preprocess_only", "false"]


# ---- workers -------------------------------------------------------------------------------------------------------


def test_workers_follow_the_split_size_the_cores_and_an_explicit_value(monkeypatch):
    per_worker = preprocess.ROWS_PER_WORKER
    monkeypatch.setattr(preprocess, "usable_cores", lambda: 64)
    assert preprocess.map_workers(None, 160) is None  # the tests' data: one process, no pool to start
    assert preprocess.map_workers(None, 2 * per_worker - 1) is None
    assert preprocess.map_workers(None, 3 * per_worker) == 3
    assert preprocess.map_workers(None, 1000 * per_worker) == preprocess.MAX_AUTO_WORKERS
    assert preprocess.map_workers(5, 10) == 5  # an explicit value wins, whatever the size
    assert preprocess.map_workers(1, 1000 * per_worker) is None
    monkeypatch.setattr(preprocess, "usable_cores", lambda: 2)
    assert preprocess.map_workers(None, 1000 * per_worker) == 2


def test_usable_cores_reads_the_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert preprocess.usable_cores() == 3


def test_help_states_the_workers_rule():
    from transferkit.arguments import DataArguments

    text = DataArguments.__dataclass_fields__["preprocessing_num_workers"].metadata["help"]
    assert f"{preprocess.ROWS_PER_WORKER:,} rows" in text and f"{2 * preprocess.ROWS_PER_WORKER:,} rows" in text
    assert f"at most {preprocess.MAX_AUTO_WORKERS}" in text


# ---- the strict file check, once -----------------------------------------------------------------------------------


def test_a_file_that_passed_is_not_read_again_and_a_bad_one_always_fails(tmp_path, monkeypatch):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("text,label\na good film,pos\n")
    bad.write_text('text,label\n"an unclosed quote,pos\n')
    reads = []
    original = data._csv_problem
    monkeypatch.setattr(data, "_csv_problem", lambda *args: reads.append(args[0]) or original(*args))
    cache = str(tmp_path / "cache")
    for _ in range(2):
        data.check_data_file_once(str(good), "train_file", "csv", None, True, cache)
        with pytest.raises(TransferKitError, match="never closed"):
            data.check_data_file_once(str(bad), "train_file", "csv", None, True, cache)
    assert reads == [str(good), str(bad), str(bad)]
    good.write_text("text,label\na good film,pos\na bad film,neg,extra\n")  # changed: checked again, and fails
    with pytest.raises(TransferKitError, match="3 fields"):
        data.check_data_file_once(str(good), "train_file", "csv", None, True, cache)


# ---- the barrier timeout -------------------------------------------------------------------------------------------


class FakeArgs:
    process_index, ddp_timeout = 1, 1800


def test_a_barrier_timeout_names_ddp_timeout_and_preprocess_only():
    gloo = "[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 1800000ms for recv operation to complete"
    with pytest.raises(TransferKitError) as caught:
        with preprocess._naming_the_timeout(FakeArgs(), "tokenizing"):
            raise RuntimeError(gloo)
    assert "ddp_timeout (1800 s)" in str(caught.value) and "--preprocess_only true" in str(caught.value)
    with pytest.raises(RuntimeError, match="Connection closed"):  # other distributed errors pass unchanged
        with preprocess._naming_the_timeout(FakeArgs(), "tokenizing"):
            raise RuntimeError("Connection closed by peer")


# ---- two processes -------------------------------------------------------------------------------------------------

CHILD_TIMEOUT_S = 4  # ddp_timeout of the child processes; rank 0 sleeps past it in the last step


def run_child(model: str, good: str, bad: str, out: str) -> dict:
    """One rank: prepare the data as the classify recipe does, for a bad file, then a good one (counting rank's own
    strict passes and tokenizing calls), then wait at a barrier rank 0 does not reach in time."""
    import importlib

    import torch.distributed
    from transformers import TrainingArguments

    from transferkit.arguments import DataArguments, ModelArguments
    from transferkit.config import parse_config
    from transferkit.data import load_classification_splits
    from transferkit.models import load_tokenizer
    from transferkit.preprocess import main_process_first, tokenize_for_classification

    # parsed as the recipes parse them: transformers alone would give this CPU group torch's 30-minute timeout
    # (transferkit.distributed.cpu_process_group), and rank 1 would not give up within the test's time
    (training_args,) = parse_config(
        (TrainingArguments,),
        ["--output_dir", out, "--use_cpu", "true", "--ddp_timeout", str(CHILD_TIMEOUT_S), "--report_to", "none"],
    )
    assert torch.distributed.is_initialized() and not training_args.save_on_each_node
    rank, result = training_args.process_index, {}
    model_args = ModelArguments(model_name_or_path=model)
    tokenizer = load_tokenizer(model_args)
    try:
        with main_process_first(training_args, "loading, checking and cleaning the data"):
            load_classification_splits(DataArguments(train_file=bad), model_args, None, 0)
    except TransferKitError as err:
        result["bad_file_error"] = str(err)
    codes = {
        importlib.import_module("transferkit.data")._csv_problem.__code__: "strict_pass",
        importlib.import_module("transferkit.preprocess")._tokenize_batch.__code__: "tokenize",
    }
    calls = count_calls(codes)
    data_args = DataArguments(train_file=good)
    with main_process_first(training_args, "loading, checking and cleaning the data"):
        splits, columns, _ = load_classification_splits(data_args, model_args, None, 0)
    tokenized = tokenize_for_classification(splits, tokenizer, columns, 32, data_args, training_args)
    sys.setprofile(None)
    result.update(calls=calls, rows=len(tokenized["train"]))
    started = time.monotonic()
    try:
        with main_process_first(training_args, "tokenizing"):
            if rank == 0:
                time.sleep(CHILD_TIMEOUT_S + 3)
    except Exception as err:  # rank 1: the timeout; rank 0: its peer gone
        result["wait_error"] = f"{type(err).__name__}: {err}"
    result["waited_s"] = time.monotonic() - started
    return result


@pytest.mark.slow
def test_two_processes_prepare_once_raise_together_and_name_the_timeout(tiny_bert, reviews_csv, tmp_path):
    cache = tmp_path / "cache"
    good = shutil.copy(reviews_csv, tmp_path / "reviews.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text('text,label\na good film,pos\n"an unclosed quote,neg\n')
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__]
    command += ["--child", "--model", tiny_bert, "--good", str(good), "--bad", str(bad), "--out", str(tmp_path)]
    env = dict(os.environ, HF_DATASETS_CACHE=str(cache), PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    results = {rank: json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)}

    for rank in (0, 1):  # the bad file stops both processes, with the same message: no rank waits for the other
        assert "line 3" in results[rank]["bad_file_error"] and "never closed" in results[rank]["bad_file_error"]
    assert results[0]["calls"]["strict_pass"] == 1 and results[0]["calls"]["tokenize"] > 0
    assert results[1]["calls"] == {"strict_pass": 0, "tokenize": 0}  # rank 1 read what rank 0 checked and cached
    assert results[0]["rows"] == results[1]["rows"] > 0
    error = results[1]["wait_error"]
    assert error.startswith("TransferKitError") and "ddp_timeout" in error and "preprocess_only" in error, done.stderr
    assert CHILD_TIMEOUT_S - 1 < results[1]["waited_s"] < CHILD_TIMEOUT_S + 3


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="One rank of the two-process test.")
    parser.add_argument("--child", action="store_true")
    for name in ("--model", "--good", "--bad", "--out"):
        parser.add_argument(name, required=True)
    arguments = parser.parse_args()
    outcome = run_child(arguments.model, arguments.good, arguments.bad, arguments.out)
    with open(os.path.join(arguments.out, f"rank{os.environ['RANK']}.json"), "w") as handle:
        json.dump(outcome, handle)
