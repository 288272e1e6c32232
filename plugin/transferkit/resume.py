"""Where a run starts: from a checkpoint, afresh, or not at all because it already finished; and the marker a run
writes when it has finished.

`resume_from_checkpoint: auto` never deletes anything. What each setting does with what output_dir holds:

- `overwrite_output_dir: true`: start afresh; the earlier run is deleted only once the data, labels and model have
  passed their checks (bad input never costs it).
- `resume_from_checkpoint: auto` and a finished run (`run_finished.json`): say so and exit 0, checkpoints or not.
- `auto` and a complete checkpoint: resume from the newest one (weights, optimizer, scheduler, RNG, step).
- `auto` and a model-only checkpoint (`save_only_model`): resume the weights and the step with a warning; the
  optimizer restarts with empty moments and the learning-rate schedule continues from that step.
- `auto` and an unfinished run with no checkpoint: an error naming the files and the options.
- `auto` and nothing: start afresh.
- `resume_from_checkpoint: PATH`: resume from PATH.
- unset, and a finished run, a checkpoint or a run's files: an error naming what is there and the options; unset
  and nothing: start afresh.

Trainer 5.x writes straight into `checkpoint-N/` (weights, optimizer, RNG state, then `trainer_state.json`, no
temporary folder and rename), so a kill in the middle leaves a folder that transformers' `get_last_checkpoint` still
returns: `last_valid_checkpoint` checks the files instead.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import struct
import time
import warnings
import zipfile
from dataclasses import dataclass

from transformers import Trainer, TrainerCallback, TrainingArguments

from transferkit import __version__
from transferkit.distributed import deepspeed_request
from transferkit.errors import TransferKitError

logger = logging.getLogger(__name__)
RESUME_AUTO = ("auto", "true", "True", "1", "yes", "last")
FINISHED_MARKER = "run_finished.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = {"model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin"}
INDEX_FILES = {"model.safetensors.index.json", "pytorch_model.bin.index.json"}
OPTIMIZER_FILES = {"optimizer.pt", "optimizer.bin"}
RUN_FILES = WEIGHT_FILES | INDEX_FILES | {"trainer_state.json", "all_results.json", "train_results.json"}


class RunAlreadyFinished(SystemExit):
    """Raised when `resume_from_checkpoint: auto` finds a finished run: nothing to do, exit status 0."""


@dataclass(frozen=True)
class StartPoint:
    """How `train_and_save` starts: from `checkpoint` (None: afresh), deleting an earlier run first when
    `replace_earlier` (overwrite_output_dir), and whether the checkpoint lacks the optimizer state."""

    checkpoint: str | None = None
    replace_earlier: bool = False
    model_only: bool = False


# -- the finished-run marker ------------------------------------------------------------------------------------------
def mark_finished(output_dir: str, task: str) -> None:
    """Written by the main process as a recipe's last local step (after evaluation, predictions, the merge and the
    card): a run without it did not finish, whatever other files it left."""
    record = {"task": task, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "transferkit": __version__}
    path = os.path.join(output_dir, FINISHED_MARKER)
    with open(path + ".partial", "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    os.replace(path + ".partial", path)


def is_finished(output_dir: str) -> bool:
    return os.path.isfile(os.path.join(output_dir, FINISHED_MARKER))


# -- the start point --------------------------------------------------------------------------------------------------
def resolve_start(args: TrainingArguments, overwrite_output_dir: bool) -> StartPoint:
    """Decide where the run starts (the table in the module docstring), before anything is loaded."""
    requested, output_dir = args.resume_from_checkpoint, args.output_dir
    is_auto = requested in RESUME_AUTO
    if requested and not is_auto:
        if overwrite_output_dir:
            raise TransferKitError(
                f"resume_from_checkpoint {requested} and overwrite_output_dir exclude each other: keep one."
            )
        if not os.path.isdir(requested):
            raise TransferKitError(f"resume_from_checkpoint: no checkpoint folder at {requested}.")
        return _resume_from(requested, args)
    if overwrite_output_dir:
        return StartPoint(replace_earlier=_holds_a_run(output_dir))
    last = last_valid_checkpoint(output_dir, require_optimizer=False)
    if is_finished(output_dir) and is_auto:
        logger.warning(
            "%s already holds a finished run (%s): nothing to do. To train it further, set resume_from_checkpoint "
            "to one of its checkpoints; to start afresh, overwrite_output_dir: true.",
            output_dir,
            FINISHED_MARKER,
        )
        raise RunAlreadyFinished(0)
    if is_auto and last:
        return _resume_from(last, args)
    if is_finished(output_dir):
        what, options = "a finished run", "Set overwrite_output_dir: true to replace it"
    elif last:
        what = f"a checkpoint ({os.path.basename(last)})"
        options = "Set resume_from_checkpoint: auto to continue it, overwrite_output_dir: true to start afresh"
    elif _holds_a_run(output_dir):
        names = set(os.listdir(output_dir))
        found = sorted(RUN_FILES & names) + sorted(
            f"{name} (incomplete)" for name in names if CHECKPOINT_RE.match(name)
        )
        what = f"a run that did not finish ({', '.join(found)}; no {FINISHED_MARKER}) and no checkpoint to resume"
        options = "Set overwrite_output_dir: true to train afresh"
    else:
        if is_auto:
            logger.info("resume_from_checkpoint=%s: no checkpoint in %s, starting afresh.", requested, output_dir)
        return StartPoint()
    raise TransferKitError(f"output_dir {output_dir} already holds {what}. {options}, or choose another output_dir.")


def _resume_from(checkpoint: str, args: TrainingArguments) -> StartPoint:
    if has_optimizer_state(checkpoint):
        return StartPoint(checkpoint=checkpoint)
    if deepspeed_request(args):  # DeepSpeed resumes only from its own global_step folder
        raise TransferKitError(
            f"{checkpoint} holds only the model (save_only_model), which DeepSpeed cannot resume from. Set "
            "model_name_or_path to it and train afresh in a new output_dir, or resume from a full checkpoint."
        )
    logger.warning(
        "%s holds the model but no optimizer state (saved with save_only_model): resuming its weights and step; "
        "the optimizer starts again with empty moments, and the learning-rate schedule continues from that step.",
        checkpoint,
    )
    return StartPoint(checkpoint=checkpoint, model_only=True)


def _holds_a_run(output_dir: str) -> bool:
    """Whether output_dir holds anything a run leaves: the marker, a checkpoint folder, weights or results."""
    if not os.path.isdir(output_dir):
        return False
    names = set(os.listdir(output_dir))
    return bool(names & (RUN_FILES | {FINISHED_MARKER})) or any(CHECKPOINT_RE.match(name) for name in names)


def clear_earlier_run(trainer: Trainer) -> None:
    """Delete the earlier run that overwrite_output_dir replaces: only now, after the data, labels and model were
    checked, so that bad input never costs the earlier run (and a stale checkpoint never outlives it)."""
    if trainer.is_world_process_zero() and os.path.isdir(trainer.args.output_dir):
        logger.info("overwrite_output_dir: deleting the earlier run in %s.", trainer.args.output_dir)
        shutil.rmtree(trainer.args.output_dir)
    trainer.accelerator.wait_for_everyone()


def training_done_at(checkpoint: str | None, args: TrainingArguments) -> bool:
    """Whether `checkpoint` already holds every step of `max_steps`: a kill after its last save. Trainer resuming it
    would skip the epoch's done batches, take one more optimizer step and only then check max_steps (transformers
    5.x `_run_epoch`), so such a checkpoint is loaded instead of trained (`load_finished_checkpoint`)."""
    if checkpoint is None or args.max_steps <= 0:
        return False
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as handle:
        return json.load(handle).get("global_step", 0) >= args.max_steps


def load_finished_checkpoint(trainer: Trainer, checkpoint: str) -> bool:
    """Load a checkpoint whose training is complete (weights and state) without training; False under DeepSpeed and
    FSDP, whose engine or wrapped model only exists inside `Trainer.train` (it then resumes there, one step too many,
    with a warning)."""
    from transformers import TrainerState

    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        logger.warning("%s is at max_steps; under DeepSpeed or FSDP resuming it trains one more step.", checkpoint)
        return False
    logger.info("%s holds all max_steps=%d steps: loading it, not training again.", checkpoint, trainer.args.max_steps)
    trainer._load_from_checkpoint(checkpoint)  # weights (full or adapter) as Trainer.train loads them
    trainer.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
    if trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint:
        trainer._load_best_model()  # what Trainer.train ends with: the best checkpoint, not the last
    logger.warning("The train_* figures of the interrupted training are not in all_results.json (it was killed).")
    return True


class ScheduleFastForward(TrainerCallback):
    """After resuming a model-only checkpoint, Trainer finds no scheduler state and would start the learning-rate
    schedule (warm-up included) again at step 0: step it to the resumed global step instead."""

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        if (
            lr_scheduler is None
            or not state.global_step
            or "metrics" in inspect.signature(lr_scheduler.step).parameters
        ):
            return  # a plateau scheduler follows the metrics, not the step count
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": on purpose here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(state.global_step):
                lr_scheduler.step()


# -- checkpoint validation --------------------------------------------------------------------------------------------
def _file_problem(path: str) -> str | None:
    """Why a checkpoint file looks truncated, or None. Cheap: reads only headers and the zip directory."""
    name, size = os.path.basename(path), os.path.getsize(path)
    if size == 0:
        return f"{name} is empty"
    try:
        if name.endswith(".safetensors"):
            with open(path, "rb") as handle:
                (header_size,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(header_size))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            return f"{name} is truncated" if size < 8 + header_size + end else None
        if name.endswith((".pt", ".pth", ".bin")):
            with open(path, "rb") as handle:
                zipped = handle.read(2) == b"PK"  # torch.save's zip format; legacy pickles are not checked
            return f"{name} is truncated" if zipped and not zipfile.is_zipfile(path) else None
        if name.endswith(".json"):
            with open(path, encoding="utf-8") as handle:
                json.load(handle)
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error):
        return f"{name} is unreadable"
    return None


def _is_deepspeed_checkpoint(names: set[str], path: str) -> bool:
    return any(name.startswith("global_step") and os.path.isdir(os.path.join(path, name)) for name in names)


def has_optimizer_state(path: str) -> bool:
    """Whether a checkpoint folder holds the optimizer's state (DeepSpeed keeps it in its global_step folder)."""
    names = set(os.listdir(path))
    return bool(names & OPTIMIZER_FILES) or "optimizer_0" in names or _is_deepspeed_checkpoint(names, path)


