"""Run a recipe in this process (also under `accelerate launch`) and print one JSON line for tests/gpu/acceptance.py:
the recipe's metrics, the peak GPU memory this process allocated, and for a dry run its memory lines.

    python tests/gpu/run_recipe.py classify --config ... [recipe flags]
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEPT = ("test_accuracy", "test_f1_macro", "eval_accuracy", "train_runtime", "train_samples_per_second", "train_loss")


def main() -> None:
    import torch

    recipe, argv = sys.argv[1], sys.argv[2:]
    sys.path.insert(0, REPO)
    module = importlib.import_module(f"recipes.{recipe}")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        metrics = module.main(argv) or {}
    sys.stdout.write(printed.getvalue())
    if int(os.environ.get("RANK", "0")) != 0:
        return
    result = {key: round(float(metrics[key]), 4) for key in KEPT if key in metrics}
    if torch.cuda.is_available():
        result["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    if "--dry_run" in argv:
        result["memory_lines"] = [line for line in printed.getvalue().splitlines() if "GiB" in line or "MiB" in line]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
