"""Head warm-up: for the first `head_warmup_steps` optimizer steps only the task head learns, then the whole model.

Why: a new, randomly initialised head sends large, noisy gradients into the pretrained encoder at the start and
distorts its features; training the head alone first, then everything ("linear probing then finetuning", Kumar et
al. 2022, arXiv:2202.10054), avoids that. It also gives a checkpoint without an MLM head (a sentence encoder) a
head before MLM training moves the encoder.

One mechanism on every backend: the optimizer holds the encoder's parameters in param groups of their own, and
their learning rate is 0 until the warm-up ends. AdamW then moves them by exactly nothing, weight decay included
(decoupled decay is scaled by the learning rate), whether the step runs in a plain process, after DDP's all-reduce,
on FSDP shards or inside DeepSpeed's engine, which keeps the groups it is given. (Freezing the encoder instead
cannot be undone under DDP or DeepSpeed, which fix the set of trainable parameters when they wrap the model; and
dropping gradients before the optimizer step comes too late under DeepSpeed, whose engine steps during backward.)
When the warm-up ends, the encoder's optimizer state is cleared, so it starts as a freshly finetuned model would
(LP-FT's second stage), not with moments estimated while it stood still. Gradient clipping measures the whole
model's gradient throughout, as it does after the warm-up.

The encoder is the bare model's `base_model_prefix` module (`bert`, `model`, ...): with it the tied input
embeddings (an MLM decoder's weight among them) and, under LoRA, the adapters; not the weights inside it that are
new (a pooler an MLM checkpoint lacks) or that LoRA trains in full as part of the head (`modules_to_save`).
"""

from __future__ import annotations

import functools
import logging

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from transferkit.errors import TransferKitError

logger = logging.getLogger(__name__)
ENCODER_GROUP = "transferkit_encoder"  # the param-group key that marks the encoder's groups


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The pretrained body of `model` (a PEFT model's base model's), which the warm-up holds still."""
    bare = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(bare, "base_model_prefix", "")
    if not prefix or not isinstance(getattr(bare, prefix, None), torch.nn.Module):
        raise TransferKitError(
            f"head_warmup_steps needs a model with an encoder and a head; {type(bare).__name__} has no "
            f"'{prefix}' encoder. Set head_warmup_steps: 0."
        )
    return getattr(bare, prefix)


def held_parameters(model: torch.nn.Module) -> set[int]:
    """ids of the parameters the warm-up holds still: the encoder's, except those the checkpoint did not have (a new
    pooler under an MLM checkpoint) and LoRA's trained copies of head modules (`modules_to_save`) inside it."""
    bare = model.get_base_model() if hasattr(model, "get_base_model") else model
    new = set(getattr(bare, "transferkit_missing_keys", ()))
    encoder = encoder_of(model).named_parameters(prefix=bare.base_model_prefix)
    return {id(p) for name, p in encoder if name not in new and ".modules_to_save." not in f".{name}."}


class EncoderHeadGroups:
    """A Trainer optimizer factory: Trainer's optimizer, with its decay / no-decay groups each split in a head part
    and an encoder part (marked ENCODER_GROUP). Called by Trainer with the model as it will be trained (after an
    FSDP wrap, before DeepSpeed's), so the groups hold the very parameters the backend updates."""

    def __init__(self, optimizer_cls: type[torch.optim.Optimizer]) -> None:
        self.optimizer_cls = optimizer_cls

    def __call__(self, model: torch.nn.Module, weight_decay: float = 0.0, **kwargs) -> torch.optim.Optimizer:
        if any(getattr(parameter, "_is_flat_param", False) for parameter in model.parameters()):
            raise TransferKitError(
                "head_warmup_steps needs the encoder's own parameters, and FSDP with use_orig_params: false flattens "
                "them together with the head's. Set fsdp_use_orig_params: true, or head_warmup_steps: 0."
            )
        # Trainer's own rule (no decay on biases and norms); its method reads nothing from the Trainer instance.
        decay = set(Trainer.get_decay_parameter_names(None, model))
        held = held_parameters(model)
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                groups.setdefault((id(parameter) in held, name in decay), []).append(parameter)
        param_groups = [
            {"params": params, "weight_decay": weight_decay if decays else 0.0, ENCODER_GROUP: is_encoder}
            for (is_encoder, decays), params in sorted(groups.items())  # head groups first: Trainer logs group 0's lr
        ]
        return self.optimizer_cls(param_groups, **kwargs)


class HeadWarmupCallback(TrainerCallback):
    """Sets the encoder groups' learning rate to 0 before each optimizer step of the warm-up (the scheduler sets
    every group's rate after each step; from step `steps` on it is left alone), and clears their optimizer state
    before the first step after it."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def optimizer_cls_and_kwargs(self, args: TrainingArguments, model: torch.nn.Module) -> tuple[object, dict]:
        """For `Trainer(optimizer_cls_and_kwargs=...)`: the optimizer `args.optim` names, with the encoder's groups."""
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        if not isinstance(optimizer_cls, type) or {"params", "model", "optimizer_dict"} & set(kwargs):
            raise TransferKitError(
                f"head_warmup_steps needs an optimizer with parameter groups; optim: {args.optim} builds its own. "
                "Use optim: adamw_torch (or another torch optimizer), or head_warmup_steps: 0."
            )
        return functools.partial(EncoderHeadGroups, optimizer_cls), {**kwargs, "weight_decay": args.weight_decay}

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if state.max_steps and self.steps >= state.max_steps:
            logger.warning(
                "head_warmup_steps (%d) covers all %d training steps: only the head will be trained. Lower it or "
                "train for longer to finetune the whole model.",
                self.steps,
                state.max_steps,
            )
        if optimizer is not None and not any(group.get(ENCODER_GROUP) for group in optimizer.param_groups):
            raise TransferKitError(
                "head_warmup_steps: the optimizer has no encoder parameter group. Pass the callback's "
                "optimizer_cls_and_kwargs to the Trainer (see recipes/classify.py)."
            )

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None or state.global_step > self.steps:
            return
        head_rate = next(group["lr"] for group in optimizer.param_groups if not group.get(ENCODER_GROUP))
        for group in (group for group in optimizer.param_groups if group.get(ENCODER_GROUP)):
            if state.global_step < self.steps:
                group["lr"] = 0.0
                continue
            # The warm-up is over: the head's rate (a plateau scheduler would not set it again by itself), and no
            # optimizer state (DeepSpeed's groups hold flat partitions, whose state clears the same way).
            group["lr"] = head_rate
            for parameter in group["params"]:
                optimizer.state.pop(parameter, None)


def head_warmup(steps: int, model: torch.nn.Module) -> HeadWarmupCallback | None:
    """The warm-up callback for `steps` > 0 (None otherwise); checks now that the model has an encoder to hold."""
    if steps <= 0:
        return None
    encoder_of(model)
    return HeadWarmupCallback(steps)
