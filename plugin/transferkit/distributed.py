"""Stop a run that asked for FSDP or DeepSpeed but would silently train another way.

On a machine without GPUs accelerate drops FSDP2 without a word (the processes train with plain DDP, each holding
the whole model) and FSDP through TrainingArguments trains with MULTI_CPU: the run "works" and is not what was
asked. Recipes call `check_requested_backend(training_args)` right after parsing (before any data or model is
loaded) and `check_requested_backend(trainer)` once the Trainer exists (the definitive check). The same check
refuses `torch.nn.DataParallel`: a plain `python recipe.py` on a machine with several GPUs (`check_not_data_parallel`).

`fill_fsdp_layer_classes(model, args)`, called just before the Trainer is built, names the layer classes FSDP wraps
one by one when the user did not, so that one fsdp.yaml fits every model.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from typing import Any

from torch import nn

from transferkit.errors import TransferKitError, exit_on_user_error
from transferkit.memory import repeated_blocks

logger = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def cpu_process_group(values: dict[str, Any]) -> None:
    """Start a CPU launch's process group with the user's ddp_timeout, before TrainingArguments starts it without.

    transformers passes ddp_timeout to the process group only off the CPU (TrainingArguments._setup_devices sets
    `timeout` outside its use_cpu branch), so a CPU (gloo) launch would wait torch's default 30 minutes at every
    barrier whatever ddp_timeout says. accelerate's PartialState made here first, with the timeout, starts the group
    as it would have (its backend choice, its MPI and torchrun environments); TrainingArguments then finds the group
    started and keeps it. Not launched (one process), not on the CPU or a group already started: nothing to do.
    """
    import torch.distributed
    from accelerate import PartialState
    from accelerate.utils import get_int_from_env
    from transformers.utils import strtobool

    on_cpu = values.get("use_cpu") or strtobool(os.environ.get("ACCELERATE_USE_CPU", "False"))  # as transformers
    launched = get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1) > 1
    if not (on_cpu and launched) or torch.distributed.is_initialized():
        return
    timeout = datetime.timedelta(seconds=values.get("ddp_timeout") or 1800)
    PartialState(cpu=True, backend=values.get("ddp_backend"), timeout=timeout)


def run_recipe(main: Callable[[], object]) -> None:
    """A recipe script's entry point: `main` with user errors as one line (errors.exit_on_user_error), then, in a
    launch, this process leaves the process group. accelerate asks every script to end so (Accelerator.end_training
    destroys the group; Trainer never does): otherwise the group's threads are torn down while the interpreter
    exits, which can abort a process that has finished its work (torch warns of it for NCCL), and the launcher then
    reports a failed run."""
    exit_on_user_error(main)
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from accelerate import PartialState

        PartialState().destroy_process_group()


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
    check_not_data_parallel(args, recipe)
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


def check_not_data_parallel(args: Any, recipe: str = "<recipe>") -> None:
    """Refuse what Trainer does when one process sees several GPUs: wrap the model in `torch.nn.DataParallel`.

    Refused for every recipe, not only with the sparse MLM head. DataParallel copies the model onto each GPU at
    every forward, so an instance-level patched forward such as the sparse head's (sparse_mlm.py) is not what the
    replicas run; beyond that, PyTorch itself recommends DistributedDataParallel over DataParallel "even if there
    is only a single node" (torch.nn.DataParallel docs, https://pytorch.org/docs/stable/generated/
    torch.nn.DataParallel.html), and TransferKit's runs are checked single-process and under DDP only. Trainer
    wraps when `args.n_gpu > 1` (transformers trainer.py `_wrap_model`), which TrainingArguments only reports
    outside a distributed launch (`parallel_mode` NOT_DISTRIBUTED); a 4-bit model is not wrapped but would then
    train on one GPU of several, which the same message covers.
    """
    gpus = getattr(args, "n_gpu", 0)
    if gpus > 1:
        raise TransferKitError(
            f"This process sees {gpus} GPUs, so Trainer would train with torch.nn.DataParallel, which TransferKit "
            "does not support (PyTorch recommends DistributedDataParallel). Use all the GPUs with one process each: "
            f"`transferkit run {recipe} --accelerate_config multi_gpu ...` or `accelerate launch --config_file "
            f"accelerate_configs/multi_gpu.yaml -m transferkit.recipes.{recipe} ...`; or train on one GPU: "
            "CUDA_VISIBLE_DEVICES=0."
        )


# accelerate's FullyShardedDataParallelPlugin reads this when its `transformer_cls_names_to_wrap` is None, both
# when `accelerate launch` passed an FSDP config (accelerate/utils/dataclasses.py, __post_init__, env prefix
# "FSDP_") and when TrainingArguments' fsdp_config names no transformer_layer_cls_to_wrap (transformers
# training_args.py only passes the argument when set). `accelerate launch` exports it from
# fsdp_transformer_layer_cls_to_wrap in the config or on the command line (accelerate/utils/launch.py).
LAYER_CLASSES_ENV = "FSDP_TRANSFORMER_CLS_TO_WRAP"
_filled: str | None = None  # the value TransferKit set last in this process (a pipeline builds several Trainers)


def fsdp_layer_classes(model: nn.Module) -> list[str]:
    """The class names FSDP should wrap one by one in `model`: its `_no_split_modules` that it contains, else the
    class of the blocks in its largest `nn.ModuleList` (by parameters): the repeated transformer layers.

    accelerate's own fallback is `_no_split_modules` alone (accelerate/utils/fsdp_utils.py,
    `fsdp2_prepare_auto_wrap_policy`); models without it (DeBERTa-v2, DistilBERT, ELECTRA, ALBERT, MPNet in
    transformers 5.24) would then get no per-layer FSDP unit: the whole model gathered at once on every GPU.
    """
    present = {type(module).__name__ for module in model.modules()}
    declared = [name for name in sorted(getattr(model, "_no_split_modules", None) or []) if name in present]
    if declared:
        return declared
    return sorted({type(block).__name__ for block in repeated_blocks(model)})


def fill_fsdp_layer_classes(model: nn.Module, args: Any) -> list[str] | None:
    """Under FSDP, name `model`'s layer classes for accelerate's TRANSFORMER_BASED_WRAP unless the user did.

    fsdp.yaml leaves fsdp_transformer_layer_cls_to_wrap out because no one class fits every model (BertLayer,
    RobertaLayer, ModernBertEncoderLayer, Qwen2DecoderLayer, ...), and a class the model lacks stops accelerate at
    prepare. Set through the environment variable accelerate reads, before the Trainer builds its Accelerator; a
    value from the accelerate config, the launch command line or fsdp_config wins. Returns the classes set, or None.
    """
    global _filled
    if fsdp_request(args) is None:
        return None
    user_env = os.environ.get(LAYER_CLASSES_ENV)
    user_config = (getattr(args, "fsdp_config", None) or {}).get("transformer_layer_cls_to_wrap")
    if user_config or (user_env and user_env != _filled):
        logger.info("FSDP wraps the layer classes the user named: %s", user_config or user_env)
        return None
    classes = fsdp_layer_classes(model)
    if not classes:
        logger.warning("Found no repeated layers in %s: set fsdp_transformer_layer_cls_to_wrap", type(model).__name__)
        return None
    _filled = os.environ[LAYER_CLASSES_ENV] = ",".join(classes)
    logger.info("FSDP wraps each %s as one unit (fsdp_transformer_layer_cls_to_wrap sets others)", _filled)
    return classes
