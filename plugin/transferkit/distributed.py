"""Stop a run that asked for FSDP or DeepSpeed but would silently train another way.

On a machine without GPUs accelerate drops FSDP2 without a word (the processes train with plain DDP, each holding
the whole model) and FSDP through TrainingArguments trains with MULTI_CPU: the run "works" and is not what was
asked. Recipes call `check_requested_backend(training_args)` right after parsing (before any data or model is
loaded) and `check_requested_backend(trainer)` once the Trainer exists (the definitive check).
"""

from __future__ import annotations

import os
from typing import Any

from transferkit.errors import TransferKitError

_TRUE = ("1", "true", "yes")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def fsdp_request(args: Any) -> str | None:
    """What asks for FSDP, in words, or None."""
    if getattr(args, "fsdp", None):
        return f"fsdp: {args.fsdp!r} in the training arguments"
    if getattr(args, "fsdp_config", None):
        return "fsdp_config in the training arguments (without fsdp: true it is ignored)"
    if _env_true("ACCELERATE_USE_FSDP"):
        return "an FSDP accelerate config (ACCELERATE_USE_FSDP=true)"
    return None


def deepspeed_request(args: Any) -> str | None:
    if getattr(args, "deepspeed", None):
        return f"deepspeed: {args.deepspeed!r} in the training arguments"
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        return "a DeepSpeed accelerate config (ACCELERATE_USE_DEEPSPEED=true)"
    return None


def _message(backend: str, why: str, actual: str, recipe: str, config: str) -> str:
    return (
        f"{backend} was requested ({why}) but is not active: the run would silently train without it ({actual}), "
        "every process holding the whole model. "
        f"Launch it on GPUs with `accelerate launch --config_file accelerate_configs/{config}.yaml "
        f"-m transferkit.recipes.{recipe} ...` (or `transferkit run {recipe} --accelerate_config {config} ...`), "
        f"or remove the {backend} settings to train without it (on CPU: --accelerate_config cpu_ddp)."
    )


def check_requested_backend(trainer_or_args: Any, recipe: str = "<recipe>") -> None:
    """Raise TransferKitError when FSDP or DeepSpeed is asked for and would not be used.

    Given a Trainer: compares the request with `trainer.is_fsdp_enabled` / `trainer.is_deepspeed_enabled`.
    Given TrainingArguments (before the Trainer exists): only FSDP on a CPU device can be judged, and it never works.
    """
    trainer = trainer_or_args if hasattr(trainer_or_args, "accelerator") else None
    args = trainer.args if trainer is not None else trainer_or_args
    fsdp_why, deepspeed_why = fsdp_request(args), deepspeed_request(args)
    if trainer is None:
        if fsdp_why and args.device.type == "cpu":
            raise TransferKitError(_message("FSDP", fsdp_why, "on the CPU, where FSDP cannot run", recipe, "fsdp"))
        return
    actual = "accelerate distributed_type " + str(getattr(trainer.accelerator, "distributed_type", "?")).split(".")[-1]
    if fsdp_why and not trainer.is_fsdp_enabled:
        raise TransferKitError(_message("FSDP", fsdp_why, actual, recipe, "fsdp"))
    if deepspeed_why and not trainer.is_deepspeed_enabled:
        raise TransferKitError(_message("DeepSpeed", deepspeed_why, actual, recipe, "zero3"))
