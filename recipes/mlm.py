"""MLM or CLM continued pretraining on your own unlabelled text (DAPT / TAPT): masked-LM for an encoder
(`objective: mlm`, the default), causal-LM (next-token prediction) for a decoder (`objective: clm`).

Supports:
- any AutoModelForMaskedLM checkpoint (BERT, RoBERTa, DistilBERT, DeBERTa-v2, ModernBERT families) for mlm, any
  AutoModelForCausalLM decoder (GPT-2, Llama, Qwen, Mistral, ...) for clm, from the Hub or a local folder; a
  checkpoint without an MLM head (a sentence encoder) gets a warning and `head_warmup_steps`;
- text from the Hub or local txt / csv / tsv / json / jsonl / parquet files, folders or globs; `streaming: true`
  for corpora larger than memory (needs `max_steps`);
- packed chunks of `max_seq_length` tokens with document separators ([CLS]/[SEP] for mlm, EOS for clm; default),
  `line_by_line`, or chunks that end at sentence boundaries (`sentence_chunks`, NLTK Punkt);
- mlm: masking with `mlm_probability` and the 80/10/10 replacement ratios, optional whole-word masking; evaluation
  masks fixed (seeded, 15%) so perplexity compares between runs and models; the MLM head computed only at masked
  positions (`sparse_head`, on by default; same loss, about 2x faster);
- clm: labels are the inputs (padding excluded, EOS kept); a tokenizer without a pad token pads with EOS;
- LoRA (`use_peft`), both objectives;
- outputs: model + tokenizer, all_results.json (eval loss, perplexity, masked- or next-token accuracy), training
  curves, a model card (fill-mask or text-generation).

Fails before training on: an empty corpus, no text column, streaming without max_steps, max_seq_length above the
model's limit, mlm_probability outside (0, 1), whole-word masking with a slow tokenizer, masking options with clm,
an objective the model has no head for (a decoder given mlm, an encoder given clm: the error names the right one),
malformed csv rows or JSON lines and bytes that are not UTF-8 (file and line), a tokenizer larger than the model's
vocabulary (README: Bad input).

Launch:
    python recipes/mlm.py --model_name_or_path bert-base-uncased --train_file corpus/ --output_dir outputs/dapt
    python recipes/mlm.py --objective clm --model_name_or_path gpt2 --train_file corpus/ --output_dir outputs/clm
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml recipes/mlm.py --config my_mlm.yaml
    accelerate launch -m transferkit.recipes.mlm --config my_mlm.yaml      # from an installed wheel
"""

from __future__ import annotations

import logging

from transformers import TrainingArguments, set_seed

from transferkit.arguments import DataArguments, MLMArguments, ModelArguments, RunArguments
from transferkit.config import parse_config
from transferkit.data import data_split_seed, load_corpus_splits
from transferkit.distributed import check_requested_backend, fill_fsdp_layer_classes, run_recipe
from transferkit.dry_run import plan_run, print_plan
from transferkit.errors import TransferKitError
from transferkit.head_warmup import head_warmup
from transferkit.lora import LoraArguments, apply_lora, model_load_kwargs, save_lora_outputs
from transferkit.mlm_data import lm_collator, next_token_accuracy, tokenize_for_mlm
from transferkit.models import (
    check_tokenizer_fits,
    ensure_pad_token,
    load_language_model,
    load_tokenizer,
    resolve_max_seq_length,
)
from transferkit.preprocess import main_process_first, report_preprocessed
from transferkit.publish import finish_run
from transferkit.sparse_mlm import enable_sparse_mlm_head, masked_token_accuracy, preprocess_logits_for_metrics
from transferkit.text import TextCleaningArguments, apply_text_cleaning
from transferkit.throughput import ThroughputCallback
from transferkit.train import (
    evaluate_and_save,
    log_run_plan,
    runtime_defaults,
    splits_off,
    start_run,
    train_and_save,
    without_evaluation_if_no_split,
)
from transferkit.trainers import MLMTrainer

logger = logging.getLogger("transferkit.recipes.mlm")
CARD_TASKS = {"mlm": "fill-mask", "clm": "text-generation"}

