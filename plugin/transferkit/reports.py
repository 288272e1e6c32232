"""What a run leaves for people to read: predictions next to their texts, a confusion matrix, training curves.

Only the main process writes; the figures use matplotlib's Agg backend so they render on headless machines.
"""

from __future__ import annotations

import csv
import logging
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from datasets import Dataset, Features, List, Value, concatenate_datasets  # noqa: E402
from transformers.trainer_utils import PredictionOutput  # noqa: E402

from transferkit.data import rows_with_text  # noqa: E402
from transferkit.labels import MULTI, REGRESSION, SINGLE, LabelSpec  # noqa: E402
from transferkit.metrics import predictions_from_logits, probabilities_from_logits  # noqa: E402
from transferkit.tables import TableWriter  # noqa: E402

logger = logging.getLogger(__name__)
RESULT_COLUMNS = ("predicted", "score")  # the columns transferkit.predict adds to new data (and prob_<label>)


def write_predictions(
    path: str,
    dataset: Dataset,
    text_columns: list[str],
    logits: np.ndarray,
    spec: LabelSpec,
    predicted_rows: list[int] | None = None,
) -> None:
    """CSV with the text, the gold label (when the split has one), the predicted label and the probabilities: one
    line per row of `dataset`, in its order, so it lines up with the input file.

    `logits[i]` belongs to row `predicted_rows[i]` (all rows when None); the other rows (no text) get empty
    `predicted` and probability cells. An empty text cell is written empty, never as 'None'.
    """
    rows = range(len(dataset)) if predicted_rows is None else predicted_rows
    predicted = dict(zip(rows, predictions_from_logits(logits, spec.problem_type)))
    probabilities = dict(zip(rows, probabilities_from_logits(logits, spec.problem_type)))
    has_gold = "label" in dataset.column_names
    score_columns = ["score"] if spec.problem_type == REGRESSION else [f"prob_{name}" for name in spec.names]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*text_columns, *(["label"] if has_gold else []), "predicted", *score_columns])
        golds = dataset["label"][:] if has_gold else [None] * len(dataset)
        texts = zip(*(dataset[column][:] for column in text_columns))
        for index, (text, gold) in enumerate(zip(texts, golds)):
            gold_cell = [_label_text(gold, spec)] if has_gold else []
            if index in predicted:
                scores = [_label_text(predicted[index], spec), *(f"{p:.6f}" for p in probabilities[index])]
            else:
                scores = [""] * (1 + len(score_columns))
            writer.writerow(["" if cell is None else cell for cell in text] + gold_cell + scores)


def _label_text(value, spec: LabelSpec) -> str:
    if value is None:  # a test row with neither text nor label (data.encode_every_test_row)
        return ""
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
    """Predict the test split; write predictions.csv and, for single-label data, the confusion matrix.

    predictions.csv has one line per row of `test_split`, in order. A row with no text at all (kept by
    data.load_classification_splits so the file lines up with the input) is not predicted: its `predicted` and
    probability cells are empty, since a guess from no text is the class prior, not a reading. The metrics, the
    confusion matrix and `test_samples` cover the predicted rows only; `test_not_predicted` counts the others.
    """
    output, logits, predicted_rows = predict_rows_with_text(trainer, test_split, text_columns)
    gold = _joined(output.label_ids)
    labelled = "label" in test_split.column_names
    counts = {"test_samples": len(predicted_rows), "test_not_predicted": len(test_split) - len(predicted_rows)}
    metrics = {**output.metrics, **counts} if labelled else {}
    if metrics:
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
    if trainer.is_world_process_zero():
        output_dir = trainer.args.output_dir
        path = output_path(output_dir, "predictions.csv")
        write_predictions(path, test_split, text_columns, logits, spec, predicted_rows)
        if spec.problem_type == SINGLE and labelled:
            predicted = predictions_from_logits(logits, spec.problem_type)
            plot_confusion_matrix(output_path(output_dir, "confusion_matrix.png"), gold, predicted, spec.names)
    return metrics


def predict_rows_with_text(
    trainer, split: Dataset, text_columns: list[str], model_columns: list[str] | None = None, prefix: str = "test"
) -> tuple[PredictionOutput, np.ndarray, list[int]]:
    """`trainer.predict` over the rows of `split` that hold some text: (Trainer's output, the logits as one array,
    the row of `split` each logit row belongs to).

    Rows with no text keep their place in the caller's output, not predicted (see `predict_and_report`).
    `model_columns`, when given, are the only columns handed to the Trainer: new data may carry a `label` column of
    strings that the collator could not batch. The recipes' test prediction and transferkit.predict share this.
    """
    predicted_rows = rows_with_text(split, text_columns)
    skipped = len(split) - len(predicted_rows)
    if skipped:
        logger.warning(
            "%d rows have no text: they keep their place in the predictions, not predicted (empty 'predicted' "
            "cell) and not scored.",
            skipped,
        )
    inputs = split.select(predicted_rows) if skipped else split
    if model_columns is not None:
        inputs = inputs.select_columns(model_columns)
    output = trainer.predict(inputs, metric_key_prefix=prefix)
    logits = _joined(output.predictions)
    return output, logits, _rows_predicted(predicted_rows, len(logits))


