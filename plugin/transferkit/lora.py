"""LoRA through PEFT, with the classification head always trained and always saved.

peft leaves it to the caller to name the modules that must be trained in full. Miss one and the run still "works":
a frozen, randomly initialised classifier (or BERT pooler) caps accuracy, or the reloaded adapter lacks the head.
Here the head is found per architecture, put in `modules_to_save`, and checked to be trainable after wrapping.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.utils import ModulesToSaveWrapper
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULT_TARGETS
from transformers import BitsAndBytesConfig, PreTrainedModel, Trainer, TrainingArguments
from transformers.pytorch_utils import Conv1D

from transferkit.arguments import with_help
from transferkit.errors import TransferKitError
from transferkit.precision import args_precision
from transferkit.ranges import COUNT, above, between, check_own_ranges

logger = logging.getLogger(__name__)
ALL_LINEAR = "all-linear"
TASKS = ("classification", "mlm", "clm")
LABELS_FILE = "label_config.json"  # an adapter folder has no config.json, so a classifier's labels live here
# pad_token_id too: a decoder's base config often has none, and its classifier then refuses batches of more than one
LABEL_FIELDS = ("num_labels", "id2label", "label2id", "problem_type", "pad_token_id")


@dataclass
class LoraArguments:
    use_peft: bool = field(default=False, **with_help("Train LoRA adapters (PEFT) instead of all the weights."))
    lora_r: int = field(default=16, **with_help("LoRA rank.", range=COUNT))
    lora_alpha: int = field(
        default=32, **with_help("LoRA scaling numerator: updates are scaled by alpha / r.", range=above(0))
    )
    lora_dropout: float = field(
        default=0.05, **with_help("Dropout on the LoRA input.", range=between(0, 1, high_open=True))
    )
    lora_target_modules: list[str] | None = field(
        default=None, **with_help("Modules to adapt, or 'all-linear'. Default: peft's for the model, else all-linear.")
    )
    lora_modules_to_save: list[str] | None = field(
        default=None, **with_help("Modules trained in full and saved with the adapter (the head is added by itself).")
    )
    use_rslora: bool = field(default=False, **with_help("Rank-stabilised LoRA: scale by alpha / sqrt(r)."))
    use_dora: bool = field(default=False, **with_help("Weight-decomposed LoRA (DoRA)."))
    merge_adapter: bool = field(default=False, **with_help("Also save a merged full model in output_dir/merged."))
    hub_merged_model_id: str | None = field(
        default=None,
        **with_help(
            "With push_to_hub and merge_adapter: the repo for the merged model. Default: <hub_model_id>-merged."
        ),
    )
    lora_train_embeddings_and_head: bool = field(
        default=False, **with_help("Also train the word embeddings and (MLM/CLM) the LM head in full; ties stay tied.")
    )
    load_in_4bit: bool = field(
        default=False, **with_help("QLoRA: load the base model in 4 bits (CUDA + bitsandbytes).")
    )

    def __post_init__(self) -> None:
        check_own_ranges(self)
        if self.lora_target_modules and ALL_LINEAR in self.lora_target_modules and len(self.lora_target_modules) > 1:
            raise TransferKitError("lora_target_modules takes 'all-linear' alone or a list of module names.")
        changed = [f.name for f in fields(self)[1:] if getattr(self, f.name) != f.default]  # all defaults are plain
        if changed and not self.use_peft:
            raise TransferKitError(f"{', '.join(changed)} only apply to LoRA: set use_peft: true, or remove them.")


def check_quantization_runs(args: LoraArguments | None) -> None:
    """QLoRA's 4-bit layers are bitsandbytes' CUDA kernels: fail before loading anything where they cannot run
    (called by train.start_run; not at parsing, so that a CPU node can still prepare a QLoRA run's data)."""
    if args is None or not args.load_in_4bit:
        return
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise TransferKitError(
            "load_in_4bit (QLoRA) needs a CUDA GPU and the bitsandbytes package (pip install bitsandbytes). "
            "Without them, train plain LoRA: set load_in_4bit: false."
        )


def model_load_kwargs(args: LoraArguments, training_args: TrainingArguments, preprocess_only: bool = False) -> dict:
    """`from_pretrained` kwargs: none for preprocess_only (the data needs the model's config and embedding size,
    not its weights: models.load_pretrained's without_weights), else QLoRA's (quantization_kwargs)."""
    return {"without_weights": True} if preprocess_only else quantization_kwargs(args, training_args)


def quantization_kwargs(args: LoraArguments, training_args: TrainingArguments) -> dict:
    """`from_pretrained` kwargs for QLoRA ({} without it): NF4 weights with double quantization (Dettmers et al.
    2023, arXiv:2305.14314), computed in the run's precision. Heads stay unquantized (a 4-bit head cannot be
    trained), and each process loads onto its own GPU: bitsandbytes quantizes as the weights land there."""
    if not args.load_in_4bit:
        return {}
    skip = ["classifier", "pre_classifier", "score", r"(.*\.)?pooler", "head", "cls", "lm_head"]  # prefix/suffix/regex
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args_precision(training_args), torch.float32)
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
        llm_int8_skip_modules=skip,
    )
    return {"quantization_config": config, "device_map": {"": training_args.local_process_index}}


