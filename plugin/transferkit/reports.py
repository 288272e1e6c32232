"""What a run leaves for people to read: predictions next to their texts, a confusion matrix, training curves.

Only the main process writes; the figures use matplotlib's Agg backend so they render on headless machines.
"""

from __future__ import annotations

import csv
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from datasets import Dataset  # noqa: E402

from transferkit.labels import MULTI, REGRESSION, SINGLE, LabelSpec  # noqa: E402
from transferkit.metrics import predictions_from_logits, probabilities_from_logits  # noqa: E402


def write_predictions(path: str, dataset: Dataset, text_columns: list[str], logits: np.ndarray, spec: LabelSpec):
    """CSV with the text, the gold label (when the split has one), the predicted label and the probabilities."""
    predicted = predictions_from_logits(logits, spec.problem_type)
    probabilities = probabilities_from_logits(logits, spec.problem_type)
    has_gold = "label" in dataset.column_names
    score_columns = ["score"] if spec.problem_type == REGRESSION else [f"prob_{name}" for name in spec.names]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*text_columns, *(["label"] if has_gold else []), "predicted", *score_columns])
        golds = dataset["label"] if has_gold else [None] * len(dataset)
        texts = zip(*(dataset[column] for column in text_columns))
        for text, gold, prediction, row in zip(texts, golds, predicted, probabilities):
            gold_cell = [_label_text(gold, spec)] if has_gold else []
            writer.writerow([*text, *gold_cell, _label_text(prediction, spec), *(f"{p:.6f}" for p in row)])


def _label_text(value, spec: LabelSpec) -> str:
    if spec.problem_type == REGRESSION:
        return f"{float(value):.6f}"
    if spec.problem_type == MULTI:
        return ";".join(name for name, hot in zip(spec.names, value) if hot)
    return spec.names[int(value)]


def plot_confusion_matrix(path: str, gold: np.ndarray, predicted: np.ndarray, names: tuple[str, ...]) -> None:
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(matrix, (gold.astype(int), predicted.astype(int)), 1)
    size = max(4.0, 0.5 * len(names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    axes.set(
        xticks=range(len(names)),
        yticks=range(len(names)),
        xticklabels=names,
        yticklabels=names,
        xlabel="predicted",
        ylabel="gold",
        title="Confusion matrix",
    )
    plt.setp(axes.get_xticklabels(), rotation=45, ha="right")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_training_curves(path: str, log_history: list[dict]) -> bool:
    """Train loss, eval loss and eval metrics against the step; False when nothing was logged."""
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evals = [entry for entry in log_history if "eval_loss" in entry]
    if not train and not evals:
        return False
    metric_names = sorted(
        {
            key
            for entry in evals
            for key in entry
            if key.startswith("eval_")
            and key not in ("eval_loss",)
            and not key.endswith(("runtime", "per_second"))
            and key != "eval_epoch"
        }
    )
    figure, (loss_axes, metric_axes) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        loss_axes.plot(*zip(*train), label="train loss")
    if evals:
        loss_axes.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="eval loss")
    loss_axes.set(xlabel="step", ylabel="loss", title="Loss")
    loss_axes.legend()
    for name in metric_names:
        points = [(e["step"], e[name]) for e in evals if name in e]
        metric_axes.plot(*zip(*points), "o-", label=name.removeprefix("eval_"))
    metric_axes.set(xlabel="step", title="Evaluation metrics")
    if metric_names:
        metric_axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def predict_and_report(trainer, test_split: Dataset, text_columns: list[str], spec: LabelSpec) -> dict[str, float]:
    """Predict the test split; write predictions.csv and, for single-label data, the confusion matrix."""
    output = trainer.predict(test_split, metric_key_prefix="test")
    labelled = "label" in test_split.column_names
    metrics = output.metrics if labelled else {}
    if metrics:
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
    if trainer.is_world_process_zero():
        output_dir = trainer.args.output_dir
        write_predictions(
            output_path(output_dir, "predictions.csv"), test_split, text_columns, output.predictions, spec
        )
        if spec.problem_type == SINGLE and labelled:
            predicted = predictions_from_logits(output.predictions, spec.problem_type)
            plot_confusion_matrix(
                output_path(output_dir, "confusion_matrix.png"), output.label_ids, predicted, spec.names
            )
    return metrics


def output_path(output_dir: str, name: str) -> str:
    os.makedirs(output_dir, exist_ok=True)
    return os.path.join(output_dir, name)
