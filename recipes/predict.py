"""Label new data with a finetuned classifier and write the input's rows with their predictions.

Supports:
- models: a classify recipe's output_dir, its merged/ folder (LoRA with merge_adapter), a LoRA adapter folder
  (labels from its label_config.json, its trained head restored), or a sequence classifier on the Hub;
- data: everything classify reads (csv / tsv / json / jsonl / parquet / txt files, folders, globs; or `dataset_name`
  + `dataset_config_name` + `dataset_split` from the Hub), one text column or a text pair (`text_column_names`,
  default `text`, `sentence1 sentence2` or `sentence`), the same `clean_text` options as training;
- output by extension (.csv, .jsonl, .parquet): every input column, then `predicted` (the label; names for
  multi-label, above `multi_label_threshold`; the value for regression) and `score` (its probability), and
  `prob_<label>` per class with `all_probabilities`; rows without text keep their place with empty cells;
- texts read as the classify run read them (its transferkit_text.json: text columns, delimiter, max_seq_length,
  long_text), each an option that wins when given; long texts truncated, read as head and tail, or in overlapping
  windows whose logits are averaged (or maxed) into the row's;
- speed: classify's test prediction (length-sorted batches, dynamic padding, the input order restored),
  `per_device_eval_batch_size` 64, `bf16_full_eval`; under `accelerate launch` the batches are shared between the
  processes and gathered in order, and the main process writes the file;
- inputs larger than memory: `chunk_rows` (default 100,000) rows at a time are read, tokenized, predicted and
  appended to the output (csv with one header, jsonl, parquet with one row group per chunk), so memory holds one
  chunk's tokens and logits; `streaming: true` reads test_file or dataset_name as a stream (datasets'
  IterableDataset) without building the Arrow cache of the whole input. Any chunk_rows gives the same rows, order
  and labels (scores equal to float32 rounding: rows are length-sorted into batches within a chunk).

Fails before predicting, leaving no output file, on: an output name that is not .csv / .jsonl / .parquet, a missing
data file or text column (naming the columns there), an empty input or one without any text, input columns named
like the output's, a model that is not a sequence classifier (an MLM output), an adapter without its label file.
With `streaming` these are checked on the first chunk, and an input without any text fails at its end. The file is
written under a temporary name and renamed once complete: a failure in any chunk leaves no output file.

Launch:
    python recipes/predict.py --model_name_or_path outputs/classify --test_file new.csv --output_file labelled.csv
    transferkit predict outputs/classify new.csv --output labelled.parquet --all_probabilities
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m transferkit.recipes.predict \\
        --model_name_or_path outputs/classify --dataset_name imdb --dataset_split test --output_file imdb.jsonl
    transferkit predict outputs/classify 'huge/*.jsonl' --output labelled.parquet --streaming true --chunk_rows 50000
"""

from __future__ import annotations

import logging
import os

from transformers import TrainingArguments

from transferkit.arguments import ModelArguments
from transferkit.chunked import open_chunked_input, predict_in_chunks
from transferkit.config import parse_config
from transferkit.distributed import run_recipe
from transferkit.predict import (
    PredictArguments,
    check_model_source,
    load_prediction_model,
    prediction_trainer,
    saved_text_settings,
)
from transferkit.preprocess import LongText, main_process_first
from transferkit.text import TextCleaningArguments
from transferkit.train import runtime_defaults, setup_logging, with_arguments

logger = logging.getLogger("transferkit.recipes.predict")

DEFAULTS = {"per_device_eval_batch_size": 64, "report_to": "none"}
ARGUMENT_TYPES = (ModelArguments, PredictArguments, TextCleaningArguments, TrainingArguments)
REFUSED = {
    "output_dir": "predict writes output_file (Trainer works in its folder); set output_file instead.",
    "dataloader_drop_last": "predict labels every row; the last incomplete batch would be left unpredicted.",
    "push_to_hub": "predict writes a file; publish a model with `transferkit push`.",
    "ignore_mismatched_sizes": "a classifier whose head does not match its labels cannot predict them.",
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, args, text_args, training_args = parse_config(
        ARGUMENT_TYPES, argv, defaults={**DEFAULTS, **runtime_defaults()}, description=__doc__, refused=REFUSED
    )
    folder = os.path.dirname(os.path.abspath(args.output_file))
    training_args = with_arguments(training_args, "output_file's folder", output_dir=folder)
    setup_logging(training_args)
    adapter = check_model_source(model_args)  # not a classifier, or an adapter without labels: before the data
    saved = saved_text_settings(model_args)  # how classify read its texts: the default of every option left unset
    args = args.with_saved(saved)

    # the main process loads and checks the data (a stream: its first chunk); the others then read its cache
    with main_process_first(training_args, desc="loading and checking the data"):
        source = open_chunked_input(args, model_args, saved.text_column_names)
    loaded = load_prediction_model(model_args, adapter)
    long_text = LongText.of(args)  # truncate, head_tail or windows (transferkit.preprocess.LongText)
    trainer = prediction_trainer(loaded, training_args, args.max_seq_length, long_text)  # length-sorted, in order
    # chunk_rows rows at a time: cleaned, tokenized, predicted, appended to output_file (renamed when complete)
    metrics = predict_in_chunks(trainer, source, args, loaded.spec, long_text, text_args)
    if trainer.is_world_process_zero():
        trainer.log_metrics("predict", metrics)
    return metrics


if __name__ == "__main__":
    run_recipe(main)  # exit_on_user_error, then leave a launch's process group
