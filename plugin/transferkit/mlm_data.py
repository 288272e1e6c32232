"""Turning unlabelled text into language-modelling examples: packed chunks, lines or sentence-aligned chunks, and
the batches of either objective.

MLM (encoders): training masks are drawn afresh for every batch (DataCollatorForLanguageModeling). Evaluation masks
are drawn once, per example, from a fixed seed at 15%, so perplexity compares between runs, models and batch sizes.
CLM (decoders): the same chunking, with EOS after every document instead of [CLS]/[SEP]; the labels are the input
ids (the model shifts them), so evaluation needs no masks and is deterministic already.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
from datasets import DatasetDict, IterableDatasetDict
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorForTokenClassification,
    PreTrainedTokenizerBase,
    TrainingArguments,
)

from transferkit.arguments import DataArguments, MLMArguments
from transferkit.errors import TransferKitError
from transferkit.preprocess import main_process_first, map_fingerprint, map_workers
from transferkit.sparse_mlm import predicted_ids_and_labels, scored_accuracy

EVAL_MASK_PROBABILITY = 0.15
EVAL_MASK_SEED = 20_24
MODEL_KEYS = ("input_ids", "attention_mask", "special_tokens_mask", "offset_mapping")
CLM_KEYS = ("input_ids", "attention_mask")  # a causal LM's forward takes no special-token mask


def tokenize_for_mlm(
    splits: DatasetDict | IterableDatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    text_columns: list[str],
    max_seq_length: int,
    data_args: DataArguments,
    mlm_args: MLMArguments,
    training_args: TrainingArguments,
) -> DatasetDict | IterableDatasetDict:
    """Tokenize and chunk every split; for MLM, evaluation splits also get their fixed masks."""
    clm = mlm_args.objective == "clm"
    if mlm_args.whole_word_mask and not tokenizer.is_fast:
        raise TransferKitError(
            "whole_word_mask needs a fast tokenizer (word offsets); this tokenizer is a slow one. "
            "Turn whole_word_mask off or use a model with a tokenizer.json."
        )
    if mlm_args.sentence_chunks:
        from transferkit.nltk_data import ensure_nltk_data

        ensure_nltk_data(need_punkt=True, need_stopwords=False)
    function = _lines if mlm_args.line_by_line else _sentence_chunks if mlm_args.sentence_chunks else _packed_chunks
    kwargs = {
        "tokenizer": tokenizer,
        "columns": text_columns,
        "size": max_seq_length,
        "offsets": mlm_args.whole_word_mask,
        "eos_id": document_end_id(tokenizer) if clm else None,
    }
    with main_process_first(training_args, desc="tokenizing"):
        chunked = {}
        for name, split in splits.items():
            columns = split.column_names or list(next(iter(split)))  # a streamed split may only know them at row 1
            options = {} if mlm_args.streaming else _cached_map_options(split, data_args)  # a stream is never cached
            if not mlm_args.streaming:
                options["new_fingerprint"] = map_fingerprint(split, function, {**kwargs, "removed": columns})
            chunked[name] = split.map(function, batched=True, remove_columns=columns, fn_kwargs=kwargs, **options)
            if name != "train" and not clm:
                masking = {} if mlm_args.streaming else _cached_map_options(chunked[name], data_args)
                chunked[name] = mask_for_evaluation(chunked[name], tokenizer, masking)
    return type(splits)(chunked)


def _cached_map_options(split, data_args: DataArguments) -> dict:
    """`map` options of a split held in the datasets cache: workers by its size (preprocess.map_workers)."""
    return {
        "num_proc": map_workers(data_args.preprocessing_num_workers, len(split)),
        "load_from_cache_file": not data_args.overwrite_cache,
        "desc": "Tokenizing and chunking",
    }


def document_end_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The EOS id that separates documents for a causal LM, so it learns where a text ends and never reads across."""
    if tokenizer.eos_token_id is None:
        raise TransferKitError(
            f"objective: clm separates documents with the tokenizer's end-of-sequence token, and this tokenizer "
            f"({type(tokenizer).__name__}) has none. Set tokenizer_name to the model's own tokenizer, or add an "
            "eos_token to it."
        )
    return tokenizer.eos_token_id


def _encode(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], offsets: bool, eos_id: int | None = None, **kwargs
) -> dict:
    """MLM: ids, masks, special-token mask (and offsets). CLM (`eos_id` set): ids and masks, EOS after each text."""
    if eos_id is not None and kwargs.get("truncation"):
        kwargs["max_length"] -= 1  # room for the EOS
    encoded = tokenizer(
        texts, return_special_tokens_mask=True, return_offsets_mapping=offsets, return_token_type_ids=False, **kwargs
    )
    if eos_id is None:
        return {key: encoded[key] for key in MODEL_KEYS if key in encoded}
    ids = [row if row[-1:] == [eos_id] else row + [eos_id] for row in encoded["input_ids"]]  # some tokenizers add it
    return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}


def _documents(batch: dict, columns: list[str]) -> list[str]:
    return [text for column in columns for text in batch[column] if text is not None and str(text).strip()]


def _packed_chunks(batch: dict, tokenizer, columns: list[str], size: int, offsets: bool, eos_id: int | None) -> dict:
    """Concatenate documents ([CLS] doc [SEP] [CLS] doc [SEP] ... for MLM; [BOS] doc EOS [BOS] doc EOS ... for CLM,
    BOS where the tokenizer adds one) and cut into chunks of exactly `size` tokens.

    The separators keep document boundaries visible to the model; the tail shorter than `size` is dropped.
    """
    encoded = _encode(tokenizer, _documents(batch, columns), offsets, eos_id, verbose=False)
    joined = {key: list(chain.from_iterable(values)) for key, values in encoded.items()}
    usable = len(joined["input_ids"]) // size * size
    return {key: [values[start : start + size] for start in range(0, usable, size)] for key, values in joined.items()}


