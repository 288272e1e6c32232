"""Where a run is published: access checked before training, checkpoints pushed while it trains (per
`hub_strategy`), then the model card and one resilient push of output_dir, from the main process.

Trainer's own `push_to_hub` creates the repo in `Trainer.__init__`, pushes again on every `save_model` call, writes
its own card over ours and pickles `hub_token` into training_args.bin. TransferKit checks access before training
instead, turns Trainer's push off, takes the token out of the training arguments (so no file in output_dir holds
it), pushes checkpoints itself from a callback, and pushes the finished run with backoff. A failed final push keeps
everything local and prints the `transferkit push` command that finishes the job. A LoRA run with `merge_adapter`
publishes the adapter (with its head) to `hub_model_id` and the merged model to a second repo, `hub_merged_model_id`
(default `<hub_model_id>-merged`), each with its own card.
"""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import Future
from dataclasses import dataclass, field

from huggingface_hub import HfApi
from peft import PeftModel
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from transferkit.arguments import DataArguments, ModelArguments
from transferkit.errors import TransferKitError
from transferkit.hub import (
    HUB_STRATEGIES,
    MERGED_DIR,
    PushError,
    check_push_access,
    first_line,
    push_checkpoint,
    push_output_dir,
)
from transferkit.model_card import write_model_card
from transferkit.precision import record_precision
from transferkit.reports import output_path, plot_training_curves
from transferkit.resume import mark_finished

logger = logging.getLogger(__name__)
CARD_HYPERPARAMETERS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "warmup_steps",
    "weight_decay",
    "lr_scheduler_type",
    "seed",
    "optim",
)
RESULT_FILES = ("all_results.json", "train_results.json", "eval_results.json", "test_results.json")
LABEL_KEYS = ("num_labels", "id2label", "label2id", "problem_type")


@dataclass
class PushTarget:
    """Where and how a run is published; the token lives here (in memory), not in the training arguments."""

    repo_id: str
    merged_repo_id: str | None = None
    private: bool = False
    revision: str | None = None
    strategy: str = "end"
    always_push: bool = False
    token: str | None = field(default=None, repr=False)


def prepare_push(args: TrainingArguments, lora_args=None) -> PushTarget | None:
    """The push target (repos checked now, before any training) or None. The caller then turns Trainer's own push
    off and drops `hub_token` from the training arguments (train.start_run): TransferKit pushes, and Trainer pickles
    its arguments into output_dir.

    `lora_args` (a LoraArguments) decides the merged model's repo: with `merge_adapter`, `hub_merged_model_id` or
    `<hub_model_id>-merged`.
    """
    merged_option = getattr(lora_args, "hub_merged_model_id", None)
    if not args.push_to_hub:
        if merged_option:
            raise TransferKitError("hub_merged_model_id is only used when pushing: set push_to_hub: true.")
        return None
    strategy = getattr(args.hub_strategy, "value", args.hub_strategy)
    if strategy not in HUB_STRATEGIES:  # TrainingArguments checks it too; a newer transformers may add one
        raise TransferKitError(f"hub_strategy must be one of {', '.join(HUB_STRATEGIES)}, got {strategy!r}.")
    repo_id = args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir))
    merged_repo_id = None
    if getattr(lora_args, "merge_adapter", False):
        merged_repo_id = merged_option or f"{repo_id}-merged"
    elif merged_option:
        raise TransferKitError("hub_merged_model_id names the merged model's repo: set merge_adapter: true too.")
    if merged_repo_id == repo_id:
        raise TransferKitError(f"hub_merged_model_id must differ from hub_model_id ({repo_id}), the adapter's repo.")
    target = PushTarget(
        repo_id=repo_id,
        merged_repo_id=merged_repo_id,
        private=bool(args.hub_private_repo),
        revision=args.hub_revision,
        strategy=strategy,
        always_push=bool(args.hub_always_push),
        token=args.hub_token,
    )
    if args.process_index == 0:
        for repo in filter(None, (repo_id, merged_repo_id)):
            check_push_access(repo, token=target.token, private=target.private, revision=target.revision)
    return target


class HubCheckpointPush(TrainerCallback):
    """Push each checkpoint Trainer saves (main process, background thread) for hub_strategy other than `end`.

    Like Trainer's own pushes: while an upload still runs, the next checkpoint is skipped, unless
    `hub_always_push`, which waits for it before the next save (also so that checkpoint rotation cannot delete a
    folder being uploaded). A failed upload is a warning, never the end of the run: the final push retries.
    """

    def __init__(self, target: PushTarget) -> None:
        self.target = target
        self.api = HfApi(token=target.token)  # its run_as_future queue: one upload at a time, in order
        self.pending: Future | None = None
        self.pushed: list[str] = []

    def _busy(self) -> bool:
        return self.pending is not None and not self.pending.done()

    def _wait_before_save(self, args, state, control, **kwargs) -> None:
        if control.should_save and self.target.always_push and self._busy():
            self.pending.result()

    on_step_end = _wait_before_save
    on_epoch_end = _wait_before_save

    def on_save(self, args, state, control, **kwargs) -> None:
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not state.is_world_process_zero or not os.path.isdir(folder):
            return
        if self._busy():
            logger.info("Previous checkpoint upload still running: %s not pushed (hub_always_push waits).", folder)
            return
        self.pending = self.api.run_as_future(self._push, folder)

    def _push(self, folder: str) -> None:
        target = self.target
        try:
            url = push_checkpoint(folder, target.repo_id, strategy=target.strategy, token=target.token,
                                  private=target.private, revision=target.revision)  # fmt: skip
        except Exception as err:  # a Hub hiccup must not end hours of training; the final push retries
            reason = first_line(err, target.token)
            logger.warning("Pushing %s to %s failed (%s); training goes on.", folder, target.repo_id, reason)
            return
        self.pushed.append(os.path.basename(folder))
        logger.info("Pushed %s to %s", folder, url)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if self.pending is not None:
            self.pending.result()  # an upload in flight finishes before the final push starts


