"""Check recipe and accelerate configs without launching anything: the helpers behind `transferkit validate`.

A recipe config goes through its recipe's parser and dataclasses (no data and no model is loaded); an accelerate
config through accelerate's own loader, then the combinations accelerate only discovers at launch (or never).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import os
import re
from pathlib import Path
from typing import Any

from transferkit.errors import TransferKitError, as_user_error, user_error
from transferkit.launch import (
    DEEPSPEED_INSTALL,
    RECIPE_PACKAGE,
    deepspeed_installed,
    gpu_available,
    header_comment,
    list_recipes,
    lookup_entry,
    read_yaml,
)

ACCELERATE_KEYS = ("distributed_type", "compute_environment")


def config_kind(content: Any) -> str:
    if isinstance(content, dict) and any(key in content for key in ACCELERATE_KEYS):
        return "accelerate config"
    return "recipe config"


def validate_file(path: str, recipe: str | None = None, overrides: list[str] | None = None) -> tuple[str, list[str]]:
    """Check an accelerate or recipe config; return (kind, notes) or raise TransferKitError."""
    if not os.path.isfile(path):
        raise TransferKitError(f"No such file: {path}")
    kind = config_kind(read_yaml(Path(path)))
    if kind == "accelerate config":
        if overrides:
            raise TransferKitError("Overrides apply to recipe configs only; edit the accelerate config itself.")
        return kind, validate_accelerate_config(Path(path))
    name = recipe or infer_recipe(Path(path))
    return f"recipe config for {name}", validate_recipe_config(Path(path), name, overrides or [])


def infer_recipe(path: Path) -> str:
    """A `# recipe: <name>` header line, else the file name: `<recipe>.yaml` or `<recipe>_<variant>.yaml`."""
    names = [entry.name for entry in list_recipes()]
    for line in header_comment(path):
        match = re.fullmatch(r"recipe:\s*(\S+)", line)
        if match:
            return match.group(1)
    for name in sorted(names, key=len, reverse=True):
        if path.stem == name or path.stem.startswith(name + "_"):
            return name
    raise TransferKitError(
        f"Cannot tell which recipe {path} is for: add a '# recipe: <name>' comment line at its top, name it "
        f"<recipe>_<variant>.yaml, or pass --recipe (one of {', '.join(names)})."
    )


def validate_recipe_config(path: Path, recipe: str, overrides: list[str]) -> list[str]:
    """Every key and value through the recipe's parser, then the dataclasses built so their checks run.

    No data and no model is loaded. A config may leave the model and the data to the command line (the quickstart
    config does): those get a stand-in value and a note.
    """
    from transferkit.config import build_parser, load_yaml_config, parse_overrides, settle_and_check

    lookup_entry(recipe, list_recipes(), "recipe")
    module = importlib.import_module(f"{RECIPE_PACKAGE}.{recipe}")
    if hasattr(module, "validate_config"):  # a recipe made of other recipes (pipeline) checks its own sections
        return module.validate_config(path, overrides)
    types = getattr(module, "ARGUMENT_TYPES", None)
    if not types:
        raise TransferKitError(f"Recipe {recipe} exposes no ARGUMENT_TYPES, so its configs cannot be checked.")
    parser = build_parser(types)
    from_file = load_yaml_config(parser, str(path))
    values = {**getattr(module, "DEFAULTS", {}), **from_file}
    required = {action.dest for action in parser._actions if action.required}
    parser.set_defaults(**values)
    for action in parser._actions:
        action.required = False
    namespace, unknown = parser.parse_known_args(overrides)
    if unknown:
        raise TransferKitError(f"Unknown command-line override {unknown[0]!r} for recipe {recipe}.")
    values = {key: value for key, value in vars(namespace).items() if key != "config"}
    notes = []
    left_to_launch = [key for key in required if values.get(key) is None]
    if "train_file" in values and values["train_file"] is None and not values.get("dataset_name"):
        left_to_launch.append("train_file")
    for key in left_to_launch:
        values[key] = f"<{key}>"
        notes.append(f"{key} is not set in the file: pass --{key} at launch")
    where = {**dict.fromkeys(from_file, str(path)), **dict.fromkeys(parse_overrides(types, overrides), "command line")}
    values = settle_and_check(types, values, where, getattr(module, "REFUSED", None))
    _build_dataclasses(types, values, notes, path)
    return notes + hub_notes(values)


def hub_notes(values: dict[str, Any]) -> list[str]:
    """Name the Hub ids a config loads: validate works offline and loads nothing, so they are left to the launch."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    named = []
    for key, what in (("model_name_or_path", "model"), ("tokenizer_name", "tokenizer"), ("dataset_name", "dataset")):
        value = values.get(key)
        if not isinstance(value, str) or value.startswith("<") or os.path.exists(os.path.expanduser(value)):
            continue
        try:
            validate_repo_id(value)
        except HFValidationError:
            continue  # a local path made at run time (a pipeline stage's input), not a Hub id
        named.append(f"{what} {value}")
    if not named:
        return []
    them = "them" if len(named) > 1 else "it"
    return [
        f"Hub {' and '.join(named)}: not loaded here (validate works offline); --dry_run true at launch loads {them}"
    ]


