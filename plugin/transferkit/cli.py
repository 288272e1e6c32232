"""The `transferkit` command: run the quickstart, launch a recipe under Accelerate, list, copy and validate the
shipped recipes and configs, and push a finished run to the Hub.

  transferkit quickstart [recipe flags]
  transferkit run classify --accelerate_config cpu_ddp --config quickstart/classify --train_file data.csv
  transferkit ls
  transferkit cp classify ./my_classify.py          (also: quickstart/classify, cpu_ddp, fsdp, ...)
  transferkit validate my_config.yaml               (a recipe config or an accelerate config)
  transferkit push outputs/run user/model-name
  transferkit predict outputs/run new_data.csv --output labelled.csv   (recipe flags too: --all_probabilities)
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from transferkit.errors import TransferKitError, exit_on_user_error

# Commands whose unrecognised flags are passed on (to the recipe); the others reject them.
PASS_THROUGH = ("quickstart", "run", "validate", "predict")
PREDICT_DATASET_FLAGS = ("dataset_name", "dataset_config_name", "dataset_split")
LAUNCHER_FLAGS = ("num_processes", "num_machines", "machine_rank", "main_process_ip", "main_process_port")


def add_launcher_flags(parser: argparse.ArgumentParser) -> None:
    """accelerate launch's topology flags, passed through when given (they override the config file)."""
    group = parser.add_argument_group("accelerate launch flags (override the accelerate config)")
    group.add_argument("--num_processes", type=int, default=None, help="processes in total (all nodes)")
    group.add_argument("--num_machines", type=int, default=None, help="nodes")
    group.add_argument("--machine_rank", type=int, default=None, help="this node's rank, 0 .. num_machines-1")
    group.add_argument("--main_process_ip", default=None, help="address of the machine_rank 0 node")
    group.add_argument("--main_process_port", type=int, default=None, help="free port on it (0: pick one)")


