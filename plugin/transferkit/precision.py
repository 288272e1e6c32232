"""`precision`: which arithmetic a run trains in, settled on the parsed values before TrainingArguments is built.

`auto` picks bf16 mixed precision where the hardware has fast bf16 arithmetic and fp32 elsewhere: a CUDA device
that runs bf16 natively (`torch.cuda.is_bf16_supported(including_emulation=False)`: compute capability 8.0+ or
ROCm; emulated bf16 is slower than fp32), or a CPU with AMX-BF16 tiles, which oneDNN uses for bf16 matmuls (1.60x
faster than fp32 on a classification epoch). AVX-512 BF16 alone is not enough: there bf16 autocast trained 1.6x
SLOWER than fp32 (0.62x, MiniLM classification, side by side; tests/benchmarks/README.md), the casts costing more
than its dot products save. auto never picks fp16: it needs loss scaling and overflows where bf16 does not.

The other sources of a precision, and how they combine (`transferkit.implied` settles conflicts between user-set
keys):
- TrainingArguments' `bf16` / `fp16` flags, when the user sets them, win over `precision: auto`.
- `accelerate launch` exports its config's `mixed_precision` as ACCELERATE_MIXED_PRECISION, which
  TrainingArguments reads when neither flag is set (transformers' `TrainingArguments.__post_init__`). auto honours
  bf16 / fp16 / fp8 from there. `accelerate launch` exports `no` when its config says nothing, so `no` does not
  stop auto from choosing by hardware.
- On a CPU, TrainingArguments refuses `bf16: true` unless `use_cpu: true` (its `_validate_args`); the chosen bf16
  sets both.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import Trainer

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
FLAGS = ("bf16", "fp16")  # the TrainingArguments flags; fp32 is both off
LAUNCHER_ENV = "ACCELERATE_MIXED_PRECISION"
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # Linux /proc/cpuinfo names of the instructions


@dataclass(frozen=True)
class Choice:
    """The precision a run trains in (bf16, fp16, fp8 or fp32), and why: what the log line says."""

    precision: str
    why: str
    by_launcher: bool = False  # TrainingArguments reads it from the environment: no flag to set


def launcher_precision() -> str | None:
    """The mixed precision `accelerate launch` (or the environment) asks for, None when it asks for none."""
    value = os.environ.get(LAUNCHER_ENV, "no").strip().lower()
    return None if value in ("", "no") else value


def cpu_bf16_instructions() -> list[str]:
    """The bf16 instruction sets of this CPU, from /proc/cpuinfo's flags (Linux); elsewhere from the checks
    torch's CPU module runs for its own kernels (private helpers, hence the getattr)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
        return [name for name in CPU_BF16_FLAGS if name in flags]
    except OSError:
        checks = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
        return [name for name, check in checks.items() if getattr(torch.cpu, check, lambda: False)()]


def _accelerator() -> str | None:
    """The device type TrainingArguments would train on without use_cpu: cuda, xpu, mps, ... or None (CPU)."""
    device = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
    if device is None and torch.cuda.is_available():
        device = torch.device("cuda")
    return None if device is None else device.type


def hardware_choice(use_cpu: bool) -> Choice:
    """What `auto` picks from the hardware alone."""
    device = None if use_cpu else _accelerator()
    if device == "cuda":
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Choice("bf16", f"auto: {name} runs bf16 natively")
        return Choice("fp32", f"auto: {name} has no native bf16 (fp16 is opt-in: precision fp16)")
    if device is not None:
        return Choice("fp32", f"auto: picks bf16 only on CUDA devices and CPUs with bf16 instructions, not {device}")
    found = cpu_bf16_instructions()
    if "amx_bf16" in found:
        return Choice("bf16", "auto: this CPU has amx_bf16")
    if found:
        return Choice("fp32", f"auto: this CPU has {' and '.join(found)} but no AMX, where bf16 trains slower")
    return Choice("fp32", "auto: this CPU has no bf16 instructions, where bf16 would be slower")


def auto_choice(values: dict[str, Any], where: dict[str, str]) -> Choice:
    """`precision: auto` given the user's flags and the launcher: a flag set true wins, the launcher's mixed
    precision comes next, then the hardware (bf16 only when the user did not turn the bf16 flag off)."""
    for flag in FLAGS:
        if flag in where and values.get(flag):
            return Choice(flag, f"{flag}: true ({where[flag]})")
    launcher = launcher_precision()
    if launcher is not None:
        return Choice(launcher, f"accelerate config: mixed_precision {launcher} ({LAUNCHER_ENV})", by_launcher=True)
    choice = hardware_choice(bool(values.get("use_cpu")))
    if choice.precision == "bf16" and "bf16" in where and not values.get("bf16"):
        return Choice("fp32", f"bf16: false ({where['bf16']})")
    return choice


def apply_choice(values: dict[str, Any], choice: Choice) -> None:
    """Set the TrainingArguments flags for `choice` (a launcher-chosen precision needs none: TrainingArguments reads
    it) and log the one line that says what and why."""
    if choice.precision in (*FLAGS, "fp32") and not choice.by_launcher:
        for flag in FLAGS:  # fp32: both off, also a flag set true elsewhere that precision won over
            values[flag] = flag == choice.precision
        if choice.precision == "bf16" and not values.get("use_cpu") and _accelerator() is None:
            values["use_cpu"] = True  # TrainingArguments allows bf16 on a CPU only with use_cpu
    # A WARNING, like transferkit.implied's notices: logging is configured only after parsing, and Python's
    # last-resort handler prints WARNING and above, as a plain line.
    logger.warning("Precision: %s (%s).", describe(choice.precision), choice.why)


def describe(precision: str) -> str:
    return "fp32" if precision in ("no", "fp32") else f"{precision} mixed precision"


def args_precision(args: Any) -> str | None:
    """The mixed precision TrainingArguments will train in: its bf16/fp16 flags, else what the accelerate config
    asked for (TrainingArguments keeps that in `mixed_precision` and leaves the flags off); None for fp32."""
    for flag in FLAGS:
        if getattr(args, flag, False):
            return flag
    chosen = getattr(args, "mixed_precision", None)
    return None if chosen in (None, "", "no") else str(chosen)


def used_precision(mixed_precision: str | None) -> str:
    """The card's and all_results.json's name for Accelerate's `mixed_precision` (`no` is fp32)."""
    return "fp32" if mixed_precision in (None, "no") else str(mixed_precision)


def record_precision(trainer: Trainer) -> str:
    """The precision the Trainer's Accelerator trained in (not the raw flags: an accelerate config sets it without
    them), written into output_dir/all_results.json as `precision` and returned for the model card. Main process,
    after training (publish.finish_run)."""
    used = used_precision(trainer.accelerator.mixed_precision)
    path = os.path.join(trainer.args.output_dir, "all_results.json")
    results = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            results = json.load(handle)
    with open(path + ".partial", "w", encoding="utf-8") as handle:  # a kill mid-write leaves the old file whole
        json.dump({**results, "precision": used}, handle, indent=4, sort_keys=True)  # Trainer.save_metrics' layout
    os.replace(path + ".partial", path)
    return used
