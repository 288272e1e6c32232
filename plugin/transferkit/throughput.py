"""Training throughput in Trainer's logs: non-padding tokens per second of training, and estimated MFU.

Trainer counts the tokens (`include_num_input_tokens_seen: non_padding`, which the recipes set: each batch's
attention-mask sum, gathered over the processes, so the count is global and exact); `ThroughputCallback` (in the
recipes' callbacks) turns it into rates. Every training log (every `logging_steps`) then also carries

* `nonpad_tokens_per_second`: tokens that are not padding, all processes together, per second of training;
* `mfu`: model FLOPs utilisation, a fraction of one device's peak (only when the peak is known, below),

over the interval since the previous log, and the end-of-training summary (`train_results.json`) the whole run's
`train_nonpad_tokens_per_second`, `train_mfu` and `train_compute_seconds`.

* **Time** is time spent in training steps, data loading included, evaluation and checkpoint saving excluded (the
  clock restarts when an evaluation or a save ends). On a GPU, work still queued when an evaluation starts is
  charged to the evaluation; intervals that end at a log are exact (logging synchronises).
* **MFU** = FLOPs per token x tokens/s per device / peak FLOP/s of a device. FLOPs per token for training (forward
  + backward) is estimated as `6 * N + 12 * L * d * T`: `N` the parameters without the embedding tables (lookups
  cost no FLOPs), plus the output projection when it is tied to the input embeddings (an MLM decoder: a matmul at
  every position, or at the masked ones only with the sparse MLM head: `output_head_fraction`), `L` the layers, `d`
  the hidden size and `T` the mean non-padding length of a training row (the attention score and value matmuls,
  as in the PaLM paper's MFU appendix). ZeRO-3 partitions are counted at their full size (`ds_numel`). Padding is
  not useful work, so a padded run shows a lower MFU; frozen weights (LoRA, a head warm-up) still count 6 FLOPs
  per parameter: a *model* FLOPs figure.
* **Peak**: `TRANSFERKIT_PEAK_FLOPS` (FLOP/s of one device, e.g. `312e12`) when set; else the dense bf16/fp16
  tensor-core peak of a known GPU (`PEAK_FLOPS`, matched on `torch.cuda.get_device_name`); else, and on a CPU, no
  MFU. The peak is the half-precision one even for fp32 / tf32 runs, so those show a low MFU.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import TrainerCallback

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
        dense += parameter.numel() or getattr(parameter, "ds_numel", 0)  # a ZeRO-3 partition holds no elements
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    weight = getattr(output, "weight", None)
    if weight is not None and id(weight) in embedding_params:
        dense += (weight.numel() or getattr(weight, "ds_numel", 0)) * output_head_fraction
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


class ThroughputCallback(TrainerCallback):
    """Adds `nonpad_tokens_per_second` and `mfu` to Trainer's training logs (see the module docstring) from the token
    count Trainer keeps with `include_num_input_tokens_seen: non_padding`. `output_head_fraction` scales the tied
    output projection in the FLOPs estimate (the masking probability for the sparse MLM head); `peak_flops`
    overrides the device peak (else $TRANSFERKIT_PEAK_FLOPS or the GPU table).

    Add it with `add_first(trainer)`: Trainer runs the callbacks it is given after its `report_to` integrations,
    which would then log before the figures are added."""

    def __init__(
        self,
        output_head_fraction: float = 1.0,
        peak_flops: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.output_head_fraction, self.peak_flops, self.clock = output_head_fraction, peak_flops, clock
        self.flops_per_token: float | None = None
        self.counting = False
        self.mark: float | None = None
        self.interval_seconds = self.total_seconds = 0.0
        self.interval_tokens = self.run_tokens = 0

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.counting = args.include_num_input_tokens_seen == "non_padding"
        if not self.counting:  # "all" would count padding as tokens
            logger.warning("ThroughputCallback needs include_num_input_tokens_seen: non_padding; no rates are logged.")
        self.world_size = max(1, args.world_size)
        if self.peak_flops is None:
            self.peak_flops = resolve_peak_flops(args.device)
        if self.peak_flops and model is not None:
            length = mean_row_length(getattr(train_dataloader, "dataset", None))
            self.flops_per_token = model_flops_per_token(model, length, self.output_head_fraction)
        self.interval_tokens = self.run_tokens = state.num_input_tokens_seen
        self.interval_seconds = self.total_seconds = 0.0
        self.mark = self.clock()

    def add_first(self, trainer) -> None:
        """Put this callback before every other of `trainer`'s, so that TensorBoard, W&B, ... see its figures."""
        trainer.callback_handler.callbacks.insert(0, self)

    def _tick(self) -> None:
        """Charge the time since the last mark to training."""
        now = self.clock()
        if self.mark is not None:
            self.interval_seconds += now - self.mark
            self.total_seconds += now - self.mark
        self.mark = now

    def on_step_end(self, args, state, control, **kwargs):
        self._tick()

    def _restart_clock(self, args, state, control, **kwargs):  # evaluation and saving are not training time
        self.mark = self.clock()

    on_evaluate = on_predict = on_save = _restart_clock

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self.mark is None or not self.counting:
            return
        if "loss" in logs:  # a training log
            self._tick()
            added = self.figures(state.num_input_tokens_seen - self.interval_tokens, self.interval_seconds, "")
            self.interval_tokens, self.interval_seconds = state.num_input_tokens_seen, 0.0
        elif "train_loss" in logs:  # the end-of-training summary
            added = self.figures(state.num_input_tokens_seen - self.run_tokens, self.total_seconds, "train_")
            added["train_compute_seconds"] = round(self.total_seconds, 4)
        else:
            return
        logs.update(added)
        state.log_history[-1].update(added)  # Trainer.log appends its copy of `logs` just before calling us

    def figures(self, tokens: int, seconds: float, prefix: str) -> dict[str, float]:
        if tokens <= 0 or seconds <= 0:
            return {}
        figures = {f"{prefix}nonpad_tokens_per_second": round(tokens / seconds, 2)}
        if self.peak_flops and self.flops_per_token:
            per_device = tokens / seconds / self.world_size
            figures[f"{prefix}mfu"] = float(f"{self.flops_per_token * per_device / self.peak_flops:.4g}")
        return figures


def mean_row_length(dataset: Any) -> float:
    """Mean non-padding length of a training row (0 when the dataset cannot tell: a stream)."""
    from transferkit.trainers import row_lengths

    lengths = row_lengths(dataset)
    return float(np.mean(lengths)) if lengths is not None and len(lengths) else 0.0
