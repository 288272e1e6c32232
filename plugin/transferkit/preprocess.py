"""Tokenization: batched, cached by `datasets`, and run by the main process first under Accelerate.

The other ranks wait at `main_process_first` and then load the main process's cache files instead of tokenizing
again, which is what keeps an N-process launch from doing the work N times (or hanging on a cold cache).
"""

from __future__ import annotations

from datasets import DatasetDict
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
    with training_args.main_process_first(desc="tokenizing"):
        return splits.map(
            _tokenize_batch,
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            load_from_cache_file=not data_args.overwrite_cache,
            fn_kwargs={
                "tokenizer": tokenizer,
                "text_columns": text_columns,
                "max_seq_length": max_seq_length,
            },
            desc="Tokenizing",
        )


def _tokenize_batch(batch: dict, tokenizer: PreTrainedTokenizerBase, text_columns: list[str], max_seq_length: int):
    texts = [[str(text) for text in batch[column]] for column in text_columns]
    return tokenizer(*texts, truncation=True, max_length=max_seq_length)