def _joined(value):
    """Trainer's predictions as one array: with eval_do_concat_batches false it returns a list of batches."""
    return np.concatenate(value) if isinstance(value, list) and value else value


def _rows_predicted(asked: list[int], returned: int) -> list[int]:
    """The rows `returned` predictions belong to: the first ones asked for. Trainer applies dataloader_drop_last to
    the prediction dataloader too (the last incomplete batch is never predicted), in order, as length-sorting is
    off then (trainers.ClassificationTrainer._sorts); those rows keep their place, not predicted, and say so."""
    if returned < len(asked):
        logger.warning(
            "Only %d of the %d rows with text were predicted: dataloader_drop_last drops the last incomplete "
            "batch in prediction too. The others keep their place in the predictions, not predicted.",
            returned,
            len(asked),
        )
    return asked[:returned]


# -- new data labelled by transferkit.predict: the input's columns, then the results --------------------------------
def result_columns(logits: np.ndarray, spec: LabelSpec, all_probabilities: bool, threshold: float) -> dict[str, list]:
    """`predicted` (the label name; a list of names for multi-label; the value for regression) and `score` (its
    probability; a list for multi-label), and with `all_probabilities` one prob_<label> column per class."""
    if spec.problem_type == REGRESSION:
        return {"predicted": predictions_from_logits(logits, REGRESSION).tolist()}
    probabilities = probabilities_from_logits(logits, spec.problem_type)
    names = np.asarray(spec.names, dtype=object)
    if spec.problem_type == MULTI:
        chosen = probabilities > threshold
        predicted = [names[row].tolist() for row in chosen]
        score = [values[row].tolist() for values, row in zip(probabilities, chosen)]
    else:  # the argmax of the logits, as classify's predictions.csv (metrics.predictions_from_logits)
        best = predictions_from_logits(logits, SINGLE)
        predicted, score = names[best].tolist(), probabilities[np.arange(len(best)), best].tolist()
    columns = {"predicted": predicted, "score": score}
    if all_probabilities:
        columns.update({f"prob_{name}": probabilities[:, index].tolist() for index, name in enumerate(spec.names)})
    return columns


def placed(values: list, rows: list[int], total: int) -> list:
    """`values[i]` at row `rows[i]` of `total`; None in the rows that were not predicted (no text)."""
    column: list = [None] * total
    for row, value in zip(rows, values):
        column[row] = value
    return column


def result_features(spec: LabelSpec, all_probabilities: bool) -> Features:
    """The result columns' types, fixed by the labels rather than read off the values: a chunk whose rows all lack
    text (every result cell None) is typed as the others, so that a parquet file written in chunks has one schema."""
    if spec.problem_type == REGRESSION:
        return Features({"predicted": Value("float64")})
    if spec.problem_type == MULTI:
        features = {"predicted": List(Value("string")), "score": List(Value("float64"))}
    else:
        features = {"predicted": Value("string"), "score": Value("float64")}
    if all_probabilities:
        features.update({f"prob_{name}": Value("float64") for name in spec.names})
    return Features(features)


def with_predictions(dataset: Dataset, columns: dict[str, list], features: Features | None = None) -> Dataset:
    """The input's columns, in their order, then the result columns (typed by `features`, see `result_features`)."""
    return concatenate_datasets([dataset.flatten_indices(), Dataset.from_dict(columns, features=features)], axis=1)


def predictions_table(rows: Dataset, columns: dict[str, list], features: Features) -> pa.Table:
    """`with_predictions` as an Arrow table, without copying the input's rows into a new cache file: a chunk of the
    input goes to the writer as it is."""
    table = rows.with_format("arrow")[:]
    for field in features.arrow_schema:
        table = table.append_column(field, pa.array(columns[field.name], field.type))
    return table


def write_table(table: Dataset, path: str) -> None:
    """Write `table` in the format the extension names, to a temporary name renamed at the end: a failed or killed
    run leaves no half-written file under `path` (transferkit.tables.TableWriter, which the predict recipe also
    appends to a chunk at a time). CSV cells hold no lists: multi-label names and scores are joined with ';' (as
    classify's predictions.csv writes them)."""
    with TableWriter(path, table.features) as writer:
        writer.write(table)


def output_path(output_dir: str, name: str) -> str:
    os.makedirs(output_dir, exist_ok=True)
    return os.path.join(output_dir, name)
