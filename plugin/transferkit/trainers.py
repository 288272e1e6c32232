"""The Trainer subclasses the recipes run, and what each adds to transformers' Trainer.

- `ClassificationTrainer` (recipes/classify.py): per-class loss weights (`class_weights`), label smoothing kept; and
  evaluation and prediction batches sorted by length, longest first, so they pad almost nothing (5% of the
  quickstart's validation positions instead of 23% in random order), with `predict` returning its rows in the
  dataset's order. (Trainer's own `group_by_length` shuffles evaluation batches and does not restore the order:
  `predict(...).predictions[i]` is then not row i.) Training batches are Trainer's: `group_by_length` by default.
  With `long_text: windows`, an evaluation or test row longer than max_seq_length reaches the model as overlapping
  windows (`WindowCollator`) and `prediction_step` hands back one row of logits per document, the windows' mean or
  max: the evaluation loop, the metrics and the order restored all stay per document. (Training reads the same
  windows as examples of their own, cut when the train split is tokenized.)
- `MLMTrainer` (recipes/mlm.py): perplexity (exp of the loss) next to every evaluation loss.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase, Trainer
from transformers.trainer_utils import PredictionOutput, has_length

from transferkit.preprocess import LongText, document_windows, special_tokens_around

WINDOW_DOCUMENT = "window_document"  # the batch key naming each window's document (its place in the batch)


class LengthSortedSampler(Sampler[int]):
    """Every index once, longest row first (ties in index order)."""

    def __init__(self, lengths: np.ndarray) -> None:
        self.order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())


def row_lengths(dataset: Any) -> np.ndarray | None:
    """The length of every row's input_ids, read in Arrow (None for a dataset without them)."""
    if "input_ids" not in (getattr(dataset, "column_names", None) or []):
        return None
    import pyarrow.compute as pc

    column = dataset.with_format("arrow")["input_ids"]
    return np.asarray(pc.list_value_length(column).to_numpy(zero_copy_only=False), dtype=np.int64)


class ClassificationTrainer(Trainer):
    """Trainer with optional per-class loss weights and length-sorted evaluation and prediction (module docstring)."""

    def __init__(
        self, *args, class_weights: list[float] | None = None, window_aggregation: str = "mean", **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.class_weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.window_aggregation = window_aggregation

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.class_weights is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits
        loss = F.cross_entropy(
            logits.view(-1, logits.shape[-1]),
            labels.view(-1),
            weight=self.class_weights.to(logits.device, logits.dtype),
            label_smoothing=self.args.label_smoothing_factor,
        )
        return (loss, outputs) if return_outputs else loss

    def _sorts(self, dataset: Any) -> np.ndarray | None:
        """The lengths to sort `dataset` by, or None where sorting could not be undone row by row (batches kept
        apart, or a last batch dropped)."""
        if dataset is None or not has_length(dataset):
            return None
        if not self.args.eval_do_concat_batches or self.args.dataloader_drop_last:
            return None
        return row_lengths(dataset)

    def _get_eval_sampler(self, eval_dataset: Any) -> Sampler | None:
        lengths = self._sorts(eval_dataset)
        return super()._get_eval_sampler(eval_dataset) if lengths is None else LengthSortedSampler(lengths)

    def predict(self, test_dataset: Any, *args: Any, **kwargs: Any) -> PredictionOutput:
        """Trainer.predict, with predictions and label_ids back in `test_dataset`'s row order."""
        output = super().predict(test_dataset, *args, **kwargs)
        lengths = self._sorts(test_dataset)
        if lengths is None:
            return output
        inverse = np.empty(len(lengths), dtype=np.int64)
        inverse[LengthSortedSampler(lengths).order] = np.arange(len(lengths))
        return PredictionOutput(
            _reorder(output.predictions, inverse), _reorder(output.label_ids, inverse), output.metrics
        )

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Trainer's step; for a batch cut into windows (WindowCollator), the model reads the windows, at most
        per_device_eval_batch_size at a time, and each document gets its windows' aggregated logits and its label.
        The loss is the windows' mean loss (each window scored against its document's label)."""
        if WINDOW_DOCUMENT not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(dict(inputs))
        documents = inputs.pop(WINDOW_DOCUMENT)
        labels = inputs.get("labels")
        losses, logits = [], []
        size = self.args.per_device_eval_batch_size
        with torch.no_grad():
            for start in range(0, len(documents), size):
                chunk = {name: value[start : start + size] for name, value in inputs.items()}
                with self.compute_loss_context_manager():
                    if labels is None:
                        outputs = model(**chunk)
                    else:
                        loss, outputs = self.compute_loss(model, chunk, return_outputs=True)
                        losses.append(loss.detach().float() * len(chunk["input_ids"]))
                logits.append(outputs["logits"].detach())
        loss = torch.stack(losses).sum() / len(documents) if losses else None
        if prediction_loss_only:
            return loss, None, None
        document_labels = None if labels is None else labels[first_windows(documents)]
        return loss, aggregate_windows(torch.cat(logits), documents, self.window_aggregation), document_labels


def first_windows(documents: torch.Tensor) -> torch.Tensor:
    """The index of each document's first window (windows come in document order)."""
    starts = torch.ones_like(documents, dtype=torch.bool)
    starts[1:] = documents[1:] != documents[:-1]
    return torch.nonzero(starts).squeeze(1)


