"""Benchmark (not a test): preprocessing time of a first run and of a second run that finds the cache.

Usage::

    python tests/benchmarks/bench_preprocess.py [--paths classify,mlm] [--model PATH] [--data CSV] [--out DIR]
        [--workers 1,2,auto] [--repeat-data N]

For each path, in a fresh datasets cache (``HF_DATASETS_CACHE`` in a new temporary folder), the same preprocessing
runs twice, each time in a new process that loads the tokenizer again, as two launches of a recipe would:

* ``classify``: ``load_classification_splits`` (csv check and load, empty texts dropped, duplicates dropped, labels
  encoded, seeded 80/10/10 split) + ``tokenize_for_classification`` (max_seq_length 128);
* ``mlm``: ``load_corpus_splits`` (90/10 split) + ``tokenize_for_mlm`` (packed chunks of 128 tokens, fixed
  evaluation masks).

Defaults: the quickstart model (all-MiniLM-L6-v2) and the quickstart reviews CSV, found as
``bench_classify.prepare_inputs`` finds them. Timed in the child: loading and splitting, tokenizing, and their sum
(the preprocessing); the tokenizer's load and the imports are left out (the same in both runs) and reported apart,
with the child's whole wall time. The issue's target: the second run's preprocessing at most 5% of the first's.
Also reported: the cache files each run wrote (the second should write none). Reports: ``bench_preprocess.json``
and ``bench_preprocess.md`` in ``--out``.

``--workers`` runs each path once per ``preprocessing_num_workers`` value (``auto``: the option unset, TransferKit's
rule), each in its own fresh cache; ``--repeat-data N`` preprocesses the CSV's rows N times over (each copy's texts
made distinct, so duplicates are not dropped), to see where datasets' ``num_proc`` start-up cost is paid back.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_classify, next to this file
from bench_classify import prepare_inputs, write_reports  # noqa: E402

PATHS = ("classify", "mlm")
MAX_SEQ_LENGTH = 128
TARGET_RATIO = 0.05
SEED = 42


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from {', '.join(PATHS)}")
    parser.add_argument("--model", default=None, help="model folder (default: the quickstart model)")
    parser.add_argument("--data", default=None, help="reviews CSV (default: written by quickstart.prepare_reviews)")
    parser.add_argument("--out", default="bench_results", help="folder for the JSON and Markdown reports")
    parser.add_argument("--workers", default="auto", help="comma-separated preprocessing_num_workers values, or auto")
    parser.add_argument("--repeat-data", type=int, default=1, help="preprocess the CSV's rows this many times over")
    parser.add_argument("--child", default=None, choices=PATHS, help=argparse.SUPPRESS)  # internal: one run
    args = parser.parse_args(argv)
    unknown = set(args.paths.split(",")) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths {sorted(unknown)}; choose from {', '.join(PATHS)}")
    return args


# ---- one run, in its own process ------------------------------------------------------------------------------


def workers_option(value: str) -> dict:
    """DataArguments keywords for one --workers value: `auto` leaves preprocessing_num_workers unset."""
    return {} if value == "auto" else {"preprocessing_num_workers": int(value)}


def repeated_csv(data: str, times: int, folder: str) -> str:
    """The CSV's rows `times` over, copy k's texts suffixed with " (k)" so that drop_duplicates keeps them."""
    if times == 1:
        return data
    import csv

    path = os.path.join(folder, f"repeated-{times}x.csv")
    with open(data, newline="", encoding="utf-8") as source, open(path, "w", newline="", encoding="utf-8") as out:
        reader = csv.DictReader(source)
        rows = list(reader)
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames)
        writer.writeheader()
        for copy in range(times):
            writer.writerows({**row, "text": f"{row['text']} ({copy})" if copy else row["text"]} for row in rows)
    return path


def run_child(path: str, model: str, data: str, workers: str = "auto") -> dict:
    """Preprocess once; the datasets cache is wherever HF_DATASETS_CACHE points."""
    started = time.perf_counter()
    from transformers import TrainingArguments

    from transferkit.arguments import DataArguments, MLMArguments, ModelArguments
    from transferkit.data import load_classification_splits, load_corpus_splits
    from transferkit.mlm_data import tokenize_for_mlm
    from transferkit.models import load_tokenizer
    from transferkit.preprocess import tokenize_for_classification

    imported = time.perf_counter()
    model_args = ModelArguments(model_name_or_path=model)
    training_args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="bench-preprocess-"), report_to=[])
    tokenizer = load_tokenizer(model_args)
    loaded_tokenizer = time.perf_counter()
    if path == "classify":
        data_args = DataArguments(
            train_file=data,
            drop_duplicates=True,
            validation_split_percentage=10,
            test_split_percentage=10,
            **workers_option(workers),
        )
        splits, text_columns, _ = load_classification_splits(data_args, model_args, None, SEED)
        split_done = time.perf_counter()
        tokenized = tokenize_for_classification(
            splits, tokenizer, text_columns, MAX_SEQ_LENGTH, data_args, training_args
        )
    else:
        data_args = DataArguments(train_file=data, validation_split_percentage=10, **workers_option(workers))
        splits, text_columns = load_corpus_splits(data_args, model_args, streaming=False, seed=SEED)
        split_done = time.perf_counter()
        tokenized = tokenize_for_mlm(
            splits, tokenizer, text_columns, MAX_SEQ_LENGTH, data_args, MLMArguments(), training_args
        )
    finished = time.perf_counter()
    return {
        "import_seconds": imported - started,
        "tokenizer_load_seconds": loaded_tokenizer - imported,
        "load_split_seconds": split_done - loaded_tokenizer,
        "tokenize_seconds": finished - split_done,
        "preprocess_seconds": finished - loaded_tokenizer,
        "rows": {name: len(split) for name, split in tokenized.items()},
        "cache_files": {name: [entry["filename"] for entry in split.cache_files] for name, split in tokenized.items()},
    }


# ---- the orchestration ------------------------------------------------------------------------------------------


def arrow_files(cache: str) -> set[str]:
    return {str(path) for path in Path(cache).rglob("*.arrow")}


def run_twice(args: argparse.Namespace, path: str, workers: str = "auto") -> dict:
    """The first and the second run of one path, each in a new process, in one fresh cache."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-cache-") as cache:
        env = dict(
            os.environ,
            HF_DATASETS_CACHE=cache,
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
        )
        command = [sys.executable, os.path.abspath(__file__), "--child", path, "--model", args.model]
        command += ["--data", args.data, "--workers", workers]
        for label in ("first", "second"):
            before = arrow_files(cache)
            print(f"{path}, workers {workers}: {label} run ...", flush=True)
            started = time.perf_counter()
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            if result.returncode != 0:
                raise SystemExit(f"{path} {label} run failed:\n{result.stderr[-3000:]}")
            run = json.loads(result.stdout.strip().splitlines()[-1])
            run.update(run=label, process_wall_seconds=wall, new_cache_files=len(arrow_files(cache) - before))
            run["cache_files"] = {
                name: [os.path.relpath(f, cache) for f in files] for name, files in run["cache_files"].items()
            }
            runs.append(run)
            print(
                f"  preprocessing {run['preprocess_seconds']:.3f} s (load+split {run['load_split_seconds']:.3f}, "
                f"tokenize {run['tokenize_seconds']:.3f}), {run['new_cache_files']} new cache files, "
                f"process {wall:.1f} s",
                flush=True,
            )
    first, second = runs
    return {
        "path": path,
        "workers": workers,
        "runs": runs,
        "ratio": second["preprocess_seconds"] / first["preprocess_seconds"],
        "tokenize_ratio": second["tokenize_seconds"] / first["tokenize_seconds"],
        "same_cache_files": second["cache_files"] == first["cache_files"],
        "target_met": second["preprocess_seconds"] <= TARGET_RATIO * first["preprocess_seconds"],
    }


