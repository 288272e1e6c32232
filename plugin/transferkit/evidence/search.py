"""Hyperparameter search for the classify recipe: Optuna trials through transformers' `Trainer.hyperparameter_search`
on the recipe's own Trainer, data and metrics, judged on the validation split; then the best config, written as a
YAML that runs as it is, retrained by the recipe (on each seed it asks for) and tested once. The options: the
`hp_search` mapping of transferkit.evidence.search_space.

Each trial builds the classifier as the recipe does (`model_init`), trains with the config's other settings, and
evaluates on validation only; it keeps no checkpoints, except those `load_best_model_at_end` needs while it runs.
Optuna's TPE sampler picks the values, and its median pruner stops a trial whose evaluations trail the others'.
In output_dir: hp_search/trials.csv (number, state, each value, the metric, seconds), hp_search/best.yaml (the
user's options, file and command line, with the best values and without hp_search), then the retrained run, whose
model alone reads the test split and is saved and pushed.

Left to the caller by transformers, done here: a trial's value is the metric of the model it keeps (its best
evaluation under early stopping, not its last: huggingface/transformers#25247); the head warm-up's optimizer groups
are made for each trial's learning rate and weight decay (a Trainer's `optimizer_cls_and_kwargs` is fixed when it is
made); a warm-up ratio survives the cast `hyperparameter_search` applies to each value (to the old value's type: an
int 0 turns 0.1 into 0). Early stopping's patience counter outlives a trial, but resets at its first evaluation.

Under `accelerate launch` (DDP), transformers samples each trial on rank 0 and broadcasts its values to the other
ranks, which train with them; pruning is off there (a pruned trial would stop rank 0 alone). DeepSpeed and FSDP are
refused: transformers rebuilds a DeepSpeed engine per trial only from `args.deepspeed`, which accelerate configs
leave unset, and FSDP trials cannot be tried on a CPU. Search in one process, then launch best.yaml.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import enum
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml
from accelerate import PartialState
from transformers import EvalPrediction, Trainer, TrainerCallback, TrainingArguments

from transferkit.arguments import ClassificationArguments
from transferkit.errors import TransferKitError
from transferkit.evidence.search_space import NOT_TRAINING_ARGUMENTS, SearchPlan, eval_key
from transferkit.head_warmup import HeadWarmupCallback, head_warmup
from transferkit.metrics import BEST_MODEL_METRIC
from transferkit.resume import RESUME_AUTO, StartPoint, clear_earlier_run
from transferkit.train import with_arguments

logger = logging.getLogger(__name__)
SEARCH_DIR = "hp_search"
TRIALS_FILE = "trials.csv"
BEST_CONFIG = "best.yaml"
STUDY_NAME = "transferkit-hp-search"
LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse", "error", "perplexity")  # a metric named so is minimized by default
SEED_LOOP = ("seeds", "num_seeds")


def without_seed_loop(cls_args: ClassificationArguments) -> ClassificationArguments:
    """The options the search phase runs with: the trials train with `seed` alone, once, while `seeds` /
    `num_seeds` stay in best.yaml for the retrain (one search, then the best config on every seed)."""
    loop = {name: None for name in SEED_LOOP if getattr(cls_args, name, None)}
    return dataclasses.replace(cls_args, **loop) if loop else cls_args


# -- the trials -------------------------------------------------------------------------------------------------------
@dataclass
class ClassifierInit:
    """Builds the classifier as recipes/classify.py does, with the same functions (the checkpoint's weights, a new
    head, the pad token, LoRA when use_peft); Trainer seeds (`seed`) before each call, as the recipe does."""

    model_args: Any
    spec: Any
    lora_args: Any

    def __call__(self, args: TrainingArguments, tokenizer: Any) -> Any:
        from transferkit.lora import apply_lora, quantization_kwargs
        from transferkit.models import ensure_pad_token, load_classifier

        model = load_classifier(self.model_args, self.spec, **quantization_kwargs(self.lora_args, args))
        ensure_pad_token(tokenizer, model)
        if self.lora_args.use_peft:
            model = apply_lora(model, self.lora_args, "classification", revision=self.model_args.model_revision)
        return model


class TrialModels:
    """Trainer's `model_init` for the trials: each trial starts as a run of the recipe does, with a new classifier
    and the head warm-up the trial asks for: its callback, and optimizer groups made with the trial's learning rate
    and weight decay (the recipe's were made with the config's)."""

    def __init__(self, trainer: Trainer, plan: SearchPlan, build: ClassifierInit) -> None:
        self.trainer, self.plan, self.build = trainer, plan, build
        recipe_warmup = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, HeadWarmupCallback)]
        self.head_warmup_steps = recipe_warmup[0].steps if recipe_warmup else 0

    def __call__(self, trial: Any) -> Any:
        params = self.plan.suggest(trial)
        trainer = self.trainer
        model = self.build(trainer.args, trainer.processing_class)
        for callback in [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, HeadWarmupCallback)]:
            trainer.remove_callback(callback)
        warmup = head_warmup(params.get("head_warmup_steps", self.head_warmup_steps), model)
        trainer.optimizer_cls_and_kwargs = None  # Trainer's optimizer, from the trial's args
        if warmup is not None:
            trainer.add_callback(warmup)
            settings = {name: value for name, value in params.items() if name not in NOT_TRAINING_ARGUMENTS}
            args = with_arguments(trainer.args, "hp_search trial", **settings)
            trainer.optimizer_cls_and_kwargs = warmup.optimizer_cls_and_kwargs(args, model)
        return model


class TrialObjective(TrainerCallback):
    """`compute_objective` for the search: the metric of the evaluation whose model the trial keeps: with
    `load_best_model_at_end`, the best by metric_for_best_model (as Trainer picks it); otherwise the latest.
    Transformers returns the latest (huggingface/transformers#25247), which under early stopping is a worse model
    than the one the run keeps."""

    def __init__(self, metric: str, args: TrainingArguments) -> None:
        self.metric = metric
        self.best_by = eval_key(args.metric_for_best_model) if args.load_best_model_at_end else None
        self.greater_is_better = args.greater_is_better
        self.kept: dict[str, float] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.kept = None

    def __call__(self, metrics: dict[str, float]) -> float:
        if self.metric not in metrics:
            raise TransferKitError(
                f"hp_search.metric {self.metric} is not among the validation metrics ({', '.join(sorted(metrics))})."
            )
        if self.kept is None or self.best_by is None or self._better(metrics[self.best_by], self.kept[self.best_by]):
            self.kept = dict(metrics)
        return float(self.kept[self.metric])

    def _better(self, value: float, than: float) -> bool:
        return value > than if self.greater_is_better else value < than


class TrialCheckpointCleanup(TrainerCallback):
    """Deletes a trial's checkpoints when it ends (pruned or not): the best model is loaded by then, and the
    search keeps parameters, not weights."""

    def on_train_end(self, args, state, control, **kwargs):
        PartialState().wait_for_everyone()  # every rank has loaded the best checkpoint
        if args.should_save and os.path.isdir(args.output_dir):
            shutil.rmtree(args.output_dir, ignore_errors=True)


# -- the run -----------------------------------------------------------------------------------------------------------
def search_then_retrain(
    trainer: Trainer,
    plan: SearchPlan,
    build: ClassifierInit,
    start: StartPoint,
    main: Callable[[list[str]], dict],
    argv: Sequence[str] | None,
    argument_types: Sequence[type],
) -> dict[str, float]:
    """The search in place of the recipe's single run: the trials on `trainer` (the recipe's, with its data,
    collator, metrics and callbacks), trials.csv and best.yaml, then `main` (the recipe) on best.yaml."""
    argv = list(sys.argv[1:] if argv is None else argv)
    folder = os.path.join(trainer.args.output_dir, SEARCH_DIR)
    best_config = os.path.join(folder, BEST_CONFIG)
    if trainer.eval_dataset is None:
        raise TransferKitError(
            "hp_search picks on the validation split, and this run has none: set validation_file, or "
            "validation_split_percentage above 0 (and do_eval true)."
        )
    metric, direction = objective_of(trainer, plan)
    config = user_config(argv, argument_types)
    if os.path.isfile(best_config) and trainer.args.resume_from_checkpoint in RESUME_AUTO:
        logger.warning("%s holds a finished search: resuming the retrain of its %s.", folder, BEST_CONFIG)
    else:
        check_can_search(trainer, plan, start, folder, overwrite=bool(config.get("overwrite_output_dir")))
        if start.replace_earlier:  # overwrite_output_dir: the earlier run goes now, so the retrain keeps hp_search/
            clear_earlier_run(trainer)
        best = run_trials(trainer, plan, build, metric, direction, folder)
        if trainer.is_world_process_zero():
            write_best_config(best_config, config, best, metric, plan)
    trainer.accelerator.wait_for_everyone()  # the other ranks read best.yaml
    release(trainer)
    resume = ["--resume_from_checkpoint", "auto"] if trainer.args.resume_from_checkpoint in RESUME_AUTO else []
    return main(["--config", best_config, *resume])  # a retrain cut short resumes when the rerun asks to


def objective_of(trainer: Trainer, plan: SearchPlan) -> tuple[str, str]:
    """The validation metric to optimise and its direction, checked against what an evaluation reports. Default:
    the metric that picks the best model (metric_for_best_model, else the problem type's, as early stopping does)."""
    args = trainer.args
    default_name, default_greater = BEST_MODEL_METRIC[trainer.model.config.problem_type]
    best_model_metric = eval_key(args.metric_for_best_model or default_name)
    metric = plan.metric or best_model_metric
    if metric == best_model_metric:
        greater = args.greater_is_better if args.metric_for_best_model else default_greater
    else:
        greater = not any(word in metric for word in LOWER_IS_BETTER)
    direction = plan.direction or direction_of(greater)
    if args.load_best_model_at_end and metric == best_model_metric and direction != direction_of(greater):
        raise TransferKitError(
            f"hp_search.direction {direction} contradicts metric_for_best_model {best_model_metric} (greater_is_better "
            f"{greater}): each trial would keep its worst model. Leave direction unset or align the two."
        )
    reported = validation_metric_names(trainer)
    if reported is not None and metric not in reported:
        close = difflib.get_close_matches(metric, sorted(reported), n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise TransferKitError(
            f"hp_search.metric {metric} is not a validation metric of this run ({', '.join(sorted(reported))}).{hint}"
        )
    return metric, direction


def direction_of(greater_is_better: bool) -> str:
    return "maximize" if greater_is_better else "minimize"


def validation_metric_names(trainer: Trainer) -> set[str] | None:
    """The keys an evaluation reports (eval_loss and the metric module's), from the metric run on a few validation
    labels with neutral logits, so a misspelt metric fails before any trial trains. None where that cannot tell."""
    if trainer.compute_metrics is None or trainer.eval_dataset is None:
        return {"eval_loss"}
    try:
        labels = np.asarray(trainer.eval_dataset[:8]["label"])
        logits = np.zeros((len(labels), trainer.model.config.num_labels), dtype=np.float32)
        reported = trainer.compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    except Exception:  # a user's metric module may refuse such input: the first evaluation will tell
        return None
    return {"eval_loss", *(eval_key(name) for name in reported)}


def check_can_search(trainer: Trainer, plan: SearchPlan, start: StartPoint, folder: str, overwrite: bool) -> None:
    """What would fail or mislead only once trials run: said now, before any training."""
    args = trainer.args
    if os.path.isfile(os.path.join(folder, BEST_CONFIG)) and not overwrite:
        raise TransferKitError(
            f"{folder} holds a finished search, whose retrain did not finish: set resume_from_checkpoint: auto to "
            "resume that retrain, overwrite_output_dir: true to search afresh, or choose another output_dir."
        )
    if start.checkpoint is not None:
        raise TransferKitError(
            f"output_dir {args.output_dir} holds a checkpoint but no {SEARCH_DIR}/{BEST_CONFIG} to retrain: set "
            "overwrite_output_dir: true to search afresh, or choose another output_dir."
        )
    if not args.do_train:
        raise TransferKitError("hp_search trains a model per trial, and do_train is false: set do_train true.")
    if "num_train_epochs" in plan.names and args.max_steps > 0:
        raise TransferKitError(
            f"hp_search.space.num_train_epochs has no effect with max_steps {args.max_steps}: remove one of them."
        )
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        raise TransferKitError(
            "hp_search runs in one process or under plain DDP, not under DeepSpeed or FSDP (transformers rebuilds a "
            "DeepSpeed engine per trial only from the deepspeed option, and FSDP trials are untested). Search in one "
            f"process (python recipes/classify.py), then launch {folder}/{BEST_CONFIG} with your accelerate config."
        )
    if "head_warmup_steps" in plan.names:  # an encoder to hold and an optimizer with param groups, checked now
        head_warmup(1, trainer.model).optimizer_cls_and_kwargs(args, trainer.model)
    if os.path.isdir(folder) and trainer.is_world_process_zero():
        logger.warning("Replacing the earlier search in %s.", folder)


def run_trials(
    trainer: Trainer, plan: SearchPlan, build: ClassifierInit, metric: str, direction: str, folder: str
) -> dict[str, Any] | None:
    """Trainer.hyperparameter_search with Optuna on the recipe's Trainer; on rank 0, writes trials.csv and returns
    the best trial (number, value, params)."""
    import optuna

    args = trainer.args
    if trainer.is_world_process_zero() and os.path.isdir(folder):
        shutil.rmtree(folder)
    trainer.accelerator.wait_for_everyone()
    objective = TrialObjective(metric, args)
    trainer.args = trial_arguments(args, plan, folder)
    trainer.model_init = TrialModels(trainer, plan, build)
    trainer.add_callback(objective)
    trainer.add_callback(TrialCheckpointCleanup())
    free_recipe_model(trainer)
    storage = optuna.storages.InMemoryStorage()
    several = args.world_size > 1
    logger.info(
        "hp_search: %d trials over %s, %s %s on validation%s.",
        plan.n_trials,
        ", ".join(plan.names),
        direction,
        metric,
        " (pruning off under several processes)" if several else "",
    )
    trainer.hyperparameter_search(
        hp_space=plan.training_arguments,
        compute_objective=objective,
        n_trials=plan.n_trials,
        direction=direction,
        backend="optuna",
        study_name=STUDY_NAME,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=args.seed if plan.seed is None else plan.seed),
        pruner=optuna.pruners.NopPruner() if several else optuna.pruners.MedianPruner(),
    )
    if not trainer.is_world_process_zero():  # the other ranks trained rank 0's trials: the study is rank 0's
        return None
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    write_trials(os.path.join(folder, TRIALS_FILE), study.trials, plan.names, metric)
    best = {"number": study.best_trial.number, "value": study.best_value, "params": study.best_params}
    logger.info("hp_search: best trial %(number)d, value %(value).4f: %(params)s", best)
    return best


def trial_arguments(args: TrainingArguments, plan: SearchPlan, folder: str) -> TrainingArguments:
    """The recipe's arguments for the trials: their checkpoints (only with load_best_model_at_end) in a folder of
    their own, and warmup_steps a float, so that the cast hyperparameter_search applies keeps a ratio."""
    changes: dict[str, Any] = {"output_dir": os.path.join(folder, "trials")}
    if not args.load_best_model_at_end:
        changes["save_strategy"] = "no"
    if "warmup_steps" in plan.names:
        changes["warmup_steps"] = float(args.warmup_steps)
    return with_arguments(args, "hp_search trials", **changes)


def free_recipe_model(trainer: Trainer) -> None:
    """The model the recipe built stays referenced by the recipe until it returns, and each trial builds its own:
    move it off the accelerator (a 4-bit model cannot move; it stays)."""
    model = trainer.model
    if model is not None and not getattr(model, "is_quantized", False):
        model.to("cpu")


def release(trainer: Trainer) -> None:
    """Nothing of the trials stays on the accelerator for the retrain (rank 0 has released each trial's model
    already; the other ranks keep their last)."""
    from accelerate.utils.memory import clear_device_cache

    trainer.model_wrapped = trainer.model = trainer.optimizer = trainer.lr_scheduler = None
    if trainer.args.device.type != "cpu":  # a CPU has no cache to empty, and a collection costs ~0.3 s
        clear_device_cache(garbage_collection=True)


# -- what the search writes -------------------------------------------------------------------------------------------
def write_trials(path: str, trials: Sequence[Any], names: Sequence[str], metric: str) -> None:
    """trials.csv: number, state (COMPLETE, PRUNED, FAIL), each option's value, the metric, seconds."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "state", *names, metric, "seconds"])
        for trial in trials:
            seconds = trial.duration.total_seconds() if trial.duration is not None else None
            value = trial.value if trial.value is not None else _last_report(trial)
            writer.writerow(
                [trial.number, trial.state.name, *(trial.params.get(name, "") for name in names),
                 "" if value is None else value, "" if seconds is None else round(seconds, 1)]
            )  # fmt: skip


def _last_report(trial: Any) -> float | None:
    """A pruned trial has no value: its last evaluation's, where it reported one."""
    reports = trial.intermediate_values
    return reports[max(reports)] if reports else None


def user_config(argv: Sequence[str], argument_types: Sequence[type]) -> dict[str, Any]:
    """The options the user gave (the --config file's, then the command line's) as one file must hold them to mean
    the same run: a file option that lost to a command-line one (save_strategy: epoch to --save_steps, num_seeds to
    --seeds; transferkit.implied) is left out, since in one file the two would contradict."""
    from transferkit.config import build_parser, config_file, load_yaml_config, parse_overrides, parse_values

    overrides = parse_overrides(argument_types, argv)
    path = config_file(list(argv))
    if path is None:
        return overrides
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    settled, _ = parse_values(argument_types, argv)
    from_file = load_yaml_config(build_parser(argument_types), path)
    lost = {key for key, value in from_file.items() if key not in overrides and _word(settled[key]) != _word(value)}
    return {**{key: value for key, value in config.items() if key not in lost}, **overrides}


def _word(value: Any) -> Any:
    return getattr(value, "value", value)  # an IntervalStrategy member and its string alike


def write_best_config(path: str, config: dict[str, Any], best: dict[str, Any], metric: str, plan: SearchPlan) -> None:
    """best.yaml: the user's options with the best trial's values, without hp_search."""
    # without overwrite_output_dir: the search already cleared output_dir, and best.yaml run again would delete the
    # retrained model and this hp_search folder
    dropped = ("hp_search", "overwrite_output_dir")
    best_config = {key: value for key, value in {**config, **best["params"]}.items() if key not in dropped}
    values = ", ".join(f"{name} {value}" for name, value in best["params"].items())
    header = [
        f"The best of {plan.n_trials} hp_search trials (trial {best['number']}: {metric} {best['value']:.4f} on "
        "validation; every trial in trials.csv): the search's config (file and command line) without hp_search, with",
        f"{values}. It runs as it is:",
        f"  python recipes/classify.py --config {path}",
    ]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(f"# {line}\n" for line in header))
        yaml.safe_dump(_plain(best_config), handle, sort_keys=False)


def _plain(value: Any) -> Any:
    """YAML-safe values: enum members (TrainingArguments' strategies) and numpy scalars as plain Python."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