# Columns are chosen by the recipe (input ids, masks, offsets for whole-word masking), so Trainer must not drop
# the ones the model's forward does not name. Each rank reads its own part of a streamed corpus, instead of rank 0
# reading (and tokenizing) every batch for all, accelerate's default for iterable datasets (data.streamed_splits).
DEFAULTS = {
    "output_dir": "outputs/mlm",
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "logging_steps": 25,
    "ddp_find_unused_parameters": False,
    "remove_unused_columns": False,
    "accelerator_config": {"dispatch_batches": False},
    "include_num_input_tokens_seen": "non_padding",
    "do_train": True,
    "do_eval": True,  # a final evaluation when there is a validation split; do_eval false: none at all
}
# Options of the shared dataclasses that masked / causal LM training has no use for: set, they stop the run.
REFUSED = {
    "do_predict": "the mlm recipe predicts nothing (it has no test split); remove it.",
    "text_column_delimiter": "the mlm recipe reads each text column as its own text; remove it.",
}
ARGUMENT_TYPES = (
    ModelArguments,
    DataArguments,
    TextCleaningArguments,
    MLMArguments,
    LoraArguments,
    RunArguments,
    TrainingArguments,
)


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, text_args, mlm_args, lora_args, run_args, training_args = parse_config(
        ARGUMENT_TYPES, argv, defaults={**DEFAULTS, **runtime_defaults()}, description=__doc__, refused=REFUSED
    )
    if mlm_args.streaming and data_args.preprocess_only:
        raise TransferKitError("preprocess_only has nothing to cache with streaming: true (a stream is never cached).")
    if mlm_args.streaming and training_args.max_steps <= 0:
        raise TransferKitError("streaming: true has no length to count epochs in (the stream repeats): set max_steps.")
    training_args, start, push = start_run(
        training_args, run_args, recipe="mlm", lora_args=lora_args, preprocess_only=data_args.preprocess_only
    )

    # the main process checks, cleans and caches the corpus; the others then read its cache (and raise its errors)
    split_seed = data_split_seed(data_args, training_args)  # the validation split: split_seed, else seed
    with main_process_first(training_args, desc="loading, checking and cleaning the corpus"):
        splits, text_columns = load_corpus_splits(
            data_args, model_args, mlm_args.streaming, split_seed, skip=splits_off(training_args)
        )
        splits = apply_text_cleaning(splits, text_columns, text_args, data_args.preprocessing_num_workers)
    tokenizer = load_tokenizer(model_args)
    set_seed(training_args.seed)
    model = load_language_model(
        model_args, mlm_args.objective, **model_load_kwargs(lora_args, training_args, data_args.preprocess_only)
    )
    clm = mlm_args.objective == "clm"
    if clm:
        ensure_pad_token(tokenizer, model, padding_side=None)  # decoders ship without one; CLMCollator pads right
    check_tokenizer_fits(tokenizer, model, model_args)
    max_seq_length = resolve_max_seq_length(data_args.max_seq_length, tokenizer, model.config)
    tokenized = tokenize_for_mlm(splits, tokenizer, text_columns, max_seq_length, data_args, mlm_args, training_args)
    if data_args.preprocess_only:  # the data is in the datasets cache: the training launch comes next
        report_preprocessed(tokenized, "mlm", argv)
        return {}
    sparse_head = mlm_args.sparse_head and not clm
    if sparse_head:
        enable_sparse_mlm_head(model)
    if lora_args.use_peft:
        model = apply_lora(model, lora_args, mlm_args.objective, revision=model_args.model_revision)
    training_args = without_evaluation_if_no_split(training_args, "validation" in tokenized)
    warmup = head_warmup(mlm_args.head_warmup_steps, model)  # the head learns alone first: encoder lr 0
    log_run_plan(tokenized, training_args)

    fill_fsdp_layer_classes(model, training_args)  # under FSDP: the layers to shard, unless set
    trainer = MLMTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        data_collator=lm_collator(tokenizer, mlm_args, pad_to=max_seq_length if data_args.pad_to_max_length else None),
        compute_metrics=next_token_accuracy if clm else masked_token_accuracy,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        callbacks=[warmup] if warmup else [],
        optimizer_cls_and_kwargs=warmup and warmup.optimizer_cls_and_kwargs(training_args, model),
    )
    # tokens/s and MFU in the logs, ahead of the report_to integrations; the sparse head projects masked rows only
    ThroughputCallback(output_head_fraction=mlm_args.mlm_probability if sparse_head else 1.0).add_first(trainer)
    check_requested_backend(trainer, recipe="mlm")
    if run_args.dry_run:
        print_plan(plan_run(trainer, tokenized))
        return {}
    metrics = train_and_save(trainer, start, push, run_args.preemption_check_steps)
    if lora_args.use_peft:
        metrics.update(
            save_lora_outputs(trainer, training_args.output_dir, lora_args.merge_adapter, tokenizer, model_args)
        )
    if "validation" in tokenized and training_args.do_eval:
        metrics.update(evaluate_and_save(trainer))
    finish_run(
        trainer,
        push=push,
        task=CARD_TASKS[mlm_args.objective],
        model_args=model_args,
        data_args=data_args,
        metrics=metrics,
    )
    return metrics


if __name__ == "__main__":
    run_recipe(main)  # exit_on_user_error, then leave a launch's process group
