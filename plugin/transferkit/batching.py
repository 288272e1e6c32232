"""Length-bucketed batches for classification: less padding than Trainer's ``group_by_length``, same batch size.

Trainer's ``train_sampling_strategy="group_by_length"`` (``LengthGroupedSampler``) shuffles the epoch, cuts it into
megabatches of 50 batches, sorts each megabatch by length and cuts it into batches. :class:`LengthBucketedSampler`
does the same with larger pools (100 batches by default, or the whole epoch with ``pool_batches=None``), then
shuffles the order of the batches across the whole epoch. On the quickstart reviews (mean 27 tokens, batch 32)
that takes the padding share from about 2.5% (group_by_length) to 1.2% (pools of 100) or 0.3% (whole epoch);
random batches pad 48%, padding to 128 pads 79%. Every sample is still seen exactly once per epoch, in batches of
the configured size; the order is seeded by ``seed`` and the epoch (``set_epoch``, which Trainer calls).

Use it through :class:`LengthBucketedTrainer` (or :func:`length_bucketed` for another Trainer subclass). It takes
over only where ``train_sampling_strategy`` is ``group_by_length``, so configs keep meaning what they say; other
strategies are Trainer's own.

Distributed training (DDP through Accelerate): Trainer wraps the sampler's index stream in a ``BatchSampler``
of the per-device batch size, and Accelerate's ``BatchSamplerShard`` deals those batches to the processes in
turn (batch ``k`` to rank ``k % world_size``). Every rank builds the same stream (same seed and epoch), so each
rank gets distinct batches and together they cover the epoch. The sampler keeps ``world_size`` consecutive batches
from the same length bucket, so the batches the ranks run in one step have similar lengths and no rank waits long
for the others at the gradient all-reduce. Only the last pool can leave a short batch; it is placed last so the
cut into batches stays aligned. (With ``accelerator_config.split_batches`` each DataLoader batch is split across
the ranks instead, and the sampler groups one batch at a time.)

Evaluation and prediction: batches are sorted by length (longest first), so evaluation pads almost nothing.
``predict`` puts its outputs back in dataset order, so predictions line up with the rows they were made for.
(Trainer's own ``group_by_length`` also shuffles evaluation and prediction batches with ``LengthGroupedSampler``,
and does *not* restore the order: with plain ``Trainer``, ``predict(...).predictions[i]`` is then not row ``i``.)
Metrics are unaffected by the order; a ``compute_metrics`` that indexes the evaluation dataset by position would
be, and should set ``sort_eval=False``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler
from transformers import Trainer
from transformers.trainer_utils import PredictionOutput, has_length

logger = logging.getLogger(__name__)

GROUP_BY_LENGTH = "group_by_length"
DEFAULT_POOL_BATCHES = 100


def sequence_lengths(dataset: Any, length_column: str = "length", input_column: str = "input_ids") -> np.ndarray | None:
    """Length of every row: the `length_column` if present, else the length of `input_column`; None if neither.

    For a ``datasets.Dataset`` the lengths are computed in Arrow, without turning the rows into Python lists.
    """
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        if length_column in columns:
            return np.asarray(dataset[length_column], dtype=np.int64)
        if input_column not in columns:
            return None
        try:
            import pyarrow.compute as pc

            column = dataset.with_format("arrow")[input_column]
            column = column.column(0) if hasattr(column, "column") else column  # a Table slice in some versions
            return np.asarray(pc.list_value_length(column).to_numpy(zero_copy_only=False), dtype=np.int64)
        except Exception:  # an unusual column type: fall back to the generic path below
            pass
    if not has_length(dataset) or len(dataset) == 0:
        return None
    first = dataset[0]
    if not isinstance(first, dict) and not hasattr(first, "keys"):
        return None
    if length_column in first:
        return np.asarray([int(dataset[i][length_column]) for i in range(len(dataset))], dtype=np.int64)
    if input_column in first:
        return np.asarray([len(dataset[i][input_column]) for i in range(len(dataset))], dtype=np.int64)
    return None


class LengthBucketedSampler(Sampler[int]):
    """One epoch of indices in batches of similar length: shuffled, sorted by length in pools, batch order shuffled.

    Per epoch (seeded by ``seed`` and the epoch set by ``set_epoch``):

    1. shuffle all indices;
    2. cut them into pools of ``pool_batches`` x ``group_batches`` x ``batch_size`` (``pool_batches=None``: one pool,
       the whole epoch), and sort each pool by length (a stable sort, so equal lengths stay shuffled);
    3. cut each pool into groups of ``group_batches`` consecutive batches (``group_batches`` = the number of
       processes that share the stream, so ranks get batches of similar lengths in the same step);
    4. shuffle the groups; with ``longest_first`` the group holding the longest sample goes first (a memory
       problem then shows in the first step, as with Trainer's sampler); the one short group, if any, goes last.

    Yields indices, ``len(self)`` of them; consecutive runs of ``batch_size`` are the batches.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        pool_batches: int | None = DEFAULT_POOL_BATCHES,
        group_batches: int = 1,
        seed: int = 0,
        longest_first: bool = True,
    ) -> None:
        if batch_size < 1 or group_batches < 1 or (pool_batches is not None and pool_batches < 1):
            raise ValueError("batch_size, group_batches and pool_batches must be positive.")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.pool_batches = pool_batches
        self.group_batches = group_batches
        self.seed = seed
        self.longest_first = longest_first
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices().tolist())

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The index order of `epoch` (default: the current one)."""
        n = len(self.lengths)
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        order = rng.permutation(n)
        group = self.batch_size * self.group_batches
        pool = n if self.pool_batches is None else self.pool_batches * group
        groups: list[np.ndarray] = []
        for start in range(0, n, max(pool, 1)):
            chunk = order[start : start + pool]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            groups.extend(chunk[i : i + group] for i in range(0, len(chunk), group))
        short = [g for g in groups if len(g) < group]  # at most one: only the last pool can be short
        full = [g for g in groups if len(g) == group]
        full = [full[i] for i in rng.permutation(len(full))]
        if self.longest_first and full:
            longest = int(np.argmax([self.lengths[g].max() for g in full]))
            full.insert(0, full.pop(longest))
        parts = full + short
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


class LengthSortedSampler(Sampler[int]):
    """Every index once, longest first (ties in index order): for evaluation, where order does not matter."""

    def __init__(self, lengths: Sequence[int] | np.ndarray) -> None:
        self.order = sorted_order(lengths)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())


def sorted_order(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


class LengthBucketingMixin:
    """Trainer mixin: :class:`LengthBucketedSampler` for ``group_by_length`` training, sorted evaluation batches.

    Keyword arguments (taken before the rest go to the Trainer):
        bucket_pool_batches: pool size in batches (default 100); None sorts the whole epoch at once.
        sort_eval: sort evaluation / prediction batches by length (default True); ``predict`` restores the order.
    """

    def __init__(
        self, *args: Any, bucket_pool_batches: int | None = DEFAULT_POOL_BATCHES, sort_eval: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.bucket_pool_batches = bucket_pool_batches
        self.sort_eval = sort_eval
        self._last_eval_order: np.ndarray | None = None

    def _lengths(self, dataset: Any) -> np.ndarray | None:
        input_name = "input_ids"
        processing_class = getattr(self, "processing_class", None)
        if processing_class is not None and getattr(processing_class, "model_input_names", None):
            input_name = processing_class.model_input_names[0]
        return sequence_lengths(dataset, self.args.length_column_name, input_name)

    def _get_train_sampler(self, train_dataset: Any = None) -> Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != GROUP_BY_LENGTH or dataset is None or not has_length(dataset):
            return super()._get_train_sampler(train_dataset)
        lengths = self._lengths(dataset)
        if lengths is None:
            logger.warning("No input_ids or length column to bucket by: falling back to Trainer's sampler.")
            return super()._get_train_sampler(train_dataset)
        split_batches = bool(getattr(self.accelerator, "split_batches", False))
        return LengthBucketedSampler(
            lengths,
            batch_size=self._train_batch_size,
            pool_batches=self.bucket_pool_batches,
            group_batches=1 if split_batches else max(1, self.args.world_size),
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def _get_eval_sampler(self, eval_dataset: Any) -> Sampler | None:
        if self.sort_eval and eval_dataset is not None and has_length(eval_dataset):
            lengths = self._lengths(eval_dataset)
            if lengths is not None:
                sampler = LengthSortedSampler(lengths)
                self._last_eval_order = sampler.order
                return sampler
        return super()._get_eval_sampler(eval_dataset)

    def predict(self, test_dataset: Any, *args: Any, **kwargs: Any) -> PredictionOutput:
        """Trainer.predict, with predictions and label_ids back in `test_dataset`'s row order."""
        self._last_eval_order = None
        output = super().predict(test_dataset, *args, **kwargs)
        order = self._last_eval_order  # set while predict built its DataLoader
        if order is None or not has_length(test_dataset) or len(order) != len(test_dataset):
            return output
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[order] = np.arange(len(order))
        return PredictionOutput(
            predictions=_reorder(output.predictions, inverse),
            label_ids=_reorder(output.label_ids, inverse),
            metrics=output.metrics,
        )


