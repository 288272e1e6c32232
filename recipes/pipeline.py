"""Adapt, then finetune: MLM or CLM continued pretraining (stage 1), classification from the adapted model (stage 2),
and optionally the same classification from the base model, with a paired report of what the adaptation bought.
Encoders adapt with masked-LM (the default); decoders (GPT-2, Llama, ...) with `adapt: {objective: clm}`, and are
then finetuned as decoder classifiers (last-token pooling, EOS as pad token).

Config: one YAML with the pipeline's keys and one section per stage, each holding that recipe's own keys:

    base_model: sentence-transformers/all-MiniLM-L6-v2
    output_dir: outputs/pipeline
    compare_with_base: true       # also finetune the base model, same seeds, split and hyperparameters
    shared: {seed: 42}            # keys given to every stage
    adapt: {max_steps: 300}       # recipes/mlm.py keys; no train_file / dataset_name = TAPT on the task's texts
                                  # (a decoder base_model: adapt: {objective: clm, max_steps: 300})
    classify: {train_file: reviews.csv, seeds: [1, 2, 3], max_train_samples: 300}   # recipes/classify.py keys

TAPT (no corpus in `adapt`) pretrains on every text of the classification *train* split, carved as stage 2 carves
it (split_seed, else seed), so no validation or test text is seen in stage 1, but the texts that max_train_samples
leaves out of finetuning are: few labels and plenty of unlabelled text is where TAPT helps most (Gururangan et al.,
"Don't Stop Pretraining", ACL 2020). DAPT: give `adapt` its own train_file or dataset. `seeds` / `num_seeds` in
`classify` run both classify stages on those seeds and one split; the adapt stage runs once. comparison.md / .json:
each test metric's difference adapted - base with its 95% interval paired by seed, McNemar and a paired bootstrap
over each seed's test examples, and a one-sentence verdict (transferkit.evidence.comparison).
A LoRA adapt stage (`adapt: {use_peft: true}`) is merged into a full model (adapt/merged), which stage 2 finetunes.
Under `accelerate launch` one process writes the stage configs, the TAPT corpus and the report; the others wait.
Each stage writes its resolved config as <output_dir>/<stage>.yaml. A rerun skips finished stages (run_finished.json)
and resumes a stage cut short from its last checkpoint. `push_to_hub: true` with a `hub_model_id` in `adapt` and/or
`classify` pushes that stage (a LoRA adapt stage: its adapter, and the merged model to `<hub_model_id>-merged` or
`hub_merged_model_id`); the baseline is never pushed. The token comes from HF_TOKEN, not hub_token.

Launch:
    python recipes/pipeline.py --config recipes/configs/quickstart/pipeline.yaml --classify.train_file reviews.csv
    transferkit quickstart pipeline       # the same on the quickstart data (offline)
Overrides: --<section>.<key> VALUE (e.g. --adapt.max_steps 50, --classify.fp16=true, --shared.bf16), typed by the
recipe's own parser, or --<key> VALUE for pipeline keys.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml
from accelerate import PartialState

from transferkit.arguments import DataArguments, ModelArguments
from transferkit.config import parse_config, parse_overrides
from transferkit.data import load_classification_splits
from transferkit.distributed import run_recipe
from transferkit.errors import TransferKitError
from transferkit.evidence.comparison import compare, console_summary, stage_row, write_report
from transferkit.lora import LoraArguments, check_quantization_runs
from transferkit.recipes import classify, mlm
from transferkit.resume import is_finished

logger = logging.getLogger("transferkit.recipes.pipeline")
PIPELINE_KEYS = {"base_model", "output_dir", "compare_with_base", "shared", "adapt", "classify"}
SECTION_RECIPES = {"adapt": (mlm,), "classify": (classify,), "shared": (mlm, classify)}
SPLIT_PHASES = {"validation": "do_eval", "test": "do_predict"}  # a phase that is off: its file split is not read
SEED_KEYS = ("seeds", "num_seeds")  # classify's: both classify stages run them, the adapt stage once


def main(argv: list[str] | None = None) -> dict:
    config = load_pipeline_config(list(sys.argv[1:] if argv is None else argv))
    output_dir = config["output_dir"]
    stages = plan_stages(config)
    args = check_stages(stages)  # every stage's config is checked before anything is written or trained
    # Under `accelerate launch` every process runs this: one writes the shared files, the others wait, then read.
    with args.main_process_first(local=args.save_on_each_node, desc="writing the stage configs"):
        if args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            for name, stage in stages.items():
                write_stage_config(output_dir, name, stage)
            if stages["adapt"]["keys"].get("train_file") == tapt_corpus_path(output_dir):
                write_tapt_corpus(stages["finetune"]["keys"], output_dir)

    results = {}
    for name, stage in stages.items():
        results[name] = run_stage(output_dir, name, stage)
        PartialState().wait_for_everyone()  # the next stage reads what this one's main process wrote last
    if not args.should_save:  # the report reads both stages' predictions: the main process makes it
        return {name: stage_row(name, metrics) for name, metrics in results.items()}
    stage_dirs = {name: stage["keys"]["output_dir"] for name, stage in stages.items()}
    report = compare(results, stage_dirs, seed=stages["finetune"]["keys"].get("seed", 42))
    write_report(output_dir, report)
    print(console_summary(report))
    return report


def check_stages(stages: dict[str, dict]):
    """Parse each stage's keys with its recipe's defaults, as the stage itself will (from scratch files: nothing is
    written to output_dir yet); returns the first stage's TrainingArguments (for the process layout)."""
    from transferkit.train import runtime_defaults

    with scratch_stage_files(stages) as files:
        parsed = [
            parse_config(stage["recipe"].ARGUMENT_TYPES, ["--config", files[name]],
                         defaults={**stage["recipe"].DEFAULTS, **runtime_defaults()},
                         refused=getattr(stage["recipe"], "REFUSED", None),
                         config_label=f"the pipeline's {name} stage (its config section or --{name}.* flags)")
            for name, stage in stages.items()
        ]  # fmt: skip
    for options in parsed:  # a stage that cannot train here stops the pipeline before the first stage trains
        check_quantization_runs(next((o for o in options if isinstance(o, LoraArguments)), None))
    return parsed[0][-1]


