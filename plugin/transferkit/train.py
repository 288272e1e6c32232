"""A run's steps around the Trainer: the checks before anything loads (`start_run`), training and saving
(`train_and_save`), evaluation, and the settings and callbacks that depend on the data (no validation split,
early stopping). Settings decided after parsing make a new TrainingArguments (`with_arguments`), so its checks run.

The Trainer classes themselves are in trainers.py; everything Trainer already does well (the loop, Accelerate,
checkpoints, logging) stays its own.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import IntervalStrategy

from transferkit.arguments import RunArguments
from transferkit.distributed import check_requested_backend
from transferkit.errors import TransferKitError, as_user_error
from transferkit.lora import check_quantization_runs
from transferkit.publish import PushTarget, checkpoint_push_callbacks, prepare_push
from transferkit.reliability import check_output_dir_writable, exit_if_preempted, install_preemption_handler
from transferkit.resume import (
    ScheduleFastForward,
    StartPoint,
    clear_earlier_run,
    load_finished_checkpoint,
    resolve_start,
    training_done_at,
)

logger = logging.getLogger(__name__)


def train_and_save(
    trainer: Trainer, start: StartPoint, push: PushTarget | None = None, preemption_check_steps: int = 1
) -> dict[str, float]:
    """Train from `start` (deleting the run that overwrite_output_dir replaces first), pushing checkpoints as
    `hub_strategy` asks, with SIGTERM saving a checkpoint (ranks agree every `preemption_check_steps`) and exiting
    0; then save the final model and tokenizer and record the metrics."""
    for callback in checkpoint_push_callbacks(push):
        trainer.add_callback(callback)
    install_preemption_handler(trainer, preemption_check_steps)  # SIGTERM: checkpoint, then stop
    if start.replace_earlier:
        clear_earlier_run(trainer)
    if start.model_only:
        trainer.add_callback(ScheduleFastForward())
    if training_done_at(start.checkpoint, trainer.args) and load_finished_checkpoint(trainer, start.checkpoint):
        metrics = {}  # killed after its last save: nothing left to train, the checkpoint is the model
    else:
        metrics = dict(trainer.train(resume_from_checkpoint=start.checkpoint).metrics)
    exit_if_preempted(trainer)  # after SIGTERM: log where to resume from, exit 0
    trainer.save_model()
    if hasattr(trainer.train_dataset, "__len__"):  # a streamed dataset has no length
        metrics["train_samples"] = len(trainer.train_dataset)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    return metrics


def setup_logging(training_args: TrainingArguments) -> None:
    """One log format for TransferKit, transformers and datasets; replicas log warnings only."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
        force=True,
    )
    level = training_args.get_process_log_level()
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(min(level, logging.WARNING))
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def with_arguments(args: TrainingArguments, why: str, **changes) -> TrainingArguments:
    """A copy of `args` with `changes`, built anew so that TrainingArguments' own checks judge the result (setting a
    field on the object would skip them); a check that fails is one clear error that starts with `why`."""
    with as_user_error(why):
        return dataclasses.replace(args, **changes)


def without_evaluation_if_no_split(args: TrainingArguments, has_validation: bool) -> TrainingArguments:
    """No validation split (validation_split_percentage 0, no file): train without evaluating, and say so."""
    if has_validation or args.eval_strategy == IntervalStrategy.NO:
        return args
    logger.warning(
        "No validation split: evaluation during training is off (eval_strategy was %s).", args.eval_strategy.value
    )
    return with_arguments(args, "No validation split, so evaluation is off", eval_strategy=IntervalStrategy.NO)


def splits_off(args: TrainingArguments) -> tuple[str, ...]:
    """The splits of a phase that is off (do_eval, do_predict): not read at all, as in the example scripts."""
    return tuple(name for name, on in (("validation", args.do_eval), ("test", args.do_predict)) if not on)


def global_batch_size(args: TrainingArguments) -> int:
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)


def log_run_plan(splits: dict, args: TrainingArguments) -> None:
    sizes = ", ".join(f"{name} {len(split)}" for name, split in splits.items() if hasattr(split, "__len__"))
    logger.info(
        "Examples: %s. Global batch %d = %d per device x %d accumulation steps x %d processes.",
        sizes,
        global_batch_size(args),
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
        max(1, args.world_size),
    )


def runtime_defaults() -> dict[str, object]:
    """TrainingArguments defaults that depend on the machine, applied before the user's config.

    Without a GPU, pinned memory only warns. Under a multi-process launch without GPUs (torchrun, or accelerate's
    MULTI_GPU config, on CPUs: WORLD_SIZE > 1) each process would train on its own, unsynchronised, unless
    TrainingArguments says use_cpu: with it, Accelerate joins the processes in one gloo process group (DDP).
    """

    defaults: dict[str, object] = {"dataloader_pin_memory": torch.cuda.is_available()}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        defaults["use_cpu"] = True
    return defaults


def early_stopping(
    args: TrainingArguments, cls_args, problem_type: str
) -> tuple[TrainingArguments, list[TrainerCallback]]:
    """The arguments and callbacks for `early_stopping_patience`: the best model kept (`load_best_model_at_end`) and
    a metric to compare, the problem type's when the user left `metric_for_best_model` unset."""
    from transformers import EarlyStoppingCallback

    from transferkit.metrics import BEST_MODEL_METRIC

    if cls_args.early_stopping_patience is None:
        return args, []
    if args.eval_strategy == IntervalStrategy.NO:
        raise TransferKitError("early_stopping_patience needs evaluations: set eval_strategy to epoch or steps.")
    changes: dict[str, object] = {"load_best_model_at_end": True}
    if args.metric_for_best_model is None:
        changes["metric_for_best_model"], changes["greater_is_better"] = BEST_MODEL_METRIC[problem_type]
    stopping = EarlyStoppingCallback(cls_args.early_stopping_patience, cls_args.early_stopping_threshold)
    return with_arguments(args, "early_stopping_patience keeps the best model", **changes), [stopping]


def evaluate_and_save(trainer: Trainer) -> dict[str, float]:
    """Final evaluation of the (best) model on the validation split, logged and written to eval_results.json."""
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return metrics


def start_run(
    training_args: TrainingArguments, run_args: RunArguments, recipe: str, lora_args=None, preprocess_only: bool = False
) -> tuple[TrainingArguments, StartPoint, PushTarget | None]:
    """What every recipe checks before loading data or a model; returns (the training arguments to use, where
    training starts, push target).

    Logging, the distributed backend actually asked for, a writable output_dir with room, the start point (or a
    refusal to touch an earlier run; a finished run with resume_from_checkpoint: auto exits 0 here), and Hub write
    access when pushing: TransferKit pushes itself, so the arguments it returns have Trainer's push off and no token
    (Trainer pickles them into training_args.bin). `preprocess_only` (one process filling the datasets cache before
    the launch) needs logging alone: no backend, output_dir, start point or Hub is involved.
    """
    setup_logging(training_args)
    if preprocess_only:
        return training_args, StartPoint(), None
    check_quantization_runs(lora_args)
    check_requested_backend(training_args, recipe=recipe)
    check_output_dir_writable(training_args.output_dir, run_args.min_free_disk_gb)
    start = resolve_start(training_args, run_args.overwrite_output_dir)
    push = prepare_push(training_args, lora_args)
    if push is not None:
        training_args = with_arguments(training_args, "push_to_hub", push_to_hub=False, hub_token=None)
    return training_args, start, push
