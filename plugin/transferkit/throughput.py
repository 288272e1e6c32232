"""Training throughput in every Trainer log: non-padding tokens/s, samples/s, padding share and estimated MFU.

Turn it on with one line after the Trainer is built (off unless called)::

    from transferkit.throughput import enable_throughput

    trainer = Trainer(...)
    enable_throughput(trainer)

Every training log (the ones with ``loss``, every ``logging_steps``) then also carries

* ``nonpad_tokens_per_second``: tokens that are not padding (``attention_mask`` sum), per second;
* ``samples_per_second``: sequences per second;
* ``padding_share``: padded positions / all positions of the batches, in [0, 1);
* ``mfu``: model FLOPs utilisation, a fraction of the device's peak (only when the peak is known, below),

all over the interval since the previous log. The end-of-training summary (the log with ``train_runtime``, which
is also ``trainer.train().metrics`` and so reaches ``train_results.json``) gets the whole-run figures
``train_nonpad_tokens_per_second``, ``train_padding_share``, ``train_mfu`` and ``train_compute_seconds``.
The values go into the ``logs`` dict before the progress bar, ``report_to`` integrations and the printer see it
(`enable_throughput` puts the callback first in the list) and into ``trainer.state.log_history``
(``trainer_state.json``).

What the figures mean, precisely:

* **Time** is time spent in training steps, data loading included, evaluation and checkpoint saving excluded
  (the clock is restarted when an evaluation or a save ends). On a GPU, work still queued when an evaluation
  starts is charged to the evaluation; intervals that end at a log are exact (logging synchronises).
* **Counts** are taken from each batch as ``Trainer.training_step`` receives it (:class:`BatchCounter`;
  `enable_throughput` wraps the trainer's ``training_step``), so they are exactly the batches trained on in the
  interval: evaluation batches never count, and DataLoader prefetching does not shift them. Samples and
  positions come from tensor shapes (host-side); the non-padding count (``attention_mask`` sum) is added up on
  the batch's device without a synchronisation and read once per log, when Trainer has just synchronised to
  log the loss. Outside Trainer (or to count in the collator instead) use :class:`CountingCollator`, whose
  shared-memory :class:`TokenCounter` also counts in DataLoader workers; it counts batches when they are
  *collated*, ahead of training by the prefetch depth (a batch or two, ``prefetch_factor x num_workers`` with
  workers), which skews short logging intervals, most visibly at epoch ends.
* **Distributed runs**: every process counts its own batches. ``nonpad_tokens_per_second`` and
  ``samples_per_second`` are **global estimates**: this process's rate times the world size, the same
  convention as Trainer's own ``train_samples_per_second``. ``padding_share`` and ``mfu`` are this process's
  (MFU is per device either way). No collective operation is run to gather exact counts.
* **MFU** = FLOPs per non-padding token x non-padding tokens/s per device / peak FLOP/s per device.
  FLOPs per token for training (forward + backward) is estimated as ``6 * N + 12 * L * d * T``, where ``N`` is
  the parameter count without the embedding tables (lookups cost no FLOPs), plus the output projection when it
  is tied to the input embeddings (an MLM decoder: it is a matmul at every position), ``L`` the layers, ``d`` the
  hidden size and ``T`` the mean non-padding sequence length of the interval (the attention score and value
  matmuls, as in the PaLM paper's MFU appendix). Padding is not counted as useful work, so a padded run shows
  a lower MFU. Frozen weights (LoRA, a head warm-up) still count 6 FLOPs per parameter: a *model* FLOPs figure.
  With the sparse MLM head (``transferkit.sparse_mlm``), which projects onto the vocabulary only at the
  masked positions, pass ``output_head_fraction=`` the masking probability (0.15); ``flops_per_token=`` replaces
  the whole estimate.
* **Peak**: ``TRANSFERKIT_PEAK_FLOPS`` (FLOP/s of one device, e.g. ``312e12``) when set; else the dense bf16/fp16
  tensor-core peak of a known GPU found by ``torch.cuda.get_device_name`` (:data:`PEAK_FLOPS`); else, and on
  CPU, no MFU is logged. The peak is the half-precision one even for fp32 / tf32 runs, so those show a low MFU.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import re
import time
import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

logger = logging.getLogger(__name__)

PEAK_FLOPS_ENV = "TRANSFERKIT_PEAK_FLOPS"

# Dense (no sparsity) bf16 / fp16 tensor-core peak of one device, in FLOP/s, from the vendors' datasheets.
# Matched in order against the lower-cased device name, so specific names come before their prefixes.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    (r"gb200", 2.5e15),
    (r"b200", 2.25e15),
    (r"h200.*(nvl|pcie)", 836e12),
    (r"h200", 989e12),
    (r"h100.*nvl", 835e12),
    (r"h100.*pcie", 756e12),
    (r"h100", 989e12),  # SXM, and any H100 whose name does not say otherwise
    (r"h800.*pcie", 756e12),
    (r"h800", 989e12),
    (r"a100", 312e12),
    (r"a800", 312e12),
    (r"a10g", 125e12),  # A10 datasheet figure; AWS publishes none for its A10G. Set TRANSFERKIT_PEAK_FLOPS to be sure
    (r"\ba10\b", 125e12),
    (r"\ba30\b", 165e12),
    (r"\ba40\b", 149.7e12),
    (r"a6000", 154.8e12),
    (r"l40s", 362e12),
    (r"\bl40\b", 181e12),
    (r"\bl4\b", 121e12),
    (r"\bt4\b", 65e12),  # fp16; the T4 has no bf16
    (r"v100", 125e12),  # fp16; the V100 has no bf16
    (r"rtx 4090", 165.2e12),
    (r"rtx 3090", 71e12),
    (r"mi300x|mi325x", 1307e12),
    (r"mi250x", 191.5e12),  # per GCD: torch sees each of the package's two GCDs as a device
)


def peak_flops_for(device_name: str) -> float | None:
    """The dense bf16/fp16 peak FLOP/s of a GPU named `device_name`, or None when it is not in the table."""
    name = device_name.lower()
    for pattern, flops in PEAK_FLOPS:
        if re.search(pattern, name):
            return flops
    return None


def resolve_peak_flops(device: Any = None) -> float | None:
    """Peak FLOP/s of one device: $TRANSFERKIT_PEAK_FLOPS, else the table for a CUDA device, else None (CPU)."""
    value = os.environ.get(PEAK_FLOPS_ENV, "").strip()
    if value:
        try:
            peak = float(value)
        except ValueError:
            peak = 0.0
        if peak > 0:
            return peak
        logger.warning("%s=%r is not a positive number of FLOP/s; ignoring it.", PEAK_FLOPS_ENV, value)
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
        peak = peak_flops_for(name)
        if peak is None:
            logger.warning("No peak FLOP/s known for %s: MFU is not logged. Set %s to log it.", name, PEAK_FLOPS_ENV)
        return peak
    return None


def model_flops_per_token(model: nn.Module, seq_len: float = 0.0, output_head_fraction: float = 1.0) -> float:
    """Training FLOPs (forward + backward) per token: 6 x non-embedding parameters + 12 x layers x hidden x seq_len.

    Embedding tables (every ``nn.Embedding``) are left out: a lookup is no matmul. An output projection that is
    tied to the input embeddings (an MLM decoder) is a matmul at every position, so it is added back, scaled by
    `output_head_fraction` (the masking probability when the head runs only at masked positions).
    """
    model = getattr(model, "module", model)  # DDP / DataParallel
    embedding_params = {
        id(p) for module in model.modules() if isinstance(module, nn.Embedding) for p in module.parameters()
    }
    seen: set[int] = set()
    dense = 0
    for parameter in model.parameters():
        if id(parameter) in seen or id(parameter) in embedding_params:
            continue
        seen.add(id(parameter))
        dense += parameter.numel()
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    weight = getattr(output, "weight", None)
    if weight is not None and id(weight) in embedding_params:
        dense += weight.numel() * output_head_fraction
    config = getattr(model, "config", None)
    layers = _config_value(config, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _config_value(config, "hidden_size", "n_embd", "d_model", "dim")
    attention = 12 * layers * hidden * seq_len if layers and hidden else 0.0
    return 6.0 * dense + attention


def _config_value(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return 0


class Counts(NamedTuple):
    batches: int
    samples: int
    tokens: int  # non-padding
    positions: int  # all, padding included

    def __sub__(self, other: Counts) -> Counts:  # type: ignore[override]
        return Counts(*(a - b for a, b in zip(self, other)))


class TokenCounter:
    """Running totals of batches, samples, non-padding tokens and positions, shared with DataLoader workers.

    The totals sit in a small shared-memory array (``multiprocessing.Array``), so collators running in worker
    processes add to the same numbers the main process reads. Where shared memory is unavailable it falls back
    to a plain in-process list (then only ``dataloader_num_workers=0`` is counted). `context` must be the
    multiprocessing start method the DataLoader uses (``dataloader_multiprocessing_context``; None: the default),
    as a lock made for one start method cannot be handed to processes started with another.
    """

    def __init__(self, context: str | None = None) -> None:
        try:
            self._values: Any = multiprocessing.get_context(context).Array(ctypes.c_longlong, 4)
            self._lock: Any = self._values.get_lock()
        except (OSError, ImportError):  # no /dev/shm or no working semaphores
            self._values, self._lock = [0, 0, 0, 0], None

    def add(self, samples: int, tokens: int, positions: int) -> None:
        if self._lock is None:
            self._add(samples, tokens, positions)
            return
        with self._lock:
            self._add(samples, tokens, positions)

    def _add(self, samples: int, tokens: int, positions: int) -> None:
        self._values[0] += 1
        self._values[1] += samples
        self._values[2] += tokens
        self._values[3] += positions

    def read(self) -> Counts:
        return Counts(*(int(value) for value in self._values[:]))


def count_batch(batch: Mapping, pad_token_id: int | None = None) -> tuple[int, int, int] | None:
    """(samples, non-padding tokens, positions) of a collated batch; None when it has no input_ids/attention_mask.

    Non-padding tokens are the ``attention_mask`` sum, else the ``input_ids`` that differ from `pad_token_id`,
    else every position. Works on torch tensors and numpy arrays; on CPU tensors it costs microseconds.
    """
    mask = batch.get("attention_mask")
    ids = batch.get("input_ids")
    reference = mask if mask is not None else ids
    shape = getattr(reference, "shape", None)
    if reference is None or shape is None or len(shape) < 2:
        return None
    samples, positions = int(shape[0]), int(reference.size if not callable(reference.size) else reference.numel())
    if mask is not None:
        tokens = int(mask.sum())
    elif pad_token_id is not None:
        tokens = int((ids != pad_token_id).sum())
    else:
        tokens = positions
    return samples, tokens, positions


class BatchCounter:
    """Running totals of the batches `add` is given, without a device synchronisation per batch.

    Batches, samples and positions are read from tensor shapes; the non-padding tokens are summed on the
    batch's own device and only brought to the host by :meth:`read`.
    """

    def __init__(self, pad_token_id: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self._batches = self._samples = self._positions = self._host_tokens = 0
        self._device_tokens: Any = None

    def add(self, batch: Mapping) -> None:
        mask, ids = batch.get("attention_mask"), batch.get("input_ids")
        reference = mask if mask is not None else ids
        if not isinstance(reference, torch.Tensor) or reference.dim() < 2:
            counts = count_batch(batch, self.pad_token_id) if isinstance(batch, Mapping) else None
            if counts is not None:
                self._add_host(*counts)
            return
        if mask is not None:
            tokens = mask.sum()
        elif self.pad_token_id is not None:
            tokens = (ids != self.pad_token_id).sum()
        else:
            tokens = None
        self._batches += 1
        self._samples += reference.shape[0]
        self._positions += reference.numel()
        if tokens is None:
            self._host_tokens += reference.numel()
        elif self._device_tokens is None:
            self._device_tokens = tokens.to(torch.int64)
        else:
            self._device_tokens += tokens

    def _add_host(self, samples: int, tokens: int, positions: int) -> None:
        self._batches += 1
        self._samples += samples
        self._positions += positions
        self._host_tokens += tokens

    def read(self) -> Counts:
        tokens = self._host_tokens + (int(self._device_tokens.item()) if self._device_tokens is not None else 0)
        return Counts(self._batches, self._samples, tokens, self._positions)


class CountingCollator:
    """Wrap a collator: return its batches unchanged and add their counts to a :class:`TokenCounter`.

    Picklable (for DataLoader workers started with spawn) when the wrapped collator is.
    """

    def __init__(
        self, collator: Callable, counter: TokenCounter | None = None, pad_token_id: int | None = None
    ) -> None:
        self.collator = collator
        self.counter = counter if counter is not None else TokenCounter()
        self.pad_token_id = pad_token_id

    def __call__(self, features: list) -> Any:
        batch = self.collator(features)
        if isinstance(batch, Mapping):
            counts = count_batch(batch, self.pad_token_id)
            if counts is not None:
                self.counter.add(*counts)
        return batch


class ThroughputCallback(TrainerCallback):
    """Adds throughput figures to Trainer's training logs; see the module docstring for their definitions.

    Reads a counter (anything with ``read() -> Counts``): the :class:`BatchCounter` that
    :func:`enable_throughput` feeds from ``training_step``, or the :class:`TokenCounter` of a
    :class:`CountingCollator` on the training DataLoader. `flops_per_token` overrides the MFU estimate's FLOPs
    per token (then no attention term is added); `output_head_fraction` scales the tied output projection (the
    masking probability for the sparse MLM head); `peak_flops` overrides the device peak (else
    $TRANSFERKIT_PEAK_FLOPS or the GPU table).
    """

    def __init__(
        self,
        counter: BatchCounter | TokenCounter | None = None,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        output_head_fraction: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.counter = counter if counter is not None else BatchCounter()
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.output_head_fraction = output_head_fraction
        self.clock = clock
        self._model: nn.Module | None = None
        self._world_size = 1
        self._reset()

    def _reset(self) -> None:
        self._mark: float | None = None
        self._interval_seconds = 0.0
        self._total_seconds = 0.0
        self._interval_start = Counts(0, 0, 0, 0)
        self._run_start = Counts(0, 0, 0, 0)

    @property
    def total_seconds(self) -> float:
        """Seconds of training (evaluation and saving excluded) since training began."""
        return self._total_seconds

    def total_counts(self) -> Counts:
        """What the training collator counted since training began (this process)."""
        return self.counter.read() - self._run_start

    # -- clock --------------------------------------------------------------------------------------------------

    def _tick(self) -> None:
        """Charge the time since the last mark to training."""
        now = self.clock()
        if self._mark is not None:
            self._interval_seconds += now - self._mark
            self._total_seconds += now - self._mark
        self._mark = now

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._reset()
        self._model = model
        self._world_size = max(1, args.world_size)
        if self.peak_flops is None:
            self.peak_flops = resolve_peak_flops(args.device)
        self._interval_start = self._run_start = self.counter.read()
        self._mark = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        self._tick()

    def on_evaluate(self, args, state, control, **kwargs):
        self._mark = self.clock()  # evaluation time is not training time

    def on_predict(self, args, state, control, **kwargs):
        self._mark = self.clock()

    def on_save(self, args, state, control, **kwargs):
        self._mark = self.clock()

    # -- logs -----------------------------------------------------------------------------------------------------

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self._mark is None or any(key.startswith(("eval_", "test_")) for key in logs):
            return
        if "train_runtime" in logs:  # the end-of-training summary
            counts = self.counter.read() - self._run_start
            added = self.figures(counts, self._total_seconds, prefix="train_")
            if added:
                added["train_compute_seconds"] = round(self._total_seconds, 4)
        elif "loss" in logs:
            self._tick()
            counts = self.counter.read()
            added = self.figures(counts - self._interval_start, self._interval_seconds)
            self._interval_start, self._interval_seconds = counts, 0.0
        else:
            return
        logs.update(added)
        # Trainer.log appends a copy of `logs` to the history before calling the callbacks: update that copy too.
        last = state.log_history[-1] if state.log_history else {}
        if all(last.get(key) is value for key, value in logs.items() if key not in added):
            last.update(added)

    def figures(self, counts: Counts, seconds: float, prefix: str = "") -> dict[str, float]:
        """The log entries for `counts` trained on in `seconds` of training (empty when nothing was counted)."""
        if counts.batches <= 0 or counts.positions <= 0 or seconds <= 0:
            return {}
        tokens_per_second = counts.tokens / seconds
        figures = {f"{prefix}nonpad_tokens_per_second": round(tokens_per_second * self._world_size, 2)}
        if not prefix:  # Trainer's summary has its own train_samples_per_second (wall clock, evaluation included)
            figures["samples_per_second"] = round(counts.samples / seconds * self._world_size, 3)
        figures[f"{prefix}padding_share"] = round(1.0 - counts.tokens / counts.positions, 4)
        if self.peak_flops:
            mean_length = counts.tokens / max(1, counts.samples)
            flops_per_token = self.flops_per_token
            if flops_per_token is None and self._model is not None:
                flops_per_token = model_flops_per_token(self._model, mean_length, self.output_head_fraction)
            if flops_per_token:
                figures[f"{prefix}mfu"] = float(f"{flops_per_token * tokens_per_second / self.peak_flops:.4g}")
        return figures


def enable_throughput(
    trainer: Trainer,
    flops_per_token: float | None = None,
    peak_flops: float | None = None,
    output_head_fraction: float = 1.0,
) -> ThroughputCallback:
    """Count the batches `trainer` trains on and add throughput figures to its logs; returns the callback.

    Puts a :class:`ThroughputCallback` first among the trainer's callbacks (so the progress bar and the
    ``report_to`` integrations see the added values) and wraps the trainer's ``training_step`` (on the instance)
    so that every training batch is counted by a :class:`BatchCounter` before it runs. Evaluation and prediction
    never go through ``training_step``, so they are never counted. Calling it twice returns the first callback.
    The keyword arguments are :class:`ThroughputCallback`'s.
    """
    existing = getattr(trainer, "_transferkit_throughput", None)
    if existing is not None:
        return existing
    tokenizer = getattr(trainer, "processing_class", None)
    counter = BatchCounter(getattr(tokenizer, "pad_token_id", None))
    callback = ThroughputCallback(counter, flops_per_token, peak_flops, output_head_fraction)
    trainer.callback_handler.callbacks.insert(0, callback)
    original = trainer.training_step

    def training_step(self: Trainer, model: nn.Module, inputs: Any, *args: Any, **kwargs: Any):
        if isinstance(inputs, Mapping):
            counter.add(inputs)
        return original(model, inputs, *args, **kwargs)

    trainer.training_step = types.MethodType(training_step, trainer)
    trainer._transferkit_throughput = callback
    return callback