def _has_weights(module: object) -> bool:
    return isinstance(module, torch.nn.Module) and next(module.parameters(), None) is not None


def _head_children(model: PreTrainedModel) -> list[str]:
    """Top-level modules with weights outside the pretrained body: the task head, whatever it is called."""
    return [name for name, child in model.named_children() if name != model.base_model_prefix and _has_weights(child)]


def find_classification_head(model: PreTrainedModel) -> list[str]:
    """Names of the modules that make up the classification head: trained in full and saved with the adapter.

    Generic rule: every top-level module with weights outside the body (`classifier`, `score`, DistilBERT's
    `pre_classifier`, DeBERTa-v2's `pooler`, ModernBERT's `head`). Known extra: a pooler inside the body (BERT,
    ALBERT). transformers builds one in a classification model only where the head reads it (RoBERTa's is dropped),
    and MLM checkpoints (our own MLM stage's output too) have no pooler weights: frozen, it would stay random.
    """
    names = _head_children(model)
    if _has_weights(getattr(model.base_model, "pooler", None)):
        names.append(f"{model.base_model_prefix}.pooler")
    if not names or model.base_model is model:  # a bare encoder (AutoModel) has no head
        raise TransferKitError(
            f"Found no classification head in {type(model).__name__} (top-level modules: "
            f"{[name for name, _ in model.named_children()]}). Name its modules in lora_modules_to_save."
        )
    return names


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct short names of the linear layers: what lora_target_modules can name."""
    linear = (torch.nn.Linear, Conv1D)
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, linear)})


def _check_names_exist(model: PreTrainedModel, names: list[str], option: str) -> None:
    """peft matches names against the end of module paths, and ignores a name that matches nothing: say so here."""
    keys = [key for key, _ in model.named_modules()]
    missing = [n for n in names if n != ALL_LINEAR and not any(k == n or k.endswith(f".{n}") for k in keys)]
    if missing:
        raise _unknown_modules(model, f"{option} {missing} match no module of {type(model).__name__}.")


def _unknown_modules(model: torch.nn.Module, problem: str) -> TransferKitError:
    return TransferKitError(f"{problem} Its linear layers are named {linear_module_names(model)}; use those names.")


def _module_name(model: torch.nn.Module, module: torch.nn.Module | None) -> str | None:
    return next((name for name, candidate in model.named_modules() if candidate is module), None)


def build_lora_config(model: PreTrainedModel, args: LoraArguments, task: str) -> LoraConfig:
    """The LoraConfig for `task`. MLM gets no TaskType (FEATURE_EXTRACTION reloads on AutoModel, without the MLM
    head); peft then records the model class in adapter_config.json, and `AutoPeftModel` reloads a masked LM.
    CLM gets CAUSAL_LM, which `AutoPeftModel` reloads on AutoModelForCausalLM."""
    if task not in TASKS:
        raise TransferKitError(f"task must be one of {TASKS}, got {task!r}.")
    targets = args.lora_target_modules or PEFT_DEFAULT_TARGETS.get(model.config.model_type) or [ALL_LINEAR]
    _check_names_exist(model, targets, "lora_target_modules")
    to_save = find_classification_head(model) if task == "classification" else []
    if args.lora_train_embeddings_and_head:
        to_save.append(_module_name(model, model.get_input_embeddings()))
        to_save += _head_children(model) if task in ("mlm", "clm") else []
    if args.lora_modules_to_save:
        _check_names_exist(model, args.lora_modules_to_save, "lora_modules_to_save")
        to_save += args.lora_modules_to_save
    return LoraConfig(
        task_type={"classification": TaskType.SEQ_CLS, "clm": TaskType.CAUSAL_LM}.get(task),
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=ALL_LINEAR if targets == [ALL_LINEAR] else list(targets),
        modules_to_save=list(dict.fromkeys(to_save)),
        use_rslora=args.use_rslora,
        use_dora=args.use_dora,
        fan_in_fan_out=any(isinstance(module, Conv1D) for module in model.modules()),  # GPT-2's layers are Conv1D
    )


def apply_lora(model: PreTrainedModel, args: LoraArguments, task: str, revision: str | None = None) -> PeftModel:
    """Wrap `model` with LoRA for `task` ("classification", "mlm" or "clm"), its head trained in full; logs counts.
    `revision`, the base model's (model_revision), goes into adapter_config.json: a reload or merge loads that one."""
    config = build_lora_config(model, args, task)
    to_save = list(config.modules_to_save)  # peft's SEQ_CLS appends its guesses ('classifier', 'score') in place
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    tied = outputs is not None and getattr(outputs, "weight", None) is inputs.weight
    input_name, output_name = _module_name(model, inputs), _module_name(model, outputs)
    if getattr(model, "is_loaded_in_4bit", False):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    try:
        peft_model = get_peft_model(model, config, revision=revision)
    except ValueError as err:
        if "target" not in str(err).lower():
            raise
        raise _unknown_modules(model, f"LoRA cannot adapt lora_target_modules: {err}") from None
    if tied and input_name in to_save and any(output_name == n or output_name.startswith(f"{n}.") for n in to_save):
        # modules_to_save copies the embeddings and the MLM decoder separately, untying them: tie the copies, so they
        # train as one matrix as in full MLM training (the adapter file holds it under both names; both reload).
        root, adapter = peft_model.get_base_model(), peft_model.active_adapter
        _trained_module(root, output_name, adapter).weight = _trained_module(root, input_name, adapter).weight
    check_trainable(peft_model, to_save)
    logger.info("LoRA %s + full %s: %s", config.target_modules, to_save, parameter_counts(peft_model))
    return peft_model


