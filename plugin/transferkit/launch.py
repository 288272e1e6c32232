"""Find, list, copy and launch the shipped recipes and configs: the helpers behind the `transferkit` command.

Where the files are, in a source checkout and in an installed wheel alike:
- recipes: the modules of `transferkit.recipes` that define `main` (the top-level `recipes/` folder);
- recipe configs: `configs/<model>/<recipe>_<variant>.yaml` inside that package, named `<model>/<recipe>_<variant>`;
- accelerate configs: the top-level `accelerate_configs/` folder, installed as `transferkit/accelerate_configs/` (a
  data folder, no `__init__.py`). It is found through the import system first, then next to the recipes folder,
  which is the repository root in a checkout and the `transferkit/` package folder in a wheel.

Checking a config without launching it (`transferkit validate`) is `transferkit.validate`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from transferkit.errors import TransferKitError

RECIPE_PACKAGE = "transferkit.recipes"
LAUNCH_SCRIPT_SUFFIXES = (".yaml", ".sh")


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    path: Path
    summary: str


# -- discovery -----------------------------------------------------------------------------------------------
def recipes_dir() -> Path:
    spec = importlib.util.find_spec(RECIPE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TransferKitError(f"{RECIPE_PACKAGE} is not installed: reinstall transferkit (pip install -e .).")
    return Path(list(spec.submodule_search_locations)[0])


def accelerate_configs_dir() -> Path:
    candidates = []
    try:
        spec = importlib.util.find_spec("transferkit.accelerate_configs")
    except ImportError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(location) for location in spec.submodule_search_locations]
    candidates.append(recipes_dir().parent / "accelerate_configs")
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    raise TransferKitError(
        "The shipped accelerate configs are missing (looked in " + ", ".join(map(str, candidates)) + "): "
        "reinstall transferkit, or pass --accelerate_config the path of a YAML file."
    )


def header_comment(path: Path) -> list[str]:
    """The comment lines at the top of a YAML or shell file, without '#' and the shebang."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#!"):
            continue
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return lines


def _summary(path: Path) -> str:
    return next((line for line in header_comment(path) if line and not line.startswith("SBATCH")), "")


