"""Where a finished run is described and pushed: the model card, then one push to the Hub, from the main process.

Trainer's own `push_to_hub` creates the repo in `Trainer.__init__` and pushes without retries; TransferKit checks
access before training instead, turns Trainer's push off, and pushes once at the end with backoff. A failed push
keeps everything local and prints the `transferkit push` command that finishes the job.
"""

from __future__ import annotations

import logging
import os

from peft import PeftModel
from transformers import Trainer, TrainingArguments

from transferkit.arguments import DataArguments, ModelArguments
from transferkit.hub import check_push_access, push_output_dir, write_model_card
from transferkit.reports import output_path, plot_training_curves

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
    "bf16",
    "optim",
)


def prepare_push(args: TrainingArguments) -> str | None:
    """The repo to push to (checked now, before any training), or None; Trainer's own push is turned off."""
    if not args.push_to_hub:
        return None
    repo_id = args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir))
    if args.process_index == 0:
        check_push_access(
            repo_id, token=args.hub_token, private=bool(args.hub_private_repo), revision=args.hub_revision
        )
    args.push_to_hub = False
    return repo_id


def finish_run(
    trainer: Trainer,
    *,
    repo_id: str | None,
    task: str,
    model_args: ModelArguments,
    data_args: DataArguments,
    metrics: dict[str, float],
    extra_hyperparameters: dict | None = None,
) -> None:
    """Plot the training curves, write the model card (which embeds the plots) and, if asked, push output_dir.

    Main process only, after every rank has finished; an adapter run (a PeftModel) gets a peft card.
    """
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return
    args = trainer.args
    plot_training_curves(output_path(args.output_dir, "training_curves.png"), trainer.state.log_history)
    library_name = "peft" if isinstance(trainer.model, PeftModel) else "transformers"
    hyperparameters = {name: getattr(args, name) for name in CARD_HYPERPARAMETERS}
    hyperparameters.update({"max_seq_length": data_args.max_seq_length, **(extra_hyperparameters or {})})
    datasets = (
        [data_args.dataset_name]
        if data_args.dataset_name
        else [path for path in (data_args.train_file, data_args.validation_file, data_args.test_file) if path]
    )
    lineage = getattr(trainer.model.config, "transferkit_lineage", None) or [model_args.model_name_or_path]
    base_model = lineage[0]
    write_model_card(
        args.output_dir,
        repo_id=repo_id,
        base_model=base_model,
        task=task,
        datasets=datasets,
        metrics=metrics,
        hyperparameters=hyperparameters,
        lineage=lineage,
        library_name=library_name,
    )
    if repo_id:
        url = push_output_dir(
            args.output_dir,
            repo_id,
            token=args.hub_token,
            private=bool(args.hub_private_repo),
            revision=args.hub_revision,
        )
        logger.info("Pushed %s to %s", args.output_dir, url)