def validate_config(path, overrides: list[str]) -> list[str]:
    """`transferkit validate` for a pipeline config: each stage's keys through that stage's recipe checks."""
    from transferkit.validate import validate_recipe_config

    stages = plan_stages(load_pipeline_config(["--config", str(path), *overrides]))
    notes = []
    with scratch_stage_files(stages) as files:
        for name, stage in stages.items():
            recipe = stage["recipe"].__name__.rsplit(".", 1)[-1]
            section = "adapt" if name == "adapt" else "classify"  # the config section a launch flag goes to
            for note in validate_recipe_config(Path(files[name]), recipe, []):
                note = f"{name}: {note.replace('pass --', f'pass --{section}.')}"
                notes += [note] if note not in notes else []
    return notes


@contextlib.contextmanager
def scratch_stage_files(stages: dict[str, dict]) -> Iterator[dict[str, str]]:
    """Each stage's config written to a temporary folder, by stage name (removed afterwards)."""
    with tempfile.TemporaryDirectory() as scratch:
        yield {name: write_stage_config(scratch, name, stage) for name, stage in stages.items()}


def load_pipeline_config(argv: list[str]) -> dict:
    """The YAML config, then the command line's overrides: `--<section>.<key> VALUE` for a stage section (adapt,
    classify, shared), each typed by the parser of the recipe it goes to, and `--<key> VALUE` for a pipeline key."""
    groups: dict[str | None, list[str]] = {}
    for flag, values in _flag_groups(argv):
        name, equals, value = flag[2:].partition("=")
        section, _, key = name.rpartition(".")
        groups.setdefault(section or None, []).extend([f"--{key}{equals}{value}", *values])
    pipeline_args, unknown = _pipeline_parser().parse_known_args(groups.pop(None, []))
    if unknown or not pipeline_args.config:
        raise TransferKitError(
            f"Unknown pipeline key '{unknown[0].lstrip('-').split('=')[0]}'. Pipeline keys: {sorted(PIPELINE_KEYS)}."
            if unknown
            else "The pipeline needs --config FILE.yaml (see recipes/configs/quickstart/pipeline.yaml)."
        )
    with open(pipeline_args.config, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    config.update({key: value for key, value in vars(pipeline_args).items() if value is not None and key != "config"})
    for section, section_argv in groups.items():
        if section not in SECTION_RECIPES:
            raise TransferKitError(
                f"Unknown pipeline section '{section}' in --{section}.*: use adapt, classify or shared."
            )
        overrides = {}
        for recipe in SECTION_RECIPES[section]:  # a shared key must be valid for both recipes
            overrides = parse_overrides(
                recipe.ARGUMENT_TYPES, section_argv, source=f"--{section}.* on the command line"
            )
        config[section] = {**(config.get(section) or {}), **overrides}
    unknown = set(config) - PIPELINE_KEYS
    if unknown:
        raise TransferKitError(f"Unknown pipeline key '{sorted(unknown)[0]}'. Pipeline keys: {sorted(PIPELINE_KEYS)}.")
    for required in ("base_model", "classify"):
        if required not in config:
            raise TransferKitError(f"The pipeline config needs '{required}'.")
    config.setdefault("output_dir", "outputs/pipeline")
    return config


def _flag_groups(argv: list[str]) -> list[tuple[str, list[str]]]:
    """(`--flag`, the values after it) in order; a value that starts with `--` is taken for the next flag."""
    groups: list[tuple[str, list[str]]] = []
    for token in argv:
        if token.startswith("--"):
            groups.append((token, []))
        elif groups:
            groups[-1][1].append(token)
        else:
            raise TransferKitError(f"Unexpected argument '{token}': pipeline options are --key VALUE.")
    return groups


def _pipeline_parser():
    import argparse

    from transformers.hf_argparser import string_to_bool

    parser = argparse.ArgumentParser(prog="pipeline", add_help=False, exit_on_error=False)
    parser.add_argument("--config")
    parser.add_argument("--base_model")
    parser.add_argument("--output_dir")
    parser.add_argument("--compare_with_base", type=string_to_bool, nargs="?", const=True)
    return parser


def plan_stages(config: dict) -> dict[str, dict]:
    """The stages to run, each a recipe with its keys; the model paths chain base -> adapted -> finetuned."""
    out, base, shared = config["output_dir"], config["base_model"], config.get("shared") or {}
    if set(SEED_KEYS) & set(shared) or set(SEED_KEYS) & set(config.get("adapt") or {}):
        raise TransferKitError("Put seeds / num_seeds in `classify`: both classify stages run them, adapt runs once.")
    adapt_keys = {**shared, **(config.get("adapt") or {}), "model_name_or_path": base}
    classify_keys = {**shared, **config["classify"]}
    classify_keys["split_seed"] = split_seed(classify_keys)  # one split for every seed and both classify stages
    stages = {"adapt": {"recipe": mlm, "keys": adapt_keys}, "finetune": {"recipe": classify, "keys": classify_keys}}
    stages["finetune"]["keys"]["model_name_or_path"] = adapted_model(out, adapt_keys, base, stages["finetune"]["keys"])
    if config.get("compare_with_base", True):
        stages["baseline"] = {"recipe": classify, "keys": {**classify_keys, "model_name_or_path": base}}
    if "train_file" not in stages["adapt"]["keys"] and "dataset_name" not in stages["adapt"]["keys"]:
        stages["adapt"]["keys"]["train_file"] = tapt_corpus_path(out)  # TAPT: written before stage 1 runs
    for name, stage in stages.items():
        stage["keys"]["output_dir"] = os.path.join(out, name)
        stage["keys"].setdefault("resume_from_checkpoint", "auto")  # a killed stage continues where it stopped
    check_publishing(stages)
    return stages


def adapted_model(output_dir: str, adapt_keys: dict, base: str, finetune_keys: dict) -> str:
    """Where stage 2 finds the adapted model. A LoRA adapt stage saves only an adapter, so it also merges it into a
    full model (adapt/merged) for stage 2 to finetune. A dry run trains nothing: stage 2 is planned on the base model
    (the same architecture and tokenizer)."""
    adapted = os.path.join(output_dir, "adapt")
    if adapt_keys.get("use_peft"):
        if adapt_keys.get("merge_adapter") is False:
            raise TransferKitError(
                "The adapt stage trains LoRA, so its adapter is merged into a full model for the finetune stage to "
                "start from: remove merge_adapter: false from `adapt` (or `shared`)."
            )
        adapt_keys["merge_adapter"] = True
        adapted = os.path.join(adapted, "merged")
    return base if finetune_keys.get("dry_run") else adapted


def check_publishing(stages: dict[str, dict]) -> None:
    """Which stages push: adapt and finetune, each when its keys (or `shared`) set push_to_hub, to its own
    hub_model_id; the baseline never (a comparison, not a deliverable). No hub_token: stage configs land in output_dir,
    so the token comes from HF_TOKEN or `hf auth login`."""
    if "baseline" in stages:
        stages["baseline"]["keys"]["push_to_hub"] = False
        stages["baseline"]["keys"].pop("hub_merged_model_id", None)
    repos = {}
    for name, stage in stages.items():
        if "hub_token" in stage["keys"]:
            raise TransferKitError("The pipeline writes stage configs to output_dir: remove hub_token, set HF_TOKEN.")
        if stage["keys"].get("push_to_hub"):
            repo = stage["keys"].get("hub_model_id")
            if not repo or repo in repos.values():
                section = "classify" if name == "finetune" else name
                raise TransferKitError(f"Stage {name} pushes: give it its own hub_model_id (in `{section}`).")
            repos[name] = repo


def tapt_corpus_path(output_dir: str) -> str:
    return os.path.join(output_dir, "tapt_corpus.jsonl")


def write_stage_config(output_dir: str, name: str, stage: dict) -> str:
    path = os.path.join(output_dir, f"{name}.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(stage["keys"], handle, sort_keys=False)
    return path


def split_seed(classify_keys: dict) -> int:
    """The seed classify carves its validation/test split with: split_seed, else seed, else TrainingArguments' 42."""
    chosen = next((classify_keys[key] for key in ("split_seed", "seed") if classify_keys.get(key) is not None), 42)
    return int(chosen)


def write_tapt_corpus(classify_keys: dict, output_dir: str) -> str:
    """Every text of the classification train split (carved exactly as stage 2 carves it), one JSON row each, also
    the rows that max_train_samples leaves out of finetuning: labels are scarce, unlabelled text is not."""
    path = tapt_corpus_path(output_dir)
    if os.path.isfile(path):
        return path
    data_keys = {key: value for key, value in classify_keys.items() if key in DataArguments.__dataclass_fields__}
    data_args = DataArguments(**{**data_keys, "max_train_samples": None})
    off = tuple(split for split, phase in SPLIT_PHASES.items() if classify_keys.get(phase) is False)  # as classify
    splits, text_columns, _ = load_classification_splits(
        data_args, ModelArguments(model_name_or_path="unused"), classify_keys.get("problem_type"),
        split_seed(classify_keys), skip=off,
    )  # fmt: skip
    delimiter = data_args.text_column_delimiter or " "
    with open(path + ".partial", "w", encoding="utf-8") as handle:
        for row in splits["train"].select_columns(text_columns):
            sides = (str(row[column]) for column in text_columns if row[column] is not None)
            handle.write(json.dumps({"text": delimiter.join(side for side in sides if side.strip())}) + "\n")
    os.replace(path + ".partial", path)
    logger.info("TAPT corpus: every one of the %d training texts written to %s", len(splits["train"]), path)
    return path


def run_stage(output_dir: str, name: str, stage: dict) -> dict:
    stage_dir = stage["keys"]["output_dir"]
    if is_finished(stage_dir):  # written as the stage's last step: its metrics are all there
        logger.info("Stage %s already finished (%s): not run again.", name, stage_dir)
        with open(os.path.join(stage_dir, "all_results.json")) as handle:
            return {**json.load(handle), "stage_seconds": None}
    started = time.perf_counter()
    metrics = stage["recipe"].main(["--config", os.path.join(output_dir, f"{name}.yaml")])  # written by main()
    return {**metrics, "stage_seconds": round(time.perf_counter() - started, 1)}


if __name__ == "__main__":
    run_recipe(main)  # exit_on_user_error, then leave a launch's process group