def _build_dataclasses(types: tuple, values: dict[str, Any], notes: list[str], path: Path) -> None:
    saved_env = dict(os.environ)  # TrainingArguments exports ACCELERATE_* variables
    try:
        for dtype in types:
            kwargs = {f.name: values[f.name] for f in dataclasses.fields(dtype) if f.init and f.name in values}
            try:
                _note_gpu_only(dtype(**kwargs), notes)
            except ImportError as err:
                notes.append(f"{dtype.__name__} not fully checked: {err}")
            except (ValueError, TypeError) as err:
                as_on_gpu = _as_if_on_a_gpu(str(err), kwargs)
                if as_on_gpu is not None:  # bf16 or QLoRA in a GPU config, checked on this machine
                    _build_one(dtype, {**kwargs, **as_on_gpu}, path)
                    notes.append(f"checked as if on a GPU ({str(err).splitlines()[0]})")
                    continue
                raise user_error(str(path), err) from None
    finally:
        os.environ.clear()
        os.environ.update(saved_env)


def _as_if_on_a_gpu(error: str, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """What lets a GPU config's dataclass be built on a machine without CUDA, when that is all its error is about:
    use_cpu for bf16/fp16."""
    if "use_cpu" in error and not kwargs.get("use_cpu") and not gpu_available():
        return {"use_cpu": True}
    return None


def _note_gpu_only(built: Any, notes: list[str]) -> None:
    """QLoRA is refused where it cannot run when a run starts (train.start_run), not when its options are built:
    here, on a machine without CUDA or bitsandbytes, it is noted."""
    from transferkit.lora import LoraArguments, check_quantization_runs

    if isinstance(built, LoraArguments):
        try:
            check_quantization_runs(built)
        except TransferKitError as err:
            notes.append(f"checked as if on a GPU ({str(err).splitlines()[0]})")


def _build_one(dtype: type, kwargs: dict[str, Any], path: Path) -> None:
    with as_user_error(str(path), (ValueError, TypeError)):
        dtype(**kwargs)


def validate_accelerate_config(path: Path) -> list[str]:
    """accelerate's own loader, then the combinations it only discovers at launch (or never)."""
    from accelerate.commands.config.config_args import load_config_from_file

    raw = read_yaml(path)
    if raw.get("distributed_type") is False:
        raise TransferKitError(f'{path}: write distributed_type: "NO" with quotes (a bare NO is false in YAML).')
    try:
        config = load_config_from_file(str(path))
    except (ValueError, TypeError, KeyError) as err:
        raise TransferKitError(f"{path}: accelerate cannot load it: {err}") from None
    if str(raw.get("compute_environment", "LOCAL_MACHINE")) != "LOCAL_MACHINE":
        return ["not a LOCAL_MACHINE config: only accelerate's own checks were run"]
    kind = config.distributed_type.value
    processes, machines, notes = config.num_processes, config.num_machines, []
    problems = _topology_problems(kind, processes, machines, config, notes)
    if kind == "FSDP":
        problems += _fsdp_problems(config.fsdp_config, notes)
    if kind == "DEEPSPEED":
        problems += _deepspeed_problems(config.deepspeed_config, path)
        if not deepspeed_installed():
            notes.append(f"DeepSpeed is not installed here: {DEEPSPEED_INSTALL}")
        if config.mixed_precision in ("bf16", "fp16"):
            notes.append(
                f"DeepSpeed stops at start unless the recipe config also sets {config.mixed_precision}: true "
                '(or set mixed_precision: "no" here and choose the precision in the recipe config)'
            )
    if problems:
        raise TransferKitError(f"{path}: " + "; ".join(problems))
    return notes


def _topology_problems(kind: str, processes: int, machines: int, config: Any, notes: list[str]) -> list[str]:
    problems = []
    if processes == -1:
        notes.append("num_processes is -1: pass --num_processes at launch")
    elif processes < 1:
        problems.append(f"num_processes must be at least 1, got {processes}")
    if kind == "NO" and (processes > 1 or machines > 1):
        problems.append(f"distributed_type NO runs one process, but num_processes is {processes}: use MULTI_GPU")
    if kind.startswith("MULTI_") and processes == 1 and machines == 1:
        problems.append(f'{kind} with num_processes 1: set num_processes >= 2 or distributed_type "NO"')
    if kind == "MULTI_CPU" and not config.mpirun_config:
        notes.append("MULTI_CPU starts one process without mpirun: for 2 CPU processes use cpu_ddp.yaml")
    if machines > 1:
        if processes > 0 and processes % machines:
            problems.append(f"num_processes ({processes}) counts all nodes: make it a multiple of num_machines")
        if not 0 <= config.machine_rank < machines:
            problems.append(f"machine_rank must be in 0..{machines - 1}, got {config.machine_rank}")
        if not config.main_process_ip:
            notes.append("main_process_ip is not set: pass --main_process_ip (the machine_rank 0 node) at launch")
    gpu_ids = config.gpu_ids
    if gpu_ids not in (None, "all") and processes > 0 and len(str(gpu_ids).split(",")) < processes // machines:
        problems.append(f"gpu_ids {gpu_ids} lists fewer GPUs than the {processes // machines} processes per node")
    return problems


@functools.lru_cache(maxsize=1)
def transformers_classes() -> frozenset[str]:
    """Class names defined in transformers' modeling files (read as text: importing 400 models is slow)."""
    import transformers

    names: set[str] = set()
    for path in Path(transformers.__file__).parent.glob("models/*/modeling_*.py"):
        names.update(re.findall(r"^class (\w+)\(", path.read_text(encoding="utf-8"), re.M))
    return frozenset(names)


def _fsdp_problems(fsdp: dict, notes: list[str]) -> list[str]:
    problems = []
    version = int(fsdp.get("fsdp_version", 1))
    if version not in (1, 2):
        problems.append(f"fsdp_version must be 1 or 2, got {version}")
    policy = fsdp.get("fsdp_auto_wrap_policy")
    layers = [name.strip() for name in str(fsdp.get("fsdp_transformer_layer_cls_to_wrap") or "").split(",") if name]
    if policy == "TRANSFORMER_BASED_WRAP":
        if not layers:
            notes.append(
                "fsdp_transformer_layer_cls_to_wrap is not set: the TransferKit recipes fill it from the model (its "
                "_no_split_modules, else its repeated blocks); other scripts get accelerate's _no_split_modules alone"
            )
        for layer in layers:
            if layer not in transformers_classes():
                close = difflib.get_close_matches(layer, transformers_classes(), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                notes.append(f"layer class {layer} is not defined in transformers{hint}: fine for remote-code models")
    elif policy == "SIZE_BASED_WRAP" and int(fsdp.get("fsdp_min_num_params", 0)) <= 0:
        problems.append("SIZE_BASED_WRAP needs fsdp_min_num_params > 0")
    elif policy in (None, "NO_WRAP"):
        notes.append("no auto-wrap policy: the whole model is one FSDP unit (no memory saved over DDP)")
    state_dict = fsdp.get("fsdp_state_dict_type", "FULL_STATE_DICT")
    if state_dict not in ("FULL_STATE_DICT", "SHARDED_STATE_DICT", "LOCAL_STATE_DICT"):
        problems.append(f"unknown fsdp_state_dict_type {state_dict}")
    if version == 2:
        if state_dict == "LOCAL_STATE_DICT":
            problems.append("FSDP2 does not support LOCAL_STATE_DICT")
        if fsdp.get("fsdp_forward_prefetch"):
            problems.append("fsdp_forward_prefetch is not implemented in FSDP2: remove it")
        if not isinstance(fsdp.get("fsdp_reshard_after_forward", True), bool):
            problems.append("FSDP2 takes fsdp_reshard_after_forward true or false, not a sharding strategy")
    if state_dict == "SHARDED_STATE_DICT":
        notes.append("SHARDED_STATE_DICT saves shards: merge them with `accelerate merge-weights` before use")
    return problems


def _deepspeed_problems(deepspeed: dict, path: Path) -> list[str]:
    config_file = deepspeed.get("deepspeed_config_file")
    if config_file:
        exists = os.path.isfile(config_file) or os.path.isfile(path.parent / config_file)
        return [] if exists else [f"deepspeed_config_file {config_file} does not exist"]
    stage = deepspeed.get("zero_stage")
    if stage not in (0, 1, 2, 3):
        return [f"deepspeed_config needs zero_stage 0-3 (or a deepspeed_config_file), got {stage!r}"]
    if deepspeed.get("zero3_save_16bit_model") and stage != 3:
        return ["zero3_save_16bit_model applies to zero_stage 3 only"]
    return []