def _trained_module(root: torch.nn.Module, dotted: str, adapter: str) -> torch.nn.Module:
    """The module at `dotted` as the forward pass sees it: inside a modules_to_save wrapper, the trainable copy."""
    module = root
    for part in dotted.split("."):
        module = getattr(module, part)
        module = module.modules_to_save[adapter] if isinstance(module, ModulesToSaveWrapper) else module
    return module


def check_trainable(peft_model: PeftModel, names: list[str]) -> None:
    """Modules to train in full must be wrapped (else not saved) and train every weight (else the head stays put)."""
    adapter, root = peft_model.active_adapter, peft_model.get_base_model()
    wrappers = {key: module for key, module in root.named_modules() if isinstance(module, ModulesToSaveWrapper)}
    for name in names:
        copies = {key: w.modules_to_save[adapter] for key, w in wrappers.items() if key.endswith(name)}  # peft's rule
        frozen = [f"{key}.{n}" for key, c in copies.items() for n, p in c.named_parameters() if not p.requires_grad]
        if not copies or frozen:
            raise TransferKitError(
                f"'{name}' would not be trained in full under LoRA ({frozen[:3] or 'peft did not wrap it'}). "
                "Check lora_modules_to_save and lora_target_modules: a module cannot be in both."
            )


def parameter_counts(model: PeftModel) -> dict[str, float]:
    """Trainable and total parameters, for the logs and all_results.json: PEFT's own count, which also sizes ZeRO-3's
    partitioned and bitsandbytes' 4-bit weights (shared weights counted once)."""
    trainable, total = model.get_nb_trainable_parameters()
    return {"trainable_params": trainable, "total_params": total, "trainable_percent": 100.0 * trainable / total}


def _normalise(name: str) -> str:
    path = os.path.expanduser(name)
    return os.path.realpath(path) if os.path.exists(path) else name.strip().rstrip("/").lower()


