"""Finetune a pretrained encoder for sequence classification with transformers' Trainer.

Supports:
- single-label (int, string or ClassLabel labels), multi-label (a list of labels per row) and regression (floats),
  detected from the labels or set with `problem_type`; one text column or a text pair;
- data from the Hub (`dataset_name`) or local csv / tsv / json / jsonl / parquet files, folders or globs; a
  validation (and test) split carved from train when missing, stratified by label;
- dynamic padding with length-grouped batches and length-sorted evaluation, class weights (`class_weights: auto`),
  early stopping with best-model selection, the new head trained alone for `head_warmup_steps` before the whole
  model, offline metrics (accuracy, F1, precision, recall, MCC / multi-label F1 / MSE, Pearson, Spearman);
- long texts (`long_text`): truncated, read as their head and tail, or in overlapping windows: in training each
  window an example with its document's label (an epoch then holds more examples than documents), in evaluation
  and test predictions the windows' logits averaged or maxed per document;
- outputs in `output_dir`: model + tokenizer (safetensors), all_results.json, test predictions CSV, confusion
  matrix and training-curve PNGs, a model card, transferkit_text.json (how the texts were read, for predict);
- several seeds (`seeds`, `num_seeds`) on one split, with their mean and 95% intervals (transferkit.evidence.seeds),
  and an Optuna search on validation (`hp_search`) whose best config is retrained and tested once
  (transferkit.evidence.search).

Fails before training, with one message naming the thing and the fix, on: a missing file or unknown format, a
text or label column that does not exist, an empty split, rows without a label, a validation/test label that
training never saw, list labels in a single-label setting, max_seq_length above the model's limit, malformed
csv rows or JSON lines and bytes that are not UTF-8 (file and line), mixed label types, a tokenizer larger than
the model's vocabulary (README: Bad input).

Launch:
    python recipes/classify.py --config recipes/configs/quickstart/classify.yaml --train_file reviews.csv
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml recipes/classify.py --config my.yaml
    accelerate launch -m transferkit.recipes.classify --config my.yaml      # from an installed wheel
"""

from __future__ import annotations

import logging

from transformers import TrainingArguments, set_seed

from transferkit.arguments import ClassificationArguments, DataArguments, ModelArguments, RunArguments
from transferkit.config import parse_config
from transferkit.data import data_split_seed, load_classification_splits
from transferkit.distributed import check_requested_backend, fill_fsdp_layer_classes, run_recipe
from transferkit.dry_run import plan_run, print_plan
from transferkit.evidence.search import ClassifierInit, search_then_retrain, without_seed_loop
from transferkit.evidence.search_space import SearchArguments
from transferkit.evidence.seeds import run_seeds
from transferkit.head_warmup import head_warmup
from transferkit.labels import class_weights
from transferkit.lora import LoraArguments, apply_lora, model_load_kwargs, save_lora_outputs
from transferkit.metrics import build_compute_metrics, load_metric
from transferkit.models import (
    check_tokenizer_fits,
    ensure_pad_token,
    load_classifier,
    load_tokenizer,
    resolve_max_seq_length,
)
from transferkit.predict import save_text_settings
from transferkit.preprocess import LongText, main_process_first, report_preprocessed, tokenize_for_classification
from transferkit.publish import finish_run
from transferkit.reports import predict_and_report
from transferkit.text import TextCleaningArguments, apply_text_cleaning
from transferkit.throughput import ThroughputCallback
from transferkit.train import (
    early_stopping,
    evaluate_and_save,
    log_run_plan,
    runtime_defaults,
    splits_off,
    start_run,
    train_and_save,
    without_evaluation_if_no_split,
)
from transferkit.trainers import ClassificationTrainer, classification_collator

logger = logging.getLogger("transferkit.recipes.classify")