def aggregate_windows(logits: torch.Tensor, documents: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """One row of logits per document: the mean or the elementwise max of its windows' logits."""
    count = int(documents.max()) + 1
    index = documents.to(logits.device)
    if how == "max":
        start = logits.new_full((count, logits.shape[1]), float("-inf"))
        return start.scatter_reduce(0, index[:, None].expand_as(logits), logits, reduce="amax")
    sums = logits.new_zeros((count, logits.shape[1]), dtype=torch.float32).index_add_(0, index, logits.float())
    windows = torch.bincount(index, minlength=count).to(sums.dtype)
    return (sums / windows[:, None]).to(logits.dtype)


class WindowCollator:
    """DataCollatorWithPadding, but a batch holding a row longer than `max_length` (a document tokenized whole by
    `long_text: windows`) becomes its rows' windows (`preprocess.document_windows`), each with its document's label,
    and WINDOW_DOCUMENT saying which row each window came from. Training rows are windows already (the train split
    is cut by `preprocess.tokenize_for_classification`, one example a window), so they pass as they are."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int, long_text: LongText, pad_to: int | None = None
    ) -> None:
        self.padding = DataCollatorWithPadding(tokenizer, padding="max_length" if pad_to else True, max_length=pad_to)
        self.max_length = max_length
        prefix, suffix = special_tokens_around(tokenizer)
        room = LongText.room(tokenizer, max_length)
        self.cut = dict(prefix=len(prefix), suffix=len(suffix), room=room, stride=long_text.stride(room))

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if all(len(feature["input_ids"]) <= self.max_length for feature in features):
            return self.padding(features)
        windows, documents = [], []
        for index, feature in enumerate(features):
            for ids in document_windows(feature["input_ids"], **self.cut):
                windows.append(window_feature(feature, ids))
                documents.append(index)
        batch = self.padding(windows)
        batch[WINDOW_DOCUMENT] = torch.tensor(documents, dtype=torch.long)
        return batch


def classification_collator(
    tokenizer: PreTrainedTokenizerBase, max_length: int, long_text: LongText, pad_to: int | None = None
) -> DataCollatorWithPadding | WindowCollator:
    """Batches padded to their longest row (or to `pad_to`); with long_text windows, long rows cut into windows."""
    if long_text.mode == "windows":
        return WindowCollator(tokenizer, max_length, long_text, pad_to)
    return DataCollatorWithPadding(tokenizer, padding="max_length" if pad_to else True, max_length=pad_to)


def window_feature(feature: dict[str, Any], ids: list[int]) -> dict[str, Any]:
    """One window as a row: its tokens, its attention mask and segment ids (one text: all 0) where the document has
    them, and the document's other values (its label)."""
    window = {name: value for name, value in feature.items() if name not in ("input_ids", "attention_mask")}
    window["input_ids"] = ids
    if "attention_mask" in feature:
        window["attention_mask"] = [1] * len(ids)
    if "token_type_ids" in feature:
        window["token_type_ids"] = [0] * len(ids)
    return window


def _reorder(value: Any, inverse: np.ndarray) -> Any:
    """`value` (an array, or nested tuples / lists of arrays) with its rows taken in `inverse` order."""
    if isinstance(value, np.ndarray) and value.ndim > 0 and value.shape[0] == len(inverse):
        return value[inverse]
    if isinstance(value, (tuple, list)):
        return type(value)(_reorder(item, inverse) for item in value)
    return value


class MLMTrainer(Trainer):
    """Trainer that reports perplexity (exp of the eval loss) with every evaluation, so curves and cards have it."""

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        for prefix in ("eval_", "test_"):
            if f"{prefix}loss" in logs:
                logs[f"{prefix}perplexity"] = math.exp(min(logs[f"{prefix}loss"], 50.0))
        super().log(logs, *args, **kwargs)