def list_recipes() -> list[Entry]:
    """Modules of transferkit.recipes with a top-level `main`, read without importing them (no heavy imports)."""
    entries = []
    for path in sorted(recipes_dir().glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except SyntaxError:
            continue
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            doc = (ast.get_docstring(tree) or "").strip().splitlines()
            entries.append(Entry(path.stem, path, doc[0] if doc else ""))
    return entries


def list_recipe_configs() -> list[Entry]:
    root = recipes_dir() / "configs"
    return [Entry(f"{p.parent.name}/{p.stem}", p, _summary(p)) for p in sorted(root.glob("*/*.yaml"))]


def list_accelerate_configs() -> list[Entry]:
    """The shipped accelerate YAMLs (named by stem) and launch scripts (named by file name)."""
    root = accelerate_configs_dir()
    paths = sorted(p for p in root.iterdir() if p.suffix in LAUNCH_SCRIPT_SUFFIXES)
    return [Entry(p.stem if p.suffix == ".yaml" else p.name, p, _summary(p)) for p in paths]


def lookup_entry(name: str, entries: list[Entry], what: str, or_file: bool = False) -> Path:
    for entry in entries:
        if name in (entry.name, entry.path.name):
            return entry.path
    names = [entry.name for entry in entries]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    no_file = " and no file at that path" if or_file else ""
    raise TransferKitError(
        f"No {what} named '{name}'{no_file}.{hint} Known: {', '.join(names)} (see `transferkit ls`)."
    )


def resolve_accelerate_config(name_or_path: str) -> Path:
    if os.path.isfile(name_or_path):
        return Path(name_or_path)
    yamls = [e for e in list_accelerate_configs() if e.path.suffix == ".yaml"]
    return lookup_entry(name_or_path.removesuffix(".yaml"), yamls, "accelerate config", or_file=True)


def resolve_recipe_config(name_or_path: str) -> Path:
    if os.path.isfile(name_or_path):
        return Path(name_or_path)
    return lookup_entry(name_or_path.removesuffix(".yaml"), list_recipe_configs(), "recipe config", or_file=True)


def resolve_copy_source(name: str) -> Path:
    """A recipe name, a recipe config name (<model>/<recipe>_<variant>) or an accelerate config name."""
    everything = list_recipes() + list_recipe_configs() + list_accelerate_configs()
    return lookup_entry(name, everything, "recipe, recipe config or accelerate config")


def copy_to(name: str, destination: str, force: bool = False) -> Path:
    source = resolve_copy_source(name)
    target = Path(destination)
    if target.is_dir():
        target = target / source.name
    if target.exists() and not force:
        raise TransferKitError(f"{target} already exists: pass --force to overwrite it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


# -- launching -----------------------------------------------------------------------------------------------
def gpu_available() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS, ...
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()


def read_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        try:
            return yaml.safe_load(handle)
        except yaml.YAMLError as err:
            raise TransferKitError(f"{path} is not valid YAML: {err}") from None


def gpu_reason(config: dict) -> str | None:
    """Why an accelerate config needs a GPU, or None (cpu_ddp.yaml: MULTI_GPU without gpu_ids runs on CPUs)."""
    if config.get("use_cpu") is True:
        return None
    if str(config.get("distributed_type")) == "FSDP":
        return "FSDP needs GPUs: on CPU accelerate drops FSDP2 silently and FSDP1 fails"
    if config.get("mixed_precision") == "fp16":
        return "fp16 mixed precision needs a GPU"
    if config.get("gpu_ids") is not None:
        return f"it names GPUs (gpu_ids: {config['gpu_ids']})"
    return None


def recipe_target(recipe: str) -> list[str]:
    """`-m transferkit.recipes.<name>` for a shipped recipe; a path for a copied recipe script."""
    if recipe.endswith(".py"):
        if not os.path.isfile(recipe):
            raise TransferKitError(f"No recipe script at {recipe}.")
        return [recipe]
    lookup_entry(recipe, list_recipes(), "recipe")
    return ["-m", f"{RECIPE_PACKAGE}.{recipe}"]


def build_launch_command(
    recipe: str,
    accelerate_config: str | None,
    config: str | None,
    overrides: list[str],
    launcher: dict[str, Any] | None = None,
) -> list[str]:
    """`accelerate launch [--config_file F] [--num_processes N ...] -m transferkit.recipes.R [--config Y] ...`."""
    command = ["accelerate", "launch"]
    if accelerate_config:
        command += ["--config_file", str(resolve_accelerate_config(accelerate_config))]
    for flag, value in (launcher or {}).items():
        if value is not None:
            command += [f"--{flag}", str(value)]
    command += recipe_target(recipe)
    if config:
        command += ["--config", str(resolve_recipe_config(config))]
    return command + list(overrides)


DEEPSPEED_INSTALL = "python -m pip install --no-build-isolation deepspeed"


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def check_launchable(accelerate_config: str | None) -> None:
    """Refuse a DeepSpeed config without DeepSpeed, and a GPU config on a machine without GPUs, before the
    processes start and fail one by one."""
    if not accelerate_config:
        return
    path = resolve_accelerate_config(accelerate_config)
    content = read_yaml(path)
    if not isinstance(content, dict):
        return
    if str(content.get("distributed_type")) == "DEEPSPEED" and not deepspeed_installed():
        raise TransferKitError(
            f"{path} is a DeepSpeed config and DeepSpeed is not installed: {DEEPSPEED_INSTALL} (after torch; the "
            "flag builds it against the torch in place)."
        )
    if gpu_available():
        return
    reason = gpu_reason(content)
    if reason:
        on_cpu = ""
        if str(content.get("distributed_type")) == "DEEPSPEED":
            on_cpu = f" DeepSpeed runs on CPUs too: copy {path.name}, set use_cpu: true, num_processes: 2, no gpu_ids."
        raise TransferKitError(
            f"{path} is a GPU config ({reason}) and this machine has no GPU. Run it on a GPU machine, or use "
            "--accelerate_config cpu_ddp (2 processes on CPU) or no --accelerate_config (one process)." + on_cpu
        )
