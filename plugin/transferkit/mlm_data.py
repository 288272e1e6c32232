"""Turning unlabelled text into MLM examples: packed chunks, lines or sentence-aligned chunks, and masked batches.

Training masks are drawn afresh for every batch (DataCollatorForLanguageModeling). Evaluation masks are drawn once,
per example, from a fixed seed at 15%, so perplexity compares between runs, models and batch sizes.
"""

from __future__ import annotations

from itertools import chain

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

EVAL_MASK_PROBABILITY = 0.15
EVAL_MASK_SEED = 20_24
MODEL_KEYS = ("input_ids", "attention_mask", "special_tokens_mask", "offset_mapping")


def tokenize_for_mlm(
    splits: DatasetDict | IterableDatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    text_columns: list[str],
    max_seq_length: int,
    data_args: DataArguments,
    mlm_args: MLMArguments,
    training_args: TrainingArguments,
) -> DatasetDict | IterableDatasetDict:
    """Tokenize and chunk every split; evaluation splits also get their fixed masks."""
    if mlm_args.whole_word_mask and not tokenizer.is_fast:
        raise TransferKitError(
            "whole_word_mask needs a fast tokenizer (word offsets); this tokenizer is a slow one. "
            "Turn whole_word_mask off or use a model with a tokenizer.json."
        )
    if mlm_args.sentence_chunks:
        from transferkit.text import ensure_nltk_data

        ensure_nltk_data(need_punkt=True, need_stopwords=False)
    function = _lines if mlm_args.line_by_line else _sentence_chunks if mlm_args.sentence_chunks else _packed_chunks
    kwargs = {
        "tokenizer": tokenizer,
        "columns": text_columns,
        "size": max_seq_length,
        "offsets": mlm_args.whole_word_mask,
    }
    map_options = (
        {}
        if mlm_args.streaming
        else {
            "num_proc": data_args.preprocessing_num_workers,
            "load_from_cache_file": not data_args.overwrite_cache,
            "desc": "Tokenizing and chunking",
        }
    )
    with training_args.main_process_first(desc="tokenizing"):
        chunked = {}
        for name, split in splits.items():
            columns = split.column_names or list(next(iter(split)))  # a streamed split may only know them at row 1
            chunked[name] = split.map(function, batched=True, remove_columns=columns, fn_kwargs=kwargs, **map_options)
            if name != "train":
                chunked[name] = mask_for_evaluation(chunked[name], tokenizer, map_options)
    return type(splits)(chunked)


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], offsets: bool, **kwargs) -> dict:
    encoded = tokenizer(
        texts, return_special_tokens_mask=True, return_offsets_mapping=offsets, return_token_type_ids=False, **kwargs
    )
    return {key: encoded[key] for key in MODEL_KEYS if key in encoded}


def _documents(batch: dict, columns: list[str]) -> list[str]:
    return [text for column in columns for text in batch[column] if text is not None and str(text).strip()]


def _packed_chunks(batch: dict, tokenizer, columns: list[str], size: int, offsets: bool) -> dict:
    """Concatenate documents ([CLS] doc [SEP] [CLS] doc [SEP] ...) and cut into chunks of exactly `size` tokens.

    The separators keep document boundaries visible to the model; the tail shorter than `size` is dropped.
    """
    encoded = _encode(tokenizer, _documents(batch, columns), offsets, verbose=False)
    joined = {key: list(chain.from_iterable(values)) for key, values in encoded.items()}
    usable = len(joined["input_ids"]) // size * size
    return {key: [values[start : start + size] for start in range(0, usable, size)] for key, values in joined.items()}


def _lines(batch: dict, tokenizer, columns: list[str], size: int, offsets: bool) -> dict:
    """One example per non-empty line, truncated; padded to `size` when whole words are masked (equal lengths)."""
    lines = [line for text in _documents(batch, columns) for line in str(text).splitlines() if line.strip()]
    padding = "max_length" if offsets else False
    return _encode(tokenizer, lines, offsets, truncation=True, max_length=size, padding=padding)


def _sentence_chunks(batch: dict, tokenizer, columns: list[str], size: int, offsets: bool) -> dict:
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
    return _encode(tokenizer, chunks, offsets, truncation=True, max_length=size, padding=padding)


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

    def __init__(self, tokenizer: PreTrainedTokenizerBase, mlm_args: MLMArguments) -> None:
        self.train_collator = DataCollatorForLanguageModeling(
            tokenizer,
            mlm_probability=mlm_args.mlm_probability,
            mask_replace_prob=mlm_args.mask_replace_prob,
            random_replace_prob=mlm_args.random_replace_prob,
            whole_word_mask=mlm_args.whole_word_mask,
        )
        self.eval_collator = DataCollatorForTokenClassification(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        if "labels" in features[0]:
            return self.eval_collator(features)
        return self.train_collator(features)