def _lines(batch: dict, tokenizer, columns: list[str], size: int, offsets: bool, eos_id: int | None) -> dict:
    """One example per non-empty line, truncated (CLM: ending in EOS); padded to `size` when whole words are masked
    (equal lengths)."""
    lines = [line for text in _documents(batch, columns) for line in str(text).splitlines() if line.strip()]
    padding = "max_length" if offsets else False
    return _encode(tokenizer, lines, offsets, eos_id, truncation=True, max_length=size, padding=padding)


def _sentence_chunks(batch: dict, tokenizer, columns: list[str], size: int, offsets: bool, eos_id: int | None) -> dict:
    """Greedily pack whole sentences of a document into chunks that end at a sentence boundary.

    A sentence longer than a chunk is cut; chunks are padded to `size` when whole words are masked.
    """
    from transferkit.text import split_sentences

    chunks: list[str] = []
    for document in _documents(batch, columns):
        current: list[str] = []
        length = 0
        for sentence in split_sentences(str(document)):
            tokens = len(tokenizer.tokenize(sentence))
            if current and length + tokens > size - 2:
                chunks.append(" ".join(current))
                current, length = [], 0
            current.append(sentence)
            length += tokens
        if current:
            chunks.append(" ".join(current))
    padding = "max_length" if offsets else False
    return _encode(tokenizer, chunks, offsets, eos_id, truncation=True, max_length=size, padding=padding)


def mask_for_evaluation(split, tokenizer: PreTrainedTokenizerBase, map_options: dict | None = None):
    """Draw each evaluation example's masks once, from (seed, example index): the same masks in every run."""
    options = {key: value for key, value in (map_options or {}).items() if key != "desc"}
    return split.map(
        _mask_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={"mask_id": tokenizer.mask_token_id, "vocab_size": len(tokenizer)},
        remove_columns=[key for key in ("special_tokens_mask", "offset_mapping") if key in (split.column_names or [])],
        **options,
    )


def _mask_batch(batch: dict, indices: list[int], mask_id: int, vocab_size: int) -> dict:
    inputs, labels = [], []
    for ids, special, attention, index in zip(
        batch["input_ids"], batch["special_tokens_mask"], batch["attention_mask"], indices
    ):
        rng = np.random.default_rng([EVAL_MASK_SEED, index])
        ids = np.asarray(ids)
        candidates = (np.asarray(special) == 0) & (np.asarray(attention) == 1)
        masked = candidates & (rng.random(len(ids)) < EVAL_MASK_PROBABILITY)
        label = np.where(masked, ids, -100)
        draw = rng.random(len(ids))
        ids = np.where(masked & (draw < 0.8), mask_id, ids)
        ids = np.where(masked & (draw >= 0.8) & (draw < 0.9), rng.integers(0, vocab_size, len(ids)), ids)
        inputs.append(ids.tolist())
        labels.append(label.tolist())
    return {"input_ids": inputs, "labels": labels}


class MLMCollator:
    """Masks training batches on the fly; pads evaluation batches, whose masks are already fixed (labels present)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, mlm_args: MLMArguments, pad_to: int | None = None) -> None:
        # No example is longer than max_seq_length, so padding to a multiple of it pads every batch to exactly it.
        self.train_collator = DataCollatorForLanguageModeling(
            tokenizer,
            mlm_probability=mlm_args.mlm_probability,
            mask_replace_prob=mlm_args.mask_replace_prob,
            random_replace_prob=mlm_args.random_replace_prob,
            whole_word_mask=mlm_args.whole_word_mask,
            pad_to_multiple_of=pad_to,
        )
        self.eval_collator = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to)

    def __call__(self, features: list[dict]) -> dict:
        if "labels" in features[0]:
            return self.eval_collator(features)
        return self.train_collator(features)


class CLMCollator:
    """Causal-LM batches: padded on the right to the longest example; the labels are the input ids, -100 at padding.

    Padding is found from the attention mask, not by comparing with the pad id: decoders pad with EOS, and
    DataCollatorForLanguageModeling(mlm=False) would also drop every real EOS (the document ends) from the targets.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pad_to: int | None = None) -> None:
        self.tokenizer, self.pad_to = tokenizer, pad_to

    def __call__(self, features: list[dict]) -> dict:
        batch = self.tokenizer.pad(
            [{key: feature[key] for key in CLM_KEYS} for feature in features],
            padding="max_length" if self.pad_to else True,
            max_length=self.pad_to,
            padding_side="right",  # GPT-2's positions are absolute: left pads would shift them
            return_tensors="pt",
        )
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch


def lm_collator(
    tokenizer: PreTrainedTokenizerBase, mlm_args: MLMArguments, pad_to: int | None = None
) -> MLMCollator | CLMCollator:
    """The collator of the chosen objective; `pad_to` (pad_to_max_length) pads every batch to that length."""
    return CLMCollator(tokenizer, pad_to) if mlm_args.objective == "clm" else MLMCollator(tokenizer, mlm_args, pad_to)


def next_token_accuracy(eval_pred: Any) -> dict[str, float]:
    """Trainer `compute_metrics` for CLM: the share of next tokens predicted exactly (argmax at t == label at t+1).

    Takes `[N, L]` predicted ids (sparse_mlm.preprocess_logits_for_metrics reduces the logits batch by batch) or
    `[N, L, V]` logits; positions whose next label is -100 (padding, the end of a chunk) do not count.
    """
    predictions, labels = predicted_ids_and_labels(eval_pred)
    return scored_accuracy(predictions[:, :-1], labels[:, 1:])