def build_parser() -> argparse.ArgumentParser:
    from transferkit.hub import add_push_subparser

    parser = argparse.ArgumentParser(
        prog="transferkit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)

    add(
        "quickstart",
        "Finetune all-MiniLM-L6-v2 on Rotten Tomatoes reviews, offline, and print the test metrics. "
        "`quickstart lora` trains LoRA adapters instead; `quickstart pipeline` runs TAPT, then finetuning, "
        "against the base model. Extra flags go to the recipe (e.g. --num_train_epochs 1).",
    )

    run = add(
        "run",
        "Launch a recipe with `accelerate launch`; flags it does not know are passed to the recipe "
        "(e.g. --learning_rate 1e-4), overriding its --config file.",
    )
    run.add_argument("recipe", help="a recipe name (see `transferkit ls`) or the path of a copied recipe .py")
    run.add_argument(
        "--accelerate_config",
        default=None,
        help="a shipped accelerate config name (cpu_ddp, single_gpu, multi_gpu, fsdp, zero2, zero3, multi_node) or "
        "a YAML path. Default: accelerate's own default config, or one process.",
    )
    run.add_argument(
        "--config", default=None, help="recipe config: a YAML path or a shipped name (quickstart/classify)"
    )
    run.add_argument("--dry_print", action="store_true", help="print the command instead of running it")
    add_launcher_flags(run)

    ls = add("ls", "List the recipes, the recipe configs and the accelerate configs that ship with TransferKit.")
    ls.add_argument("--paths", action="store_true", help="also print where each file is")

    cp = add("cp", "Copy a recipe, a recipe config or an accelerate config to edit it.")
    cp.add_argument("name", help="e.g. classify, quickstart/classify, cpu_ddp, slurm_multi_node.sh")
    cp.add_argument("destination", help="a file path, or a folder to copy into")
    cp.add_argument("--force", action="store_true", help="overwrite the destination if it exists")

    validate = add(
        "validate",
        "Check a recipe config (every key and value, without loading data or models) or an accelerate config. "
        "Flags it does not know are treated as command-line overrides of the recipe config.",
    )
    validate.add_argument("path", help="the YAML file to check")
    validate.add_argument("--recipe", default=None, help="the recipe a recipe config is for (default: inferred)")

    add_push_subparser(commands)

    predict = add(
        "predict",
        "Label new data with a finetuned classifier, in this process (several: transferkit run predict "
        "--accelerate_config cpu_ddp --model_name_or_path MODEL --test_file DATA --output_file FILE). Other flags "
        "go to the predict recipe (--text_column_names, --all_probabilities, --per_device_eval_batch_size, ...).",
    )
    predict.add_argument("model", help="a classify output folder, its merged/ folder, a LoRA adapter folder or Hub id")
    predict.add_argument("data", nargs="?", default=None, help="a csv/tsv/json/jsonl/parquet/txt file, folder or glob")
    predict.add_argument("--output", "--output_file", dest="output", required=True, help="a .csv, .jsonl or .parquet")
    predict.add_argument("--dataset_name", default=None, help="a Hub dataset to label instead of DATA")
    predict.add_argument("--dataset_config_name", default=None, help="its configuration")
    predict.add_argument("--dataset_split", default=None, help="its split (default: test, or its only split)")
    return parser


def cmd_predict(args: argparse.Namespace, overrides: list[str]) -> int:
    """The predict recipe with the positional MODEL and DATA as its options (argparse gives the Hub dataset flags
    their own options here, so a value after them is never taken for DATA)."""
    from transferkit.recipes.predict import main as predict

    flags = {item.split("=")[0] for item in overrides}
    if args.data is None and args.dataset_name is None and not flags & {"--test_file", "--data"}:
        raise TransferKitError(
            "transferkit predict: give DATA right after MODEL (transferkit predict MODEL DATA [flags] --output FILE) "
            "or --dataset_name; a file named after a flag is taken as that flag's value."
        )
    argv = ["--model_name_or_path", args.model, "--output_file", args.output]
    given = {"test_file": args.data, **{key: getattr(args, key) for key in PREDICT_DATASET_FLAGS}}
    argv += [item for key, value in given.items() if value is not None for item in (f"--{key}", value)]
    predict(argv + overrides)
    return 0


def cmd_run(args: argparse.Namespace, overrides: list[str]) -> int:
    from transferkit.launch import build_launch_command, check_launchable

    launcher = {flag: getattr(args, flag) for flag in LAUNCHER_FLAGS}
    command = build_launch_command(args.recipe, args.accelerate_config, args.config, overrides, launcher)
    if args.dry_print:
        print(shlex.join(command))
        try:
            check_launchable(args.accelerate_config)
        except TransferKitError as err:
            print(f"warning: {err}", file=sys.stderr)
        return 0
    check_launchable(args.accelerate_config)
    print("Running:", shlex.join(command), flush=True)
    # The same interpreter's accelerate, not whichever `accelerate` comes first on PATH.
    argv = [sys.executable, "-m", "accelerate.commands.launch", *command[2:]]
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover - execv does not return


def cmd_ls(args: argparse.Namespace) -> int:
    from transferkit.launch import list_accelerate_configs, list_recipe_configs, list_recipes

    sections = [
        ("Recipes (transferkit run <name> / accelerate launch -m transferkit.recipes.<name>)", list_recipes()),
        ("Recipe configs (--config <name>)", list_recipe_configs()),
        ("Accelerate configs (--accelerate_config <name>)", list_accelerate_configs()),
    ]
    for title, entries in sections:
        print(title)
        width = max((len(entry.name) for entry in entries), default=0)
        for entry in entries:
            print(f"  {entry.name:{width}}  {entry.summary}")
            if args.paths:
                print(f"  {'':{width}}  {entry.path}")
        print()
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    from transferkit.launch import copy_to

    print(f"Copied {args.name} to {copy_to(args.name, args.destination, args.force)}")
    return 0


def cmd_validate(args: argparse.Namespace, overrides: list[str]) -> int:
    from transferkit.validate import validate_file

    try:
        kind, notes = validate_file(args.path, args.recipe, overrides)
    except TransferKitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"OK: {args.path} ({kind})")
    for note in notes:
        print(f"  note: {note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in PASS_THROUGH:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "quickstart":
        from transferkit.quickstart import run_quickstart

        return run_quickstart(extra)
    if args.command == "run":
        return cmd_run(args, extra)
    if args.command == "validate":
        return cmd_validate(args, extra)
    if args.command == "ls":
        return cmd_ls(args)
    if args.command == "cp":
        return cmd_cp(args)
    if args.command == "predict":
        return cmd_predict(args, extra)
    return args.func(args)  # push


def entry_point() -> None:
    exit_on_user_error(lambda: sys.exit(main()))


if __name__ == "__main__":
    entry_point()
