"""Finetune a pretrained encoder for sequence classification with transformers' Trainer.

Supports:
- single-label (int, string or ClassLabel labels), multi-label (a list of labels per row) and regression (floats),
  detected from the labels or set with `problem_type`; one text column or a text pair;
- data from the Hub (`dataset_name`) or local csv / tsv / json / jsonl / parquet files, folders or globs; a
  validation (and test) split carved from train when missing, stratified by label;
- dynamic padding with length-grouped batches, class weights (`class_weights: auto`), early stopping with
  best-model selection, offline metrics (accuracy, F1, precision, recall, MCC / multi-label F1 / MSE, Pearson,
  Spearman);
- outputs in `output_dir`: model + tokenizer (safetensors), all_results.json, test predictions CSV, confusion
  matrix and training-curve PNGs, a model card.

Fails before training, with one message naming the thing and the fix, on: a missing file or unknown format, a
text or label column that does not exist, an empty split, rows without a label, a validation/test label that
training never saw, list labels in a single-label setting, max_seq_length above the model's limit.

Launch:
    python recipes/classify.py --config recipes/configs/quickstart/classify.yaml --train_file reviews.csv
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml recipes/classify.py --config my.yaml
    accelerate launch -m transferkit.recipes.classify --config my.yaml      # from an installed wheel
"""

from __future__ import annotations

import json
import logging
import os

from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

from transferkit.arguments import ClassificationArguments, DataArguments, ModelArguments, RunArguments
from transferkit.config import parse_config
from transferkit.data import load_classification_splits
from transferkit.errors import TransferKitError, exit_on_user_error
from transferkit.labels import SINGLE, class_weights
from transferkit.metrics import BEST_MODEL_METRIC, build_compute_metrics, load_metric, predictions_from_logits
from transferkit.models import load_classifier, load_tokenizer, resolve_max_seq_length
from transferkit.preprocess import tokenize_for_classification
from transferkit.reports import output_path, plot_confusion_matrix, plot_training_curves, write_predictions
from transferkit.train import (
    ClassWeightedTrainer,
    disable_eval_without_split,
    log_run_plan,
    resolve_checkpoint,
    runtime_defaults,
    setup_logging,
    train_and_save,
)

logger = logging.getLogger("transferkit.recipes.classify")

# Where these differ from TrainingArguments' own defaults, it is so that a plain run evaluates, keeps few
# checkpoints and batches texts of similar length together (much less padding than random batches).
DEFAULTS = {
    "output_dir": "outputs/classify",
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "logging_steps": 25,
    "train_sampling_strategy": "group_by_length",
}
ARGUMENT_TYPES = (ModelArguments, DataArguments, ClassificationArguments, RunArguments, TrainingArguments)


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, cls_args, run_args, training_args = parse_config(
        ARGUMENT_TYPES, argv, defaults={**DEFAULTS, **runtime_defaults()}, description=__doc__
    )
    setup_logging(training_args)
    checkpoint = resolve_checkpoint(training_args, run_args)

    splits, text_columns, spec = load_classification_splits(
        data_args, model_args, cls_args.problem_type, training_args.seed
    )
    tokenizer = load_tokenizer(model_args)
    set_seed(training_args.seed)  # the new head's initial weights come from this seed
    model = load_classifier(model_args, spec)
    max_seq_length = resolve_max_seq_length(data_args.max_seq_length, tokenizer, model.config)
    tokenized = tokenize_for_classification(splits, tokenizer, text_columns, max_seq_length, data_args, training_args)
    disable_eval_without_split(training_args, "validation" in tokenized)
    callbacks = configure_early_stopping(training_args, cls_args, spec.problem_type)
    log_run_plan(tokenized, training_args)

    trainer_kwargs = {}
    if cls_args.class_weights:
        trainer_kwargs["class_weights"] = class_weights(spec, tokenized["train"]["label"], cls_args.class_weights)
    trainer = (ClassWeightedTrainer if trainer_kwargs else Trainer)(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=build_compute_metrics(spec.problem_type, load_metric(spec.problem_type, cls_args.metric_name)),
        callbacks=callbacks,
        **trainer_kwargs,
    )
    metrics = train_and_save(trainer, checkpoint)

    if "validation" in tokenized:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    if "test" in tokenized:
        metrics.update(predict_and_report(trainer, tokenized["test"], text_columns, spec))
    if trainer.is_world_process_zero():
        plot_training_curves(output_path(training_args.output_dir, "training_curves.png"), trainer.state.log_history)
        with open(output_path(training_args.output_dir, "label_spec.json"), "w") as handle:
            json.dump(
                {
                    "problem_type": spec.problem_type,
                    "labels": list(spec.names),
                    "text_columns": text_columns,
                    "max_seq_length": max_seq_length,
                },
                handle,
                indent=2,
            )
    return metrics


def configure_early_stopping(args: TrainingArguments, cls_args: ClassificationArguments, problem_type: str) -> list:
    """Early stopping needs the best model kept and a metric to compare; fill in what the user left unset."""
    if cls_args.early_stopping_patience is None:
        return []
    if args.eval_strategy == "no":
        raise TransferKitError("early_stopping_patience needs evaluations: set eval_strategy to epoch or steps.")
    if args.save_strategy != args.eval_strategy:
        raise TransferKitError(
            f"early_stopping_patience keeps the best checkpoint, so save_strategy ({args.save_strategy}) must "
            f"equal eval_strategy ({args.eval_strategy})."
        )
    args.load_best_model_at_end = True
    if args.metric_for_best_model is None:
        args.metric_for_best_model, args.greater_is_better = BEST_MODEL_METRIC[problem_type]
    return [EarlyStoppingCallback(cls_args.early_stopping_patience, cls_args.early_stopping_threshold)]


def predict_and_report(trainer: Trainer, test_split, text_columns: list[str], spec) -> dict[str, float]:
    """Predict the test split; write predictions.csv and, for single-label data, the confusion matrix."""
    output = trainer.predict(test_split, metric_key_prefix="test")
    metrics = output.metrics if "label" in test_split.column_names else {}
    if metrics:
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
    if trainer.is_world_process_zero():
        output_dir = trainer.args.output_dir
        write_predictions(
            output_path(output_dir, "predictions.csv"), test_split, text_columns, output.predictions, spec
        )
        if spec.problem_type == SINGLE and "label" in test_split.column_names:
            predicted = predictions_from_logits(output.predictions, spec.problem_type)
            plot_confusion_matrix(
                os.path.join(output_dir, "confusion_matrix.png"), output.label_ids, predicted, spec.names
            )
    return metrics


if __name__ == "__main__":
    exit_on_user_error(main)
