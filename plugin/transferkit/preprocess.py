"""Tokenization: batched, cached by `datasets`, and run by the main process first under Accelerate.

The other ranks wait at `main_process_first` and then load the main process's cache files instead of tokenizing
again, which is what keeps an N-process launch from doing the work N times (or hanging on a cold cache).

Each tokenizing `map` gets its cache key from `map_fingerprint`: datasets' own key plus the source of the mapped
function's module, since datasets hashes a module-level function by its name only (an upgraded TransferKit whose
tokenizing changed would otherwise read the old files).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
from collections.abc import Callable

from datasets import Dataset, DatasetDict
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase, TrainingArguments

from transferkit.arguments import DataArguments


def tokenize_for_classification(
    splits: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    text_columns: list[str],
    max_seq_length: int,
    data_args: DataArguments,
    training_args: TrainingArguments,
) -> DatasetDict:
    """Add input_ids (and attention_mask, token_type_ids) to every split, unpadded: batches are padded per batch.

    The text columns stay in the dataset (Trainer drops them before collation) so predictions can be written next
    to the text they were made for.
    """
    fn_kwargs = {
        "tokenizer": tokenizer,
        "text_columns": text_columns,
        "max_seq_length": max_seq_length,
        "delimiter": data_args.text_column_delimiter,
    }
    with training_args.main_process_first(desc="tokenizing"):
        return DatasetDict(
            {
                name: split.map(
                    _tokenize_batch,
                    batched=True,
                    num_proc=data_args.preprocessing_num_workers,
                    load_from_cache_file=not data_args.overwrite_cache,
                    fn_kwargs=fn_kwargs,
                    new_fingerprint=map_fingerprint(split, _tokenize_batch, fn_kwargs),
                    desc="Tokenizing",
                )
                for name, split in splits.items()
            }
        )


def _tokenize_batch(
    batch: dict,
    tokenizer: PreTrainedTokenizerBase,
    text_columns: list[str],
    max_seq_length: int,
    delimiter: str | None = None,
):
    """Tokenize one batch: a missing side of a text pair (None, as datasets reads an empty csv cell) is the empty
    text, so `[CLS] [SEP] review [SEP]`, never the word 'None' (data.drop_empty_texts keeps such rows). With a
    `delimiter` (text_column_delimiter), the columns' non-empty texts are joined into one, as run_classification.py
    joins them."""
    texts = [["" if text is None else str(text) for text in batch[column]] for column in text_columns]
    if delimiter is not None:
        texts = [[delimiter.join(part for part in row if part.strip()) for row in zip(*texts)]]
    return tokenizer(*texts, truncation=True, max_length=max_seq_length)


def map_fingerprint(dataset: Dataset, function: Callable, fn_kwargs: dict) -> str:
    """The cache key of `dataset.map(function, fn_kwargs=fn_kwargs)`: the input rows (their fingerprint), the function
    and its module's source, and its arguments (the tokenizer among them: datasets >= 4.7 hashes a tokenizer by its
    configuration, the same in every process and however it has been called)."""
    module = function.__module__
    return Hasher.hash([dataset._fingerprint, module, function.__qualname__, _module_source_hash(module), fn_kwargs])


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def _module_source_hash(module_name: str) -> str:
    module = sys.modules[module_name]
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):  # no source shipped: the transferkit version at least
        from transferkit import __version__

        source = __version__
    return _digest(source)
