"""The Trainer subclasses the recipes run, and what each adds to transformers' Trainer.

- `ClassificationTrainer` (recipes/classify.py): per-class loss weights (`class_weights`), label smoothing kept; and
  evaluation and prediction batches sorted by length, longest first, so they pad almost nothing (5% of the
  quickstart's validation positions instead of 23% in random order), with `predict` returning its rows in the
  dataset's order. (Trainer's own `group_by_length` shuffles evaluation batches and does not restore the order:
  `predict(...).predictions[i]` is then not row i.) Training batches are Trainer's: `group_by_length` by default.
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
from transformers import Trainer
from transformers.trainer_utils import PredictionOutput, has_length


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

    def __init__(self, *args, class_weights: list[float] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.class_weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)

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
