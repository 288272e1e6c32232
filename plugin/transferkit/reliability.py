"""Surviving preemption: a clean stop on SIGTERM; early disk checks. (Which checkpoint a run resumes from is in
resume.py; the dry run is dry_run.py.)"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import tempfile
import threading

from accelerate import Accelerator
from transformers import Trainer, TrainerCallback

from transferkit.errors import TransferKitError

logger = logging.getLogger(__name__)


class TrainingPreempted(SystemExit):
    """Raised after a preempted run saved its checkpoint: exit status 0, no traceback, nothing after training runs."""


class PreemptionCallback(TrainerCallback):
    """On SIGTERM (preemption, torchrun/SLURM shutdown) save a checkpoint and stop. The handler only sets a flag.

    One process stops at the next step end. Several agree on the step through accelerate's trigger (`set_trigger` /
    `check_trigger`, a max over the ranks): an all-reduce and a `.item()`, which on a GPU makes the host wait for the
    device, so it runs every `check_every` optimizer steps only; the grace period before SIGKILL must cover that many
    steps and one save. The handler is set for `train()` only."""

    def __init__(
        self, accelerator: Accelerator, signals: tuple[int, ...] = (signal.SIGTERM,), check_every: int = 1
    ) -> None:
        self.accelerator, self.signals, self.check_every = accelerator, signals, check_every
        self.requested, self._previous, self.stopped_at, self.checkpoint = False, {}, None, None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.stopped_at = self.checkpoint = None
        if not self._previous and threading.current_thread() is threading.main_thread():  # else signal() raises
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.signals}
        loader = getattr(train_dataloader, "base_dataloader", train_dataloader)  # under accelerate's wrapper
        if getattr(loader, "num_workers", 0):  # workers start at the first iter(), after this
            loader.worker_init_fn = functools.partial(_ignore_in_worker, self.signals, loader.worker_init_fn)

    def _stop_now(self, step: int) -> bool:
        if self.accelerator.num_processes == 1:
            return self.requested
        if self.requested:
            self.accelerator.set_trigger()
        return step % self.check_every == 0 and self.accelerator.check_trigger()

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_at is None and self._stop_now(state.global_step):
            self.stopped_at = state.global_step
            self.checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            control.should_save = control.should_training_stop = control.should_log = True
            control.should_evaluate = False  # the grace period before SIGKILL is short: save first, evaluate later
            logger.warning("Termination signal: saving a checkpoint at step %d and stopping.", state.global_step)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped_at is not None:  # no second save or evaluation for an epoch cut short by preemption
            control.should_save = control.should_evaluate = False

    def on_train_end(self, args, state, control, **kwargs):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


def _ignore_in_worker(signals: tuple[int, ...], init_fn, worker_id: int) -> None:
    """DataLoader workers ignore the signal (SLURM signals every process; a dead worker crashes the main one)."""
    for signum in signals:
        signal.signal(signum, signal.SIG_IGN)
    if init_fn is not None:
        init_fn(worker_id)


def install_preemption_handler(trainer: Trainer, check_every: int = 1) -> PreemptionCallback:
    """Add a PreemptionCallback to `trainer`, once (later calls return it); its handler is active during `train()`."""
    found = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, PreemptionCallback)]
    if not found:
        found.append(PreemptionCallback(trainer.accelerator, check_every=check_every))
        trainer.add_callback(found[0])
    return found[0]


def exit_if_preempted(trainer: Trainer) -> None:
    """After `trainer.train()`: if SIGTERM stopped it, log where the checkpoint is and raise TrainingPreempted, so
    nothing after training (final save, evaluation, card, push) runs and output_dir never looks like a finished run."""
    cb = install_preemption_handler(trainer)
    if cb.stopped_at is None:
        return
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        logger.warning("preempted: checkpoint saved at %s, rerun with resume_from_checkpoint: auto", cb.checkpoint)
    raise TrainingPreempted(0)


def nearest_folder_above(path: str) -> str:
    """The nearest existing folder that holds `path` (or would, once the folders between are made)."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    return folder


def check_output_dir_writable(output_dir: str, min_free_gb: float = 1.0) -> None:
    """Fail early, naming the path and the fix, if output_dir can't be created or written or its disk is full."""
    existing = os.path.abspath(output_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    problem = None if os.path.isdir(existing) else f"{existing} is a file, not a folder"
    try:  # a temporary folder, removed at once: the check leaves nothing behind
        if problem is None:
            os.rmdir(tempfile.mkdtemp(prefix=".transferkit-write-test-", dir=existing))
    except OSError as err:
        problem = f"{existing} is not writable ({err.strerror})"
    if problem:
        raise TransferKitError(f"output_dir {output_dir} cannot be written: {problem}. Fix it or choose another one.")
    free_gb = shutil.disk_usage(existing).free / 2**30
    if free_gb < min_free_gb:
        raise TransferKitError(
            f"output_dir {output_dir}: only {free_gb:.2f} GiB free on its disk, below the {min_free_gb:g} GiB needed "
            "for checkpoints (min_free_disk_gb). Free some space or choose an output_dir on another disk."
        )