def _reorder(value: Any, inverse: np.ndarray) -> Any:
    """`value` (an array, or nested tuples / lists / dicts of arrays) with its rows taken in `inverse` order."""
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim > 0 and value.shape[0] == len(inverse):
        return value[inverse]
    if isinstance(value, (tuple, list)):
        return type(value)(_reorder(item, inverse) for item in value)
    if isinstance(value, dict):
        return {key: _reorder(item, inverse) for key, item in value.items()}
    return value


_CLASSES: dict[type, type] = {}


def length_bucketed(trainer_class: type[Trainer]) -> type[Trainer]:
    """`trainer_class` with :class:`LengthBucketingMixin` in front (cached, so the same class comes back each time)."""
    if issubclass(trainer_class, LengthBucketingMixin):
        return trainer_class
    if trainer_class not in _CLASSES:
        _CLASSES[trainer_class] = type(
            f"LengthBucketed{trainer_class.__name__}", (LengthBucketingMixin, trainer_class), {}
        )
    return _CLASSES[trainer_class]


class LengthBucketedTrainer(LengthBucketingMixin, Trainer):
    """``Trainer`` with :class:`LengthBucketedSampler` for ``group_by_length`` and length-sorted evaluation."""


_CLASSES[Trainer] = LengthBucketedTrainer
