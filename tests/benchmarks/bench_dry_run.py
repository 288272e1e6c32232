"""Benchmark (not a test): the dry run's time estimate against the run it estimates, one after the other.

Usage::

    python tests/benchmarks/bench_dry_run.py [--max-train-samples N] [--epochs E] [--repeats R] [--threads T]
        [--out DIR]

In one process, for each repeat: the quickstart classify config (recipes/configs/quickstart/classify.yaml, the
all-MiniLM-L6-v2 model and the Rotten Tomatoes reviews, installed offline as `transferkit quickstart` does) with
``--dry_run true``, whose plan (``plan_run``'s dict) is read; then the same config for real. Both are limited the
same way so that a run takes a few minutes on 2 CPU cores (``num_train_epochs``, ``max_train_samples``: the
training split only; evaluation and saves as configured: every epoch, on the whole validation split). Compared:

* the estimate (``estimated_train_seconds``) with Trainer's ``train_runtime``, which is what it estimates: the
  training loop from its first batch to its last step, evaluations and checkpoint saves during training included;
* its parts: training steps with ThroughputCallback's ``train_compute_seconds`` (time in training steps, data loading
  included, evaluations and saves excluded), evaluations with the ``eval_runtime`` of each evaluation made during
  training (trainer_state.json), saves with what remains of ``train_runtime`` (saves and the loop's own overhead);
* apart, the test split's prediction, which the recipe runs after training, with its ``test_runtime``.

The machine is shared and its speed drifts, so the report gives each repeat's ratio; the dry run and the run it is
compared with are back to back, and the report says how much CPU other processes took meanwhile (from /proc/stat);
``--threads 1`` makes both far less sensitive to that (with two threads on two cores, a third busy thread stalls
every parallel region). Reports: ``dry_run_estimate.json`` and ``.md`` in ``--out`` (``dry_run_estimate_threads1``
with ``--threads 1``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The quickstart's model is read from TransferKit's own offline cache: no Hub access (huggingface_hub reads this once,
# at import, so it is set before anything imports it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import transferkit  # noqa: F401
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugin"))

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "tests" / "benchmarks" / "results" / "2026-12-03-cpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-train-samples", type=int, default=1500, help="training rows (validation: all)")
    parser.add_argument("--epochs", type=float, default=1.0, help="num_train_epochs")
    parser.add_argument("--repeats", type=int, default=1, help="dry run + real run pairs, one after the other")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--config", default=str(REPO / "recipes" / "configs" / "quickstart" / "classify.yaml"))
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the JSON and Markdown reports")
    return parser.parse_args(argv)


def recipe_argv(args: argparse.Namespace, output_dir: str, *extra: str) -> list[str]:
    """The quickstart's command line (transferkit.quickstart.run_quickstart), with the benchmark's limits."""
    from transferkit.quickstart import prepare_offline

    reviews, cache_dir = prepare_offline()
    return [
        *("--config", args.config, "--train_file", reviews, "--cache_dir", cache_dir),
        *("--output_dir", output_dir, "--overwrite_output_dir", "true"),
        *("--num_train_epochs", str(args.epochs), "--max_train_samples", str(args.max_train_samples)),
        *("--report_to", "none", "--disable_tqdm", "true"),
        *extra,
    ]


def cpu_clock() -> tuple[float, float, float] | None:
    """(wall, CPU seconds busy on the whole machine, CPU seconds of this process) from /proc/stat (Linux); the
    difference of two readings tells how much other work shared the cores meanwhile."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    own = os.times()
    return time.perf_counter(), (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def others_cores(start: tuple | None, end: tuple | None) -> float | None:
    """Cores' worth of CPU that other processes used between two cpu_clock() readings."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    return max(0.0, (end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0])


def dry_run(args: argparse.Namespace) -> tuple[dict, float, bool]:
    """(the plan, the dry run's wall seconds, whether its output_dir stayed empty)."""
    import transferkit.recipes.classify as recipe

    captured: dict = {}
    plan_run = recipe.plan_run

    def capture(*call_args, **kwargs) -> dict:
        captured.update(plan_run(*call_args, **kwargs))
        return captured

    recipe.plan_run = capture  # the recipe calls print_plan(plan_run(trainer, tokenized)): read what it printed
    scratch = tempfile.mkdtemp(prefix="bench-dry-run-")
    try:
        output_dir = os.path.join(scratch, "dry")
        started = time.perf_counter()
        recipe.main(recipe_argv(args, output_dir, "--dry_run", "true"))
        seconds = time.perf_counter() - started
        untouched = not os.path.exists(output_dir) or os.listdir(output_dir) == []
        return captured, seconds, untouched and os.listdir(scratch) in ([], ["dry"])
    finally:
        recipe.plan_run = plan_run
        shutil.rmtree(scratch, ignore_errors=True)


def real_run(args: argparse.Namespace) -> dict:
    """Train for real; return train_runtime, its parts and the test prediction's runtime."""
    import transferkit.recipes.classify as recipe

    scratch = tempfile.mkdtemp(prefix="bench-real-run-")
    try:
        output_dir = os.path.join(scratch, "run")
        metrics = recipe.main(recipe_argv(args, output_dir))
        with open(os.path.join(output_dir, "trainer_state.json")) as handle:
            history = json.load(handle)["log_history"]  # written right after train(): evaluations during training
        saves = len([name for name in os.listdir(output_dir) if name.startswith("checkpoint-")])
        evaluations = [entry["eval_runtime"] for entry in history if "eval_runtime" in entry]
        return {
            "train_runtime": float(metrics["train_runtime"]),
            "train_compute_seconds": float(metrics["train_compute_seconds"]),
            "global_step": next(entry["step"] for entry in reversed(history) if "step" in entry),
            "evaluations": len(evaluations),
            "eval_seconds": sum(evaluations),
            "checkpoints_kept": saves,
            "test_runtime": float(metrics["test_runtime"]) if "test_runtime" in metrics else None,
            "eval_accuracy": metrics.get("eval_accuracy"),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def compare(plan: dict, run: dict) -> dict:
    """The estimate and the measurement, whole and by part; ratios are estimate / measured."""
    estimated_evals = plan["evaluations"] * plan.get("seconds_per_evaluation", 0.0)
    estimated_saves = plan["saves"] * plan.get("seconds_per_save", 0.0)
    measured_rest = run["train_runtime"] - run["train_compute_seconds"] - run["eval_seconds"]
    return {
        "estimated_train_seconds": plan["estimated_train_seconds"],
        "measured_train_runtime": run["train_runtime"],
        "ratio": plan["estimated_train_seconds"] / run["train_runtime"],
        "steps": (plan["train_steps_seconds"], run["train_compute_seconds"]),
        "seconds_per_step": (plan["seconds_per_step"], run["train_compute_seconds"] / run["global_step"]),
        "evaluations": (estimated_evals, run["eval_seconds"]),
        "saves_and_loop_overhead": (estimated_saves, measured_rest),
        "test_prediction": (plan.get("test_prediction_seconds"), run["test_runtime"]),
    }


def environment() -> dict:
    import torch
    import transformers

    return {
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpus": os.cpu_count(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:  # fewer threads than cores: less slowed down when other work takes a core (OpenMP barriers)
        import torch

        torch.set_num_threads(args.threads)
    repeats = []
    for repeat in range(args.repeats):
        load_before = os.getloadavg()[0]
        print(f"[repeat {repeat + 1}/{args.repeats}] dry run ...", flush=True)
        clocks = [cpu_clock()]
        plan, dry_seconds, untouched = dry_run(args)
        clocks.append(cpu_clock())
        print(f"[repeat {repeat + 1}/{args.repeats}] real run ...", flush=True)
        run = real_run(args)
        clocks.append(cpu_clock())
        repeats.append(
            {
                "plan": {key: value for key, value in plan.items() if key not in ("examples", "tokens")},
                "examples": plan["examples"],
                "dry_run_seconds": dry_seconds,
                "dry_run_output_dir_untouched": untouched,
                "run": run,
                "comparison": compare(plan, run),
                "loadavg_1min": [load_before, os.getloadavg()[0]],
                "other_processes_cores": [others_cores(*clocks[:2]), others_cores(*clocks[1:])],
            }
        )
    report = {
        "command": "python tests/benchmarks/bench_dry_run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": os.path.relpath(args.config, REPO),
        "limits": {"num_train_epochs": args.epochs, "max_train_samples": args.max_train_samples},
        "environment": environment(),
        "repeats": repeats,
        "median_ratio": statistics.median(r["comparison"]["ratio"] for r in repeats),
    }
    name = "dry_run_estimate" + (f"_threads{args.threads}" if args.threads else "")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{name}.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    text = markdown(report)
    with open(os.path.join(args.out, f"{name}.md"), "w") as handle:
        handle.write(text)
    print(text)
    return 0


def _pair(values: tuple[float | None, float | None]) -> str:
    estimated, measured = values
    if estimated is None or measured is None:
        return "-"
    ratio = f" ({estimated / measured:.2f}x)" if measured > 0.05 else ""
    return f"{estimated:.1f} s / {measured:.1f} s{ratio}"


def _cores(values: list[float | None]) -> str:
    return " / ".join("-" if value is None else f"{value:.2f}" for value in values)


def markdown(report: dict) -> str:
    env, first = report["environment"], report["repeats"][0]
    plan, run = first["plan"], first["run"]
    lines = [
        "# The dry run's time estimate against the real run",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Config `{report['config']}` limited to {report['limits']['num_train_epochs']:g} epoch(s) and "
        f"{report['limits']['max_train_samples']} training rows; evaluation and saves as configured. Examples: "
        + ", ".join(f"{name} {count}" for name, count in first["examples"].items())
        + f". {plan['total_steps']} optimizer steps, {plan['evaluations']} evaluation(s) of {plan.get('eval_batches')} "
        f"batches, {plan['saves']} save(s) of {plan.get('checkpoint_bytes', 0) / 2**20:.0f} MiB (the dry run's "
        f"save timing: {plan.get('save_timing', 'none')}).",
        "",
        f"Machine: {env['cpus']} CPUs ({env['device']}), {env['torch_threads']} torch threads, Python "
        f"{env['python']}, torch {env['torch']}, transformers {env['transformers']}; shared with other work, so wall "
        "times drift. The dry run and the real run share one process, so the real run finds some one-time costs "
        "(the first step's) already paid, which a run in its own process (the recipes' way) pays again.",
        "",
        "Estimate / measured (ratio): the estimate is the dry run's `estimated_train_seconds`; measured is Trainer's "
        "`train_runtime` (training loop, evaluations and saves during training included).",
        "",
        "| repeat | estimate / measured | training steps | s per step | evaluations | saves + loop overhead "
        "| test prediction (after training, not in the estimate) | dry run took | load 1 min | other work, cores "
        "(dry / real run) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for index, repeat in enumerate(report["repeats"], 1):
        c, load, others = repeat["comparison"], repeat["loadavg_1min"], repeat["other_processes_cores"]
        per_step = c["seconds_per_step"]
        lines.append(
            f"| {index} | **{c['estimated_train_seconds']:.1f} s / {c['measured_train_runtime']:.1f} s "
            f"({c['ratio']:.2f}x)** | {_pair(c['steps'])} | {per_step[0]:.3f} / {per_step[1]:.3f} "
            f"| {_pair(c['evaluations'])} | {_pair(c['saves_and_loop_overhead'])} | {_pair(c['test_prediction'])} "
            f"| {repeat['dry_run_seconds']:.0f} s | {load[0]:.1f} -> {load[1]:.1f} | {_cores(others)} |"
        )
    lines += [
        "",
        f"Median ratio over {len(report['repeats'])} repeat(s): **{report['median_ratio']:.2f}x** (target: within "
        "0.80-1.20x). Output dir of every dry run left untouched: "
        f"{all(r['dry_run_output_dir_untouched'] for r in report['repeats'])}. Validation accuracy after the run: "
        f"{run['eval_accuracy']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
