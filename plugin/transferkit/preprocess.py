"""Tokenization: batched, cached by `datasets`, and run by the main process first under Accelerate.

The other ranks wait at `main_process_first` and then load the main process's cache files instead of tokenizing
again, which is what keeps an N-process launch from doing the work N times (or hanging on a cold cache).

`main_process_first` here is the one all of TransferKit's data preparation waits in: on a shared filesystem only the
global main process works (see its docstring), and a wait that runs past `ddp_timeout` becomes an error naming the
fix. `map_workers` picks each `map`'s num_proc: `preprocessing_num_workers`, else the usable cores for a large split.

Each tokenizing `map` gets its cache key from `map_fingerprint`: datasets' own key plus the source of the mapped
function's module, since datasets hashes a module-level function by its name only (an upgraded TransferKit whose
tokenizing changed would otherwise read the old files).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, DatasetDict
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase, TrainingArguments

from transferkit.arguments import DataArguments
from transferkit.errors import TransferKitError

logger = logging.getLogger(__name__)

# Auto workers (preprocessing_num_workers unset): a worker is worth its start-up (a forked process, the tokenizer
# pickled to it, its shard written and read back) from about this many rows of a split on; at most this many workers.
# Measured with tests/benchmarks/bench_preprocess.py (tests/benchmarks/README.md, "Preprocessing workers").
ROWS_PER_WORKER = 25_000
MAX_AUTO_WORKERS = 8


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a Slurm or container limit), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def map_workers(requested: int | None, rows: int) -> int | None:
    """num_proc for a `map` over `rows` rows: `requested` (preprocessing_num_workers) when set, else one worker per
    ROWS_PER_WORKER rows up to the usable cores (at most MAX_AUTO_WORKERS); None (in-process) below two.

    Small splits (the tests' fixtures, the 13k-row quickstart) stay in one process, where datasets' pool start-up
    would cost more than it saves. A differing num_proc between runs still reuses the cache: datasets looks up the
    shards written with any num_proc first (`Dataset.map`, "to avoid remapping when a different num_proc is given").
    """
    if requested is not None:
        return requested if requested > 1 else None
    workers = min(usable_cores(), MAX_AUTO_WORKERS, rows // ROWS_PER_WORKER)
    return workers if workers > 1 else None


@contextlib.contextmanager
def main_process_first(training_args: TrainingArguments, desc: str) -> Iterator[None]:
    """`training_args.main_process_first`, for data preparation whose results the other processes read from the
    datasets cache; a wait past ddp_timeout raises a TransferKitError naming ddp_timeout and preprocess_only.

    Which process goes first: the global main process (`local=False`) unless `save_on_each_node` says the nodes do
    not share a filesystem. transformers' docstring of `TrainingArguments.main_process_first`: "In multi-node
    environment with a shared filesystem you most likely will want to use `local=False` so that only the main process
    of the first node will do the processing"; with `local=True` there, each node's main process would write the
    same cache files at once. Nodes without a shared datasets cache set save_on_each_node: true (as for checkpoints).
    """
    first = training_args.main_process_first(local=training_args.save_on_each_node, desc=desc)
    with _naming_the_timeout(training_args, desc):
        first.__enter__()  # the other processes wait here, in a barrier, while the main process does the work
    try:
        yield
    except BaseException:
        if not first.__exit__(*sys.exc_info()):  # the main process still releases the others, then raises
            raise
    else:
        with _naming_the_timeout(training_args, desc):
            first.__exit__(None, None, None)


@contextlib.contextmanager
def _naming_the_timeout(training_args: TrainingArguments, desc: str) -> Iterator[None]:
    try:
        yield
    except RuntimeError as err:  # torch.distributed's errors are RuntimeErrors (gloo: "Timed out waiting 1800000ms")
        if not is_timeout(err):
            raise
        raise TransferKitError(timeout_message(training_args, desc, err)) from err


def is_timeout(err: BaseException) -> bool:
    """A torch.distributed collective that gave up waiting: gloo raises RuntimeError("... Timed out waiting ...");
    NCCL's DistBackendError says "timeout" (the NCCL watchdog may also abort the process without a Python error)."""
    text = str(err).lower()
    return "timed out" in text or "timeout" in text


def timeout_message(training_args: TrainingArguments, desc: str, err: BaseException) -> str:
    return (
        f"Process {training_args.process_index} waited ddp_timeout ({training_args.ddp_timeout} s) for the main "
        f"process to finish {desc} and gave up: a large corpus takes longer than that in one process. Prepare the "
        "data once before the training launch, in one process (`python recipes/<recipe>.py <the same arguments> "
        "--preprocess_only true`): training then reads the datasets cache. Or raise ddp_timeout (seconds, e.g. "
        f"--ddp_timeout 7200), or set preprocessing_num_workers. ({' '.join(str(err).split())[:200]})"
    )


# The user's own arguments, where a recipe runs itself with changed ones (one seed of several): the next command
# the report prints is the user's, not the inner run's (a scratch config, one seed's folder).
_users_argv: ContextVar[list[str] | None] = ContextVar("users_argv", default=None)


@contextlib.contextmanager
def reporting_users_argv(argv: list[str]) -> Iterator[None]:
    """Inside this block, report_preprocessed names `argv` in the next command, whatever the recipe was given."""
    token = _users_argv.set(list(argv))
    try:
        yield
    finally:
        _users_argv.reset(token)


def report_preprocessed(splits: DatasetDict, recipe: str, argv: list[str] | None = None) -> None:
    """After preprocess_only: say where the cache is and how to launch the training that reads it (`argv`: the
    recipe's own arguments, sys.argv's by default)."""
    folders = sorted({os.path.dirname(entry["filename"]) for split in splits.values() for entry in split.cache_files})
    sizes = ", ".join(f"{name} {len(split)}" for name, split in splits.items())
    argv = _users_argv.get() or (sys.argv[1:] if argv is None else list(argv))
    argv = next_command(argv)
    logger.info(
        "preprocess_only: the data is checked and tokenized (%s examples) into the datasets cache at %s. Launch the "
        "training next, with the same data, model and preprocessing options and the same HF_DATASETS_CACHE (or "
        "cache_dir): it reads this cache instead of tokenizing again, e.g. `accelerate launch --config_file "
        "<config.yaml> recipes/%s.py %s`.",
        sizes,
        ", ".join(folders) or "(in memory: nothing cached)",
        recipe,
        shlex.join(argv),
    )


def next_command(argv: list[str]) -> list[str]:
    """`argv` without `--preprocess_only [true]`, plus `--preprocess_only false` when a --config may still set it."""
    kept, skip = [], False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.split("=")[0] in ("--preprocess_only", "--preprocess-only"):
            following = argv[index + 1] if index + 1 < len(argv) else ""
            skip = "=" not in arg and following.lower() in ("true", "false", "1", "0", "yes", "no")
            continue
        kept.append(arg)
    return kept + (["--preprocess_only", "false"] if "--config" in " ".join(kept) else [])


# -- long texts: truncated, head and tail, or windows --------------------------------------------------------------
TRUNCATE, HEAD_TAIL, WINDOWS = "truncate", "head_tail", "windows"
LONG_TEXT_MODES = (TRUNCATE, HEAD_TAIL, WINDOWS)
WINDOW_AGGREGATIONS = ("mean", "max")
# Sun et al. 2019, "How to Fine-Tune BERT for Text Classification?" (arXiv:1905.05583), section 5.3.1: of 510
# tokens, the first 128 and the last 382 ("head+tail") classified IMDb and Sogou best, better than the head alone.
HEAD_SHARE = 128 / 510


@dataclass(frozen=True)
class LongText:
    """How a text longer than max_seq_length is read.

    - truncate: its first tokens (transformers' truncation);
    - head_tail: its first `head_tokens` and its last tokens, as many as fit (Sun et al. 2019); default head: a
      quarter of the room, their 128 of 510;
    - windows: overlapping windows of max_seq_length tokens (special tokens included), `window_stride` tokens
      between window starts (default: half the room), the last window ending at the text's end. At evaluation and
      prediction the model reads every window and the document's logits are their `window_aggregation` (mean or
      max). In training each window is an example of its own with its document's label, so the model learns from
      every part of a document, read as evaluation reads it; the price: an epoch holds more examples than documents
      (its steps grow with the windows), and a long document weighs as many examples as it has windows.
    """

    mode: str = TRUNCATE
    head_tokens: int | None = None
    window_stride: int | None = None
    window_aggregation: str = "mean"

    @classmethod
    def of(cls, options: Any) -> LongText:
        """From a recipe's options (ClassificationArguments, PredictArguments): long_text, head_tokens,
        window_stride, window_aggregation; unset ones take the defaults."""
        return cls(
            options.long_text or TRUNCATE, options.head_tokens, options.window_stride,
            options.window_aggregation or "mean",
        )  # fmt: skip

    def check(self, tokenizer: PreTrainedTokenizerBase, columns: int, delimiter: str | None, max_length: int) -> None:
        """Errors a user can cause, before any tokenizing: an unknown mode, a text pair, sizes that do not fit."""
        if self.mode not in LONG_TEXT_MODES:
            raise TransferKitError(f"long_text must be one of {', '.join(LONG_TEXT_MODES)}, got {self.mode!r}.")
        if self.window_aggregation not in WINDOW_AGGREGATIONS:
            raise TransferKitError(
                f"window_aggregation must be one of {', '.join(WINDOW_AGGREGATIONS)}, got {self.window_aggregation!r}."
            )
        if self.mode == TRUNCATE:
            return
        if columns > 1 and delimiter is None:
            raise TransferKitError(
                f"long_text: {self.mode} reads one text, and this data is a text pair: use long_text: truncate, or "
                "join the columns into one text with text_column_delimiter."
            )
        room = self.room(tokenizer, max_length)
        for name, value in (("head_tokens", self.head_tokens), ("window_stride", self.window_stride)):
            if value is not None and value > room:
                raise TransferKitError(
                    f"{name} {value} is more than the {room} text tokens a max_seq_length of {max_length} holds "
                    f"(special tokens take {max_length - room}). Set {name} to {room} or less."
                )

    @staticmethod
    def room(tokenizer: PreTrainedTokenizerBase, max_length: int) -> int:
        """The text tokens one input holds: max_seq_length less the special tokens ([CLS] and [SEP] for BERT)."""
        return max_length - tokenizer.num_special_tokens_to_add(pair=False)

    def head(self, room: int) -> int:
        return self.head_tokens if self.head_tokens is not None else round(room * HEAD_SHARE)

    def stride(self, room: int) -> int:
        return self.window_stride if self.window_stride is not None else max(1, room // 2)

    def tokenizing(self, max_length: int, tokenizer: PreTrainedTokenizerBase, training: bool) -> dict:
        """`_tokenize_batch`'s long-text arguments for one split (nothing for truncate, so its cache key is the
        one it always had). Windows: the training split is cut into its windows there, one row each; the other
        splits keep their documents whole for `WindowCollator`, whose windows' logits are aggregated per document."""
        if self.mode == TRUNCATE:
            return {}
        room = self.room(tokenizer, max_length)
        if self.mode == HEAD_TAIL:
            return {"long_text": HEAD_TAIL, "head_tokens": self.head(room)}
        return {"long_text": WINDOWS, "window_stride": self.stride(room) if training else 0}


def special_tokens_around(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one text ([CLS] and [SEP] for BERT, <s> and </s> for
    RoBERTa), read off an encoded word: transformers 5's tokenizers no longer have build_inputs_with_special_tokens."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    raise TransferKitError(
        f"{type(tokenizer).__name__} does not keep a text's tokens whole between its special tokens: "
        "long_text: head_tail and windows need that; use long_text: truncate."
    )


def head_and_tail(ids: list[int], head: int, tail: int) -> list[int]:
    """The first `head` and the last `tail` of `ids`; all of them when they fit."""
    if len(ids) <= head + tail:
        return ids
    return ids[:head] + (ids[len(ids) - tail :] if tail else [])


def document_windows(ids: list[int], prefix: int, suffix: int, room: int, stride: int) -> list[list[int]]:
    """The windows of an encoded text (`prefix` special tokens, the text, `suffix` special tokens): `room` text
    tokens each, starting every `stride` tokens, until one reaches the text's end, each with the special tokens
    around it. A text of n > room tokens gives 1 + ceil((n - room) / stride) windows; a shorter one, itself."""
    head, text, tail = ids[:prefix], ids[prefix : len(ids) - suffix], ids[len(ids) - suffix :]
    starts = range(0, max(len(text) - room, 0) + stride, stride)
    return [head + text[start : start + room] + tail for start in starts]


def encoded_single_texts(tokenizer: PreTrainedTokenizerBase, input_ids: list[list[int]]) -> dict[str, list]:
    """The tokenizer's model inputs for single texts already encoded with their special tokens."""
    encoded: dict[str, list] = {"input_ids": input_ids}
    if "attention_mask" in tokenizer.model_input_names:
        encoded["attention_mask"] = [[1] * len(ids) for ids in input_ids]
    if "token_type_ids" in tokenizer.model_input_names:
        encoded["token_type_ids"] = [[0] * len(ids) for ids in input_ids]
    return encoded


def tokenize_for_classification(
    splits: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    text_columns: list[str],
    max_seq_length: int,
    data_args: DataArguments,
    training_args: TrainingArguments,
    long_text: LongText | None = None,
) -> DatasetDict:
    """Add input_ids (and attention_mask, token_type_ids) to every split, unpadded: batches are padded per batch.

    The text columns stay in the dataset (Trainer drops them before collation) so predictions can be written next
    to the text they were made for. `long_text` says how a text longer than max_seq_length is read: truncated, its
    head and tail, or in windows: the train split's rows become their windows here (each with its document's
    columns but the texts, which training does not read, the label among them), the other splits' stay whole for
    `WindowCollator` (see `LongText`).
    """
    long_text = long_text or LongText()
    long_text.check(tokenizer, len(text_columns), data_args.text_column_delimiter, max_seq_length)
    with main_process_first(training_args, desc="tokenizing"):
        tokenized = {}
        for name, split in splits.items():
            fn_kwargs = {
                "tokenizer": tokenizer,
                "text_columns": text_columns,
                "max_seq_length": max_seq_length,
                "delimiter": data_args.text_column_delimiter,
                **long_text.tokenizing(max_seq_length, tokenizer, training=name == "train"),
            }
            windows = bool(fn_kwargs.get("window_stride"))  # the text is not repeated on each of its windows
            tokenized[name] = split.map(
                _tokenize_batch,
                batched=True,
                remove_columns=text_columns if windows else None,
                num_proc=map_workers(data_args.preprocessing_num_workers, len(split)),
                load_from_cache_file=not data_args.overwrite_cache,
                fn_kwargs=fn_kwargs,
                new_fingerprint=map_fingerprint(split, _tokenize_batch, fn_kwargs),
                desc="Tokenizing",
            )
            if windows:
                log_training_windows(name, len(split), len(tokenized[name]))
        return DatasetDict(tokenized)


def log_training_windows(name: str, documents: int, windows: int) -> None:
    logger.info(
        "long_text windows: the %s split's %d documents are %d training windows (%.1f a document), each an example "
        "with its document's label: an epoch has that many examples, and a long document weighs as many as its "
        "windows.",
        name,
        documents,
        windows,
        windows / max(documents, 1),
    )


def _tokenize_batch(
    batch: dict,
    tokenizer: PreTrainedTokenizerBase,
    text_columns: list[str],
    max_seq_length: int,
    delimiter: str | None = None,
    long_text: str = TRUNCATE,
    head_tokens: int = 0,
    window_stride: int = 0,
):
    """Tokenize one batch: a missing side of a text pair (None, as datasets reads an empty csv cell) is the empty
    text, so `[CLS] [SEP] review [SEP]`, never the word 'None' (data.drop_empty_texts keeps such rows). With a
    `delimiter` (text_column_delimiter), the columns' non-empty texts are joined into one, as run_classification.py
    joins them. `long_text` head_tail keeps the first `head_tokens` and the last tokens that fit; windows keeps
    every token (the collator cuts the windows) or, given a `window_stride` (the training split), returns each
    text's windows as rows of their own, every column but the texts repeated (datasets' batched map may return more
    rows than it was given when every column it keeps has the new length: the map removes the text columns, which
    training does not read, and which a long document would otherwise store once per window)."""
    texts = [["" if text is None else str(text) for text in batch[column]] for column in text_columns]
    if delimiter is not None:
        texts = [[delimiter.join(part for part in row if part.strip()) for row in zip(*texts)]]
    if long_text == TRUNCATE:
        return tokenizer(*texts, truncation=True, max_length=max_seq_length)
    prefix, suffix = special_tokens_around(tokenizer)
    whole = tokenizer(texts[0], add_special_tokens=False, verbose=False)["input_ids"]
    room = max_seq_length - len(prefix) - len(suffix)
    if long_text == HEAD_TAIL:
        whole = [head_and_tail(ids, head_tokens, room - head_tokens) for ids in whole]
    encoded = [prefix + ids + suffix for ids in whole]
    if not window_stride:
        return encoded_single_texts(tokenizer, encoded)
    cut = [document_windows(ids, len(prefix), len(suffix), room, window_stride) for ids in encoded]
    kept = {name: values for name, values in batch.items() if name not in text_columns}
    rows = repeated(kept, [len(windows) for windows in cut])
    return {**rows, **encoded_single_texts(tokenizer, [window for windows in cut for window in windows])}


def repeated(batch: dict[str, list], counts: list[int]) -> dict[str, list]:
    """Every column of `batch`, its row i repeated counts[i] times."""
    return {
        name: [value for value, count in zip(values, counts) for _ in range(count)] for name, values in batch.items()
    }


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
