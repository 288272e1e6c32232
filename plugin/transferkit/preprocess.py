"""Tokenization: batched, cached by `datasets`, and run by the main process first under Accelerate.

The other ranks wait at `main_process_first` and then load the main process's cache files instead of tokenizing
again, which is what keeps an N-process launch from doing the work N times (or hanging on a cold cache).

The cache key of each tokenizing `map` is given explicitly (`map_fingerprint`): datasets' own key hashes the
tokenizer object as it is, with runtime state that its calls change, so before datasets 4.7 a second run that read
the train split from the cache keyed its other splits differently and tokenized them again.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import sys
from collections.abc import Callable

from datasets import Dataset, DatasetDict
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase, TrainingArguments

from transferkit.arguments import DataArguments

logger = logging.getLogger(__name__)

# Tokenizer attributes that change as it is used, never what it produces: warnings already given, a lookup cache.
RUNTIME_ATTRIBUTES = ("deprecation_warnings", "cache")
# A fast tokenizer's backend keeps the truncation and padding of its last call; every call sets them from its own
# arguments, so they are runtime state too.
RUNTIME_BACKEND_KEYS = ("truncation", "padding")
LARGE_MAPPING = 1000  # entries


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
    settings = {"text_columns": text_columns, "max_seq_length": max_seq_length}
    tokenizer_key = tokenizer_fingerprint(tokenizer)
    with training_args.main_process_first(desc="tokenizing"):
        return DatasetDict(
            {
                name: split.map(
                    _tokenize_batch,
                    batched=True,
                    num_proc=data_args.preprocessing_num_workers,
                    load_from_cache_file=not data_args.overwrite_cache,
                    fn_kwargs={"tokenizer": tokenizer, **settings},
                    new_fingerprint=map_fingerprint(split, _tokenize_batch, tokenizer_key, settings),
                    desc="Tokenizing",
                )
                for name, split in splits.items()
            }
        )


def _tokenize_batch(batch: dict, tokenizer: PreTrainedTokenizerBase, text_columns: list[str], max_seq_length: int):
    texts = [[str(text) for text in batch[column]] for column in text_columns]
    return tokenizer(*texts, truncation=True, max_length=max_seq_length)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """A hash of the tokenizer's configuration without its runtime state: equal in every process that loads the same
    tokenizer, whatever it has been called with before. None where the tokenizer cannot be hashed."""
    state = {key: value for key, value in vars(tokenizer).items() if key not in RUNTIME_ATTRIBUTES}
    backend = state.get("_tokenizer")
    if backend is not None and hasattr(backend, "to_str"):  # the Rust tokenizer: its JSON, in its own order
        config = json.loads(backend.to_str())
        kept = {key: value for key, value in config.items() if key not in RUNTIME_BACKEND_KEYS}
        state["_tokenizer"] = _digest(json.dumps(kept))
    for key, value in state.items():  # a vocabulary: digested at once, where dill would take ~10x longer
        if isinstance(value, dict) and len(value) > LARGE_MAPPING:
            try:
                state[key] = _digest(json.dumps(sorted(value.items())))
            except TypeError:  # keys or values that JSON or sorting refuse: dill hashes them
                pass
    try:
        return Hasher.hash([type(tokenizer).__module__, type(tokenizer).__qualname__, state])
    except Exception as err:  # an attribute dill cannot pickle: datasets' own key (it warns and hashes at random)
        logger.warning("Could not fingerprint the tokenizer (%s); the tokenization cache may be missed.", err)
        return None


def map_fingerprint(dataset: Dataset, function: Callable, tokenizer_key: str | None, settings: dict) -> str | None:
    """The cache key of `dataset.map(function, fn_kwargs={"tokenizer": ..., **settings})`.

    It covers all that decides the output: the input rows (their fingerprint), the source of the function's module
    (datasets hashes a module-level function by its name, so an edited function would reuse stale files), the
    tokenizer's configuration and the settings. None (datasets' own key) when the tokenizer could not be hashed.
    """
    if tokenizer_key is None:
        return None
    return Hasher.hash(
        [dataset._fingerprint, function.__module__, function.__qualname__, _module_source_hash(function.__module__)]
        + [tokenizer_key, settings]
    )


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