def markdown(report: dict) -> str:
    lines = [
        f"Preprocessing cache: the tokenizer of {report['model']}, {report['data']}, max_seq_length "
        f"{MAX_SEQ_LENGTH}; each run a new process with a "
        f"fresh tokenizer, the second finding the first's cache. Target: second <= {TARGET_RATIO:.0%} of first.",
        "",
        "| path | workers | run | load + split s | tokenize s | preprocessing s | new cache files | process s "
        "(imports s) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in report["results"]:
        for run in result["runs"]:
            lines.append(
                f"| {result['path']} | {result['workers']} | {run['run']} | {run['load_split_seconds']:.3f} "
                f"| {run['tokenize_seconds']:.3f} "
                f"| {run['preprocess_seconds']:.3f} | {run['new_cache_files']} | {run['process_wall_seconds']:.1f} "
                f"({run['import_seconds']:.1f}) |"
            )
    lines += ["", "| path | workers | second / first | tokenize: second / first | same cache files | target met |"]
    lines += ["|---|---|---:|---:|---|---|"]
    for result in report["results"]:
        lines.append(
            f"| {result['path']} | {result['workers']} | {result['ratio']:.1%} | {result['tokenize_ratio']:.1%} "
            f"| {'yes' if result['same_cache_files'] else 'NO'} | {'yes' if result['target_met'] else 'NO'} |"
        )
    lines += [
        "",
        "Preprocessing = load + split + tokenize, after the tokenizer is loaded (imports and the tokenizer's load are "
        "the same in both runs: process s includes them). Rows: "
        + "; ".join(
            f"{result['path']} " + ", ".join(f"{name} {rows}" for name, rows in result["runs"][0]["rows"].items())
            for result in report["results"]
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args.model, args.data, args.workers)))
        return 0
    prepare_inputs(args)
    scratch = tempfile.mkdtemp(prefix="bench-preprocess-data-")
    args.data = repeated_csv(args.data, args.repeat_data, scratch)
    import datasets
    import transformers

    report = {
        "model": args.model,
        "data": args.data,
        "max_seq_length": MAX_SEQ_LENGTH,
        "target_ratio": TARGET_RATIO,
        "repeat_data": args.repeat_data,
        "results": [
            run_twice(args, path, workers) for path in args.paths.split(",") for workers in args.workers.split(",")
        ],
        "environment": {
            "datasets": datasets.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg_1min": os.getloadavg()[0],
        },
    }
    write_reports(args.out, "bench_preprocess", report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