def checkpoint_problem(path: str, require_optimizer: bool = True) -> str | None:
    """What makes `path` unusable for resuming (a missing or truncated file), or None when it looks complete."""
    names = set(os.listdir(path))
    if "trainer_state.json" not in names:
        return "no trainer_state.json (Trainer writes it last)"
    sharded = _is_deepspeed_checkpoint(names, path) or any(name.startswith("pytorch_model_fsdp") for name in names)
    if not (sharded or names & (WEIGHT_FILES | INDEX_FILES)):
        return "no model weights"
    if require_optimizer and not has_optimizer_state(path):
        return "no optimizer state (optimizer.pt)"
    files = [os.path.join(root, name) for root, _, found in os.walk(path) for name in sorted(found)]
    return next(filter(None, map(_file_problem, files)), None)


def last_valid_checkpoint(output_dir: str, require_optimizer: bool = True) -> str | None:
    """The newest complete `checkpoint-N` in output_dir (None if none); newer incomplete ones are skipped with a
    warning. Use instead of transformers' `get_last_checkpoint`, which returns a folder whose save a kill cut short.
    `require_optimizer=False` also accepts model-only checkpoints (save_only_model)."""
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    steps = [(int(m.group(1)), name) for name in names if (m := CHECKPOINT_RE.match(name))]
    for _, name in sorted(steps, reverse=True):
        path = os.path.join(output_dir, name)
        try:
            problem = checkpoint_problem(path, require_optimizer) if os.path.isdir(path) else "not a folder"
        except OSError as err:  # deleted meanwhile, e.g. by rank 0 under overwrite_output_dir
            problem = str(err)
        if problem is None:
            return path
        logger.warning("Skipping incomplete checkpoint %s: %s (a save cut short by a kill?).", path, problem)
    return None
