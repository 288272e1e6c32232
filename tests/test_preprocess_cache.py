"""Preprocessing is cached across processes: a second run with the same data and tokenizer tokenizes nothing.

Each run is a fresh process (this file run as a script) that loads the tokenizer again and preprocesses the way the
recipes do: classification (drop_duplicates, carved validation and test splits) and MLM packing (with the fixed
evaluation masks). The child counts calls to the mapped functions with a profile hook, so nothing in the code under
test is replaced (a replaced function would change the cache key it is meant to check).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MAPPED = {  # the functions that do the tokenizing, by module
    "transferkit.preprocess": ("_tokenize_batch",),
    "transferkit.mlm_data": ("_packed_chunks", "_mask_batch"),
}


# ---- the child: one preprocessing run -----------------------------------------------------------------------------


def count_calls(codes: dict) -> dict[str, int]:
    """Count Python-level calls of the given code objects from now on (same process: num_proc is None)."""
    counts = dict.fromkeys(codes.values(), 0)

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            counts[codes[frame.f_code]] += 1

    sys.setprofile(profile)
    return counts


def run_child(model: str, data: str) -> dict:
    import importlib

    from transformers import TrainingArguments

    from transferkit.arguments import DataArguments, MLMArguments, ModelArguments
    from transferkit.data import load_classification_splits, load_corpus_splits
    from transferkit.mlm_data import tokenize_for_mlm
    from transferkit.models import load_tokenizer
    from transferkit.preprocess import tokenize_for_classification

    codes = {
        getattr(importlib.import_module(module), name).__code__: name
        for module, names in MAPPED.items()
        for name in names
    }
    model_args = ModelArguments(model_name_or_path=model)
    training_args = TrainingArguments(output_dir=os.path.join(os.environ["HF_DATASETS_CACHE"], "unused"), report_to=[])
    tokenizer = load_tokenizer(model_args)  # a fresh tokenizer object, as every run has
    counts = count_calls(codes)
    classify_args = DataArguments(
        train_file=data, drop_duplicates=True, validation_split_percentage=10, test_split_percentage=10
    )
    splits, text_columns, _ = load_classification_splits(classify_args, model_args, None, seed=0)
    classified = tokenize_for_classification(splits, tokenizer, text_columns, 32, classify_args, training_args)
    corpus_args = DataArguments(train_file=data, validation_split_percentage=10)
    corpus, text_columns = load_corpus_splits(corpus_args, model_args, streaming=False, seed=0)
    packed = tokenize_for_mlm(corpus, tokenizer, text_columns, 16, corpus_args, MLMArguments(), training_args)
    sys.setprofile(None)
    return {
        "calls": counts,
        "cache_files": {
            f"{kind}/{name}": [entry["filename"] for entry in split.cache_files]
            for kind, result in (("classify", classified), ("mlm", packed))
            for name, split in result.items()
        },
        "rows": {
            f"{kind}/{name}": len(split)
            for kind, result in (("classify", classified), ("mlm", packed))
            for name, split in result.items()
        },
    }


# ---- the test -----------------------------------------------------------------------------------------------------


def run_in_subprocess(model: str, data: str, cache: Path) -> dict:
    env = dict(os.environ, HF_DATASETS_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--model", model, "--data", data],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def arrow_files(cache: Path) -> dict[str, tuple[int, int]]:
    """Every cache file with its size and modification time: a file written again would show a new time."""
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in sorted(cache.rglob("*.arrow"))}


def test_second_process_reuses_the_tokenized_cache(tiny_bert, reviews_csv, tmp_path):
    cache = tmp_path / "datasets-cache"
    first = run_in_subprocess(tiny_bert, reviews_csv, cache)
    after_first = arrow_files(cache)
    second = run_in_subprocess(tiny_bert, reviews_csv, cache)

    assert all(count > 0 for count in first["calls"].values()), first["calls"]  # the first run did tokenize
    assert set(first["cache_files"]) == {
        "classify/train",
        "classify/validation",
        "classify/test",
        "mlm/train",
        "mlm/validation",
    }
    for name, files in first["cache_files"].items():
        assert files and all(file.startswith(str(cache)) for file in files), (name, files)
    assert second["calls"] == dict.fromkeys(first["calls"], 0)  # the second one did not
    assert second["cache_files"] == first["cache_files"]  # it read the first run's files
    assert second["rows"] == first["rows"]
    assert arrow_files(cache) == after_first  # and wrote or rewrote none


def test_map_fingerprint_ignores_tokenizer_runtime_state_but_not_its_configuration(tiny_bert):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from transferkit.preprocess import _tokenize_batch, map_fingerprint

    rows = Dataset.from_dict({"text": ["a good film"]})

    def key(tokenizer, **settings):
        return map_fingerprint(rows, _tokenize_batch, {"tokenizer": tokenizer, "max_seq_length": 32, **settings})

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    fresh = key(tokenizer)
    tokenizer(["good film"] * 2, truncation=True, max_length=4, padding="max_length")  # sets backend state
    tokenizer(" ".join(["film"] * 100))  # longer than model_max_length: warns once, and records that
    assert key(tokenizer) == fresh == key(AutoTokenizer.from_pretrained(tiny_bert))
    assert key(AutoTokenizer.from_pretrained(tiny_bert, do_lower_case=False)) != fresh
    assert key(tokenizer, max_seq_length=16) != fresh
    assert map_fingerprint(Dataset.from_dict({"text": ["a bad film"]}), _tokenize_batch, {"tokenizer": tokenizer}) != (
        map_fingerprint(rows, _tokenize_batch, {"tokenizer": tokenizer})
    )
    tokenizer.add_tokens(["cinema"])
    assert key(tokenizer) != fresh


def test_map_fingerprint_changes_when_the_mapped_functions_module_is_edited(tmp_path, monkeypatch):
    """datasets alone keys a module-level function by its name: an edited (upgraded) function would reuse old files."""
    import importlib

    from datasets import Dataset
    from datasets.fingerprint import Hasher

    from transferkit import preprocess

    monkeypatch.syspath_prepend(str(tmp_path))
    source = tmp_path / "edited_tokenizing.py"
    source.write_text("def tokenize(batch):\n    return {'n': [1 for _ in batch['text']]}\n")
    module = importlib.import_module("edited_tokenizing")
    rows = Dataset.from_dict({"text": ["a good film"]})
    before, datasets_key = preprocess.map_fingerprint(rows, module.tokenize, {}), Hasher.hash(module.tokenize)
    source.write_text("def tokenize(batch):\n    return {'n': [2 for _ in batch['text']]}\n")
    module = importlib.reload(module)
    preprocess._module_source_hash.cache_clear()
    assert Hasher.hash(module.tokenize) == datasets_key  # what datasets would key the map with
    assert preprocess.map_fingerprint(rows, module.tokenize, {}) != before


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="One preprocessing run (the child of the cache test).")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    arguments = parser.parse_args()
    print(json.dumps(run_child(arguments.model, arguments.data)))