def checkpoint_push_callbacks(push: PushTarget | None) -> list[TrainerCallback]:
    """The callback that pushes checkpoints during training, when hub_strategy asks for it."""
    return [HubCheckpointPush(push)] if push is not None and push.strategy != "end" else []


def finish_run(
    trainer: Trainer,
    *,
    push: PushTarget | None,
    task: str,
    model_args: ModelArguments,
    data_args: DataArguments,
    metrics: dict[str, float],
    extra_hyperparameters: dict | None = None,
) -> None:
    """Plot the training curves, write the model card(s) (which embed the plots), mark the run finished and, if
    asked, push.

    Main process only, after every rank has finished; an adapter run (a PeftModel) gets a peft card, and its
    merged model (output_dir/merged, when saved) a transformers card of its own and its own repo.
    """
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return
    args = trainer.args
    plot_training_curves(output_path(args.output_dir, "training_curves.png"), trainer.state.log_history)
    model = trainer.accelerator.unwrap_model(trainer.model)
    is_adapter = isinstance(model, PeftModel)
    hyperparameters = {name: getattr(args, name) for name in CARD_HYPERPARAMETERS}
    hyperparameters["precision"] = record_precision(trainer)  # Accelerate's, not the flags; into all_results.json too
    hyperparameters.update({"max_seq_length": data_args.max_seq_length, **(extra_hyperparameters or {})})
    datasets = (
        [data_args.dataset_name]
        if data_args.dataset_name
        else [path for path in (data_args.train_file, data_args.validation_file, data_args.test_file) if path]
    )
    lineage = getattr(model.config, "transferkit_lineage", None) or [model_args.model_name_or_path]
    labels = {key: getattr(model.config, key, None) for key in LABEL_KEYS} if task == "text-classification" else {}
    card = dict(base_model=lineage[0], task=task, datasets=datasets, metrics=metrics, hyperparameters=hyperparameters)
    repo_id = push.repo_id if push else None
    merged_dir = os.path.join(args.output_dir, MERGED_DIR)
    has_merged = is_adapter and os.path.isdir(merged_dir)
    summary = None
    if has_merged:
        merged_repo_id = push.merged_repo_id if push else None
        write_merged_card(merged_dir, merged_repo_id, adapter=repo_id or args.output_dir, lineage=lineage, card=card)
        where = f"`{merged_repo_id}`" if merged_repo_id else f"`{MERGED_DIR}/` next to it"
        summary = f"A {task} LoRA adapter adapted from `{lineage[0]}` with TransferKit; merged into its base: {where}."
    write_model_card(args.output_dir, repo_id=repo_id, lineage=lineage, summary=summary, label_config=labels or None,
                     library_name="peft" if is_adapter else "transformers", **card)  # fmt: skip
    mark_finished(args.output_dir, task)  # the run is complete locally; a failed push below keeps it so
    if push is not None:
        publish(args.output_dir, push, merged=has_merged and push.merged_repo_id is not None)


def write_merged_card(merged_dir: str, repo_id: str | None, *, adapter: str, lineage: list[str], card: dict) -> None:
    """The merged model's own card (a plain transformers model whose lineage ends with the adapter it came from), and
    the run's metric files next to it: the merged repo is read on its own."""
    for name in RESULT_FILES:
        source = os.path.join(os.path.dirname(merged_dir), name)
        if os.path.isfile(source):
            shutil.copy(source, os.path.join(merged_dir, name))
    summary = f"The LoRA adapter `{adapter}` merged into its base model: it loads with transformers alone, no peft."
    write_model_card(merged_dir, repo_id=repo_id, lineage=[*lineage, adapter], library_name="transformers",
                     summary=summary, tags=["merged-lora"], **card)  # fmt: skip


def publish(output_dir: str, push: PushTarget, merged: bool) -> None:
    """Push output_dir (and output_dir/merged to its own repo); one PushError naming every command still to run."""
    jobs = [(output_dir, push.repo_id)] + ([(os.path.join(output_dir, MERGED_DIR), push.merged_repo_id)] * merged)
    failures = []
    for folder, repo in jobs:
        try:
            url = push_output_dir(folder, repo, token=push.token, private=push.private, revision=push.revision)
            logger.info("Pushed %s to %s", folder, url)
        except PushError as err:
            failures.append(str(err))
    if failures:
        raise PushError(" | ".join(failures))