def check_adapter_base(adapter_path: str, model_name_or_path: str) -> None:
    """An adapter only fits the weights it was trained on: refuse to put it on another base model."""
    config_file = os.path.join(adapter_path, "adapter_config.json")
    if not os.path.isfile(config_file):
        raise TransferKitError(f"{adapter_path} is not a LoRA adapter folder: it has no adapter_config.json.")
    base = json.loads(Path(config_file).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        logger.warning("%s names no base model: cannot check it against %s.", config_file, model_name_or_path)
    elif _normalise(base) != _normalise(model_name_or_path):  # local folders by real path, Hub ids by name
        raise TransferKitError(
            f"The adapter in {adapter_path} was trained on '{base}', but model_name_or_path is "
            f"'{model_name_or_path}'. Set model_name_or_path to '{base}', or train a new adapter."
        )


def save_lora_outputs(
    trainer_or_model: Trainer | PeftModel, output_dir: str, merge: bool, tokenizer=None, model_args=None
) -> dict[str, float]:
    """What a LoRA run keeps next to its adapter: the classifier's labels (an adapter folder has no config.json),
    the parameter counts and, with `merge`, a full model in output_dir/merged.

    With a Trainer, output_dir is the folder `trainer.save_model()` already wrote (`train_and_save`): the adapter and
    tokenizer are not written twice. A bare PeftModel is saved here, with `tokenizer`. The merge never copies the
    live model: the saved adapter is merged into a base model freshly loaded in full precision on the CPU
    (`merge_saved_adapter`, with `model_args`' cache_dir and trust_remote_code), so the end of a GPU run needs no
    second copy of the weights beside the optimizer state, and a QLoRA adapter merges into the unquantized base.
    Returns the counts; with a Trainer they also go to lora_results.json and all_results.json."""
    trainer = trainer_or_model if isinstance(trainer_or_model, Trainer) else None
    model = trainer.accelerator.unwrap_model(trainer.model) if trainer else trainer_or_model
    counts = parameter_counts(model)
    if trainer:
        trainer.save_metrics("lora", counts)  # also merged into all_results.json
        if not trainer.is_world_process_zero():
            return counts
    else:
        model.save_pretrained(output_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(output_dir)
    if model.peft_config[model.active_adapter].task_type == TaskType.SEQ_CLS:
        with open(os.path.join(output_dir, LABELS_FILE), "w", encoding="utf-8") as handle:
            json.dump({key: getattr(model.config, key) for key in LABEL_FIELDS}, handle, indent=2)
    if merge:
        merged_dir = os.path.join(output_dir, "merged")
        base = (
            {"cache_dir": model_args.cache_dir, "trust_remote_code": model_args.trust_remote_code} if model_args else {}
        )
        merge_saved_adapter(output_dir, merged_dir, **base)
        if tokenizer is not None:
            tokenizer.save_pretrained(merged_dir)
        logger.info("Merged model saved in %s.", merged_dir)
    return counts


def label_kwargs(adapter_dir: str) -> dict:
    """`from_pretrained` kwargs that give a reloaded classifier its labels ({} when none were saved)."""
    path = os.path.join(adapter_dir, LABELS_FILE)
    labels = json.loads(Path(path).read_text(encoding="utf-8")) if os.path.isfile(path) else {}
    if labels.get("id2label"):
        labels["id2label"] = {int(index): label for index, label in labels["id2label"].items()}  # JSON keys are str
    return labels


def load_lora_model(adapter_dir: str, **kwargs) -> PeftModel:
    """Reload a saved adapter on its base model: a classifier with its labels (plain AutoPeftModel loses them), a
    causal LM, or a masked LM (from the class peft recorded)."""
    from peft import AutoPeftModel, AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification, PeftConfig

    task_type = PeftConfig.from_pretrained(adapter_dir).task_type
    if task_type == TaskType.SEQ_CLS:
        return AutoPeftModelForSequenceClassification.from_pretrained(
            adapter_dir, **label_kwargs(adapter_dir), **kwargs
        )
    if task_type == TaskType.CAUSAL_LM:  # plain AutoPeftModel refuses adapters that name a task type
        return AutoPeftModelForCausalLM.from_pretrained(adapter_dir, **kwargs)
    return AutoPeftModel.from_pretrained(adapter_dir, **kwargs)


def merge_saved_adapter(adapter_dir: str, output_dir: str, **load_kwargs) -> PreTrainedModel:
    """Merge a saved adapter into a freshly loaded full-precision base model (the revision its adapter_config.json
    names), on the CPU, and save the result; `load_kwargs` go to the base's from_pretrained (cache_dir, ...)."""
    adapter = load_lora_model(adapter_dir, **load_kwargs)  # from_pretrained loads onto the CPU
    base = adapter.peft_config[adapter.active_adapter].base_model_name_or_path
    merged = adapter.merge_and_unload()
    _retie_trained_embeddings(merged)
    # The next stage's card can then tell base -> adapter -> finetuned (models.load_pretrained extends it).
    merged.config.transferkit_lineage = [*(getattr(merged.config, "transferkit_lineage", None) or [base]), adapter_dir]
    merged.save_pretrained(output_dir)
    return merged


def _retie_trained_embeddings(model: PreTrainedModel) -> None:
    """A reloaded adapter that trained tied word embeddings and LM decoder in full (`lora_train_embeddings_and_head`)
    holds two equal copies, and peft marks the config untied: merged and saved that way, the decoder (and its bias)
    would not reload. Equal copies are one matrix again, as in the trained model (apply_lora ties them)."""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    weight = getattr(outputs, "weight", None)
    if weight is None or weight is inputs.weight or weight.shape != inputs.weight.shape:
        return
    if torch.equal(weight, inputs.weight):
        outputs.weight = inputs.weight
        model.config.get_text_config().tie_word_embeddings = True