# Where these differ from TrainingArguments' own defaults, it is so that a plain run evaluates, keeps few
# checkpoints, batches texts of similar length together (much less padding than random batches) and counts the
# tokens it trains on (for the throughput in the logs).
DEFAULTS = {
    "output_dir": "outputs/classify",
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "logging_steps": 25,
    "ddp_find_unused_parameters": False,
    "train_sampling_strategy": "group_by_length",
    "include_num_input_tokens_seen": "non_padding",
    "do_train": True,
    "do_eval": True,  # a final evaluation when there is a validation split; do_eval false: none at all
    "do_predict": True,  # predictions.csv when there is a test split
}
ARGUMENT_TYPES = (
    ModelArguments,
    DataArguments,
    TextCleaningArguments,
    ClassificationArguments,
    LoraArguments,
    RunArguments,
    SearchArguments,
    TrainingArguments,
)


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, text_args, cls_args, lora_args, run_args, search_args, training_args = parse_config(
        ARGUMENT_TYPES, argv, defaults={**DEFAULTS, **runtime_defaults()}, description=__doc__
    )
    if search_args.plan:  # one search with `seed`; best.yaml keeps seeds / num_seeds for its retrain
        cls_args = without_seed_loop(cls_args)
    if cls_args.seeds or cls_args.num_seeds:  # one run per seed in output_dir/seed-<n>, then their aggregate
        return run_seeds(main, argv, training_args, cls_args, data_args, run_args, lora_args)
    training_args, start, push = start_run(
        training_args, run_args, recipe="classify", lora_args=lora_args, preprocess_only=data_args.preprocess_only
    )

    # the main process checks, cleans and caches the data; the others then read its cache (and raise its errors)
    split_seed = data_split_seed(data_args, training_args)  # split_seed, else seed: the seeds share one split
    with main_process_first(training_args, desc="loading, checking and cleaning the data"):
        splits, text_columns, spec = load_classification_splits(
            data_args, model_args, cls_args.problem_type, split_seed, skip=splits_off(training_args)
        )
        splits = apply_text_cleaning(splits, text_columns, text_args, data_args.preprocessing_num_workers)
    tokenizer = load_tokenizer(model_args)
    set_seed(training_args.seed)  # the new head's initial weights come from this seed
    model = load_classifier(model_args, spec, **model_load_kwargs(lora_args, training_args, data_args.preprocess_only))
    ensure_pad_token(tokenizer, model)
    check_tokenizer_fits(tokenizer, model, model_args)
    max_seq_length = resolve_max_seq_length(data_args.max_seq_length, tokenizer, model.config)
    long_text = LongText.of(cls_args)  # truncate, head_tail or windows (transferkit.preprocess.LongText)
    tokenized = tokenize_for_classification(
        splits, tokenizer, text_columns, max_seq_length, data_args, training_args, long_text
    )
    if data_args.preprocess_only:  # the data is in the datasets cache: the training launch comes next
        report_preprocessed(tokenized, "classify", argv)
        return {}
    if lora_args.use_peft:
        model = apply_lora(model, lora_args, "classification", revision=model_args.model_revision)
    pad_to = max_seq_length if data_args.pad_to_max_length else None  # fixed shapes, for TPUs and compiled graphs
    training_args = without_evaluation_if_no_split(training_args, "validation" in tokenized)
    warmup = head_warmup(cls_args.head_warmup_steps, model)  # the head learns alone first: encoder lr 0
    training_args, callbacks = early_stopping(training_args, cls_args, spec.problem_type)
    callbacks += [warmup] if warmup else []
    log_run_plan(tokenized, training_args)

    fill_fsdp_layer_classes(model, training_args)  # under FSDP: the layers to shard, unless set
    weights = cls_args.class_weights and class_weights(spec, tokenized["train"]["label"], cls_args.class_weights)
    trainer = ClassificationTrainer(  # Trainer + class weights + length-sorted evaluation (transferkit.trainers)
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        data_collator=classification_collator(tokenizer, max_seq_length, long_text, pad_to),  # windows: long rows cut
        compute_metrics=build_compute_metrics(spec.problem_type, load_metric(spec.problem_type, cls_args.metric_name)),
        callbacks=callbacks,
        optimizer_cls_and_kwargs=warmup and warmup.optimizer_cls_and_kwargs(training_args, model),
        class_weights=weights or None,
        window_aggregation=long_text.window_aggregation,
    )
    ThroughputCallback().add_first(trainer)  # tokens/s and MFU in the logs, ahead of the report_to integrations
    check_requested_backend(trainer, recipe="classify")
    if run_args.dry_run:
        print_plan(plan_run(trainer, tokenized))
        return {}
    if search_args.plan:  # Optuna trials on validation, best.yaml, then this recipe on it (transferkit.evidence.search)
        model_init = ClassifierInit(model_args, spec, lora_args)  # the classifier as built above, once per trial
        return search_then_retrain(trainer, search_args.plan, model_init, start, main, argv, ARGUMENT_TYPES)
    metrics = train_and_save(trainer, start, push, run_args.preemption_check_steps)
    if lora_args.use_peft:
        metrics.update(
            save_lora_outputs(trainer, training_args.output_dir, lora_args.merge_adapter, tokenizer, model_args)
        )
    if trainer.is_world_process_zero():  # what predict needs to read new data as this run read its own
        save_text_settings(training_args.output_dir, text_columns, data_args, max_seq_length, long_text)
    if "validation" in tokenized and training_args.do_eval:
        metrics.update(evaluate_and_save(trainer))
    if "test" in tokenized and training_args.do_predict:
        metrics.update(predict_and_report(trainer, tokenized["test"], text_columns, spec))
    finish_run(
        trainer,
        push=push,
        task="text-classification",
        model_args=model_args,
        data_args=data_args,
        metrics=metrics,
    )
    return metrics


if __name__ == "__main__":
    run_recipe(main)  # exit_on_user_error, then leave a launch's process group
