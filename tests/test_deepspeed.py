"""DeepSpeed ZeRO-2 and ZeRO-3 through the shipped accelerate configs, on 2 CPU processes (gloo), as a user runs them.

The accelerate configs are the shipped zero2.yaml / zero3.yaml with only what a CPU needs changed (2 processes,
use_cpu, no gpu_ids); the launch goes through `transferkit run`. ZeRO shards gradients and optimizer states (and, at
stage 3, the parameters) across the processes, so the checks are: the same losses as one plain process, a sharded
optimizer state per rank, and saved weights (gathered from the shards) that reload and give the run's own test
predictions. DeepSpeed must be installed (`python -m pip install --no-build-isolation deepspeed`, part of the
README's test command); its first use on a machine compiles a small C++ op (up to 2 minutes, then cached in
~/.cache/torch_extensions).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.tiny import REPO

pytestmark = pytest.mark.slow
COMMON = (
    "--max_steps 3 --logging_steps 1 --train_sampling_strategy random --eval_strategy no --save_strategy steps "
    "--save_steps 3 --test_split_percentage 10 --max_test_samples 15 --learning_rate 3e-3 --seed 1 "
    "--report_to none --disable_tqdm true"
).split()


@pytest.fixture(scope="module", autouse=True)
def deepspeed_installed() -> None:
    if importlib.util.find_spec("deepspeed") is None:
        pytest.fail(
            "DeepSpeed is not installed, so these tests cannot run: python -m pip install --no-build-isolation "
            "deepspeed (the README's test command installs it)."
        )


def cpu_zero_config(directory: Path, stage: int) -> str:
    """The shipped zeroN.yaml, made runnable on a CPU machine: 2 processes, use_cpu, no GPU ids."""
    config = yaml.safe_load((Path(REPO) / "accelerate_configs" / f"zero{stage}.yaml").read_text())
    assert config["distributed_type"] == "DEEPSPEED" and config["deepspeed_config"]["zero_stage"] == stage
    assert config["mixed_precision"] == "no"  # precision comes from the recipe config (fp32 on CPU)
    config.pop("gpu_ids")
    config.update(num_processes=2, use_cpu=True)
    path = directory / f"zero{stage}_cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def run_classify(accelerate_config: str, *args: str) -> subprocess.CompletedProcess:
    """`transferkit run classify` under the given accelerate config, in a fresh environment (no ACCELERATE_* left
    over from in-process runs), failing the test on a non-zero exit."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ACCELERATE_")}
    command = [sys.executable, "-m", "transferkit.cli", "run", "classify", "--accelerate_config", accelerate_config]
    command += ["--main_process_port", "0", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def classify_args(model: str, train_file: str, output_dir: Path, per_device: int, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", model, "--train_file", train_file, "--output_dir", str(output_dir),
        "--per_device_train_batch_size", str(per_device), *COMMON, *extra,
    ]  # fmt: skip


def logged_losses(output_dir: Path) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def predictions(output_dir: Path) -> tuple[list[str], torch.Tensor]:
    """The test texts and the class probabilities the run itself wrote for them."""
    with open(output_dir / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    written = [[float(row["prob_neg"]), float(row["prob_pos"])] for row in rows]
    return [row["text"] for row in rows], torch.tensor(written)


@torch.no_grad()
def probabilities(model, tokenizer, texts: list[str]) -> torch.Tensor:
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    return model.eval()(**batch).logits.softmax(-1)


def sharded_optimizer_states(output_dir: Path) -> list[str]:
    return sorted(path.name for path in output_dir.glob("checkpoint-3/global_step3/*optim_states.pt"))


@pytest.fixture(scope="module")
def one_process_losses(tiny_bert, reviews_csv, tmp_path_factory) -> list[float]:
    """The reference: one plain process with the global batch of the 2-process runs (8 = 2 x 4)."""
    from transferkit.recipes.classify import main

    output_dir = tmp_path_factory.mktemp("one") / "run"
    main(classify_args(tiny_bert, reviews_csv, output_dir, 8))
    losses = logged_losses(output_dir)
    assert len(losses) == 3
    return losses


def test_zero2_matches_one_process_and_shards_the_optimizer(tiny_bert, reviews_csv, tmp_path, one_process_losses):
    out = tmp_path / "zero2"
    result = run_classify(cpu_zero_config(tmp_path, 2), *classify_args(tiny_bert, reviews_csv, out, 4))
    assert "Global batch 8 = 4 per device x 1 accumulation steps x 2 processes" in result.stderr
    assert logged_losses(out) == pytest.approx(one_process_losses, abs=1e-4)
    assert len(sharded_optimizer_states(out)) == 2, sharded_optimizer_states(out)  # one shard per rank
    assert (out / "model.safetensors").is_file()


def test_zero3_saves_a_full_model_that_reloads_and_predicts(tiny_bert, reviews_csv, tmp_path, one_process_losses):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "zero3"
    run_classify(cpu_zero_config(tmp_path, 3), *classify_args(tiny_bert, reviews_csv, out, 4))
    assert logged_losses(out) == pytest.approx(one_process_losses, abs=1e-4)
    assert len(sharded_optimizer_states(out)) == 2
    model = AutoModelForSequenceClassification.from_pretrained(out)  # gathered from the shards at save time
    assert model.config.id2label == {0: "neg", 1: "pos"}
    texts, written = predictions(out)
    assert len(texts) == 15
    reloaded = probabilities(model, AutoTokenizer.from_pretrained(out), texts)
    torch.testing.assert_close(reloaded, written, atol=1e-4, rtol=0)


def test_zero3_lora_saves_an_adapter_that_reloads_and_predicts(tiny_bert, reviews_csv, tmp_path):
    from peft import AutoPeftModelForSequenceClassification
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from transferkit.lora import label_kwargs

    out = tmp_path / "zero3_lora"
    lora = ["--use_peft", "true", "--lora_r", "4"]
    run_classify(cpu_zero_config(tmp_path, 3), *classify_args(tiny_bert, reviews_csv, out, 4, *lora))
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    saved = load_file(out / "adapter_model.safetensors")
    assert all(tensor.numel() > 0 for tensor in saved.values())  # not the empty placeholders of ZeRO-3 partitions
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in saved.items())  # B starts at zero
    results = json.loads((out / "all_results.json").read_text())
    assert 0 < results["trainable_params"] < results["total_params"]
    adapter = AutoPeftModelForSequenceClassification.from_pretrained(out, **label_kwargs(str(out)))
    texts, written = predictions(out)
    reloaded = probabilities(adapter, AutoTokenizer.from_pretrained(out), texts)
    torch.testing.assert_close(reloaded, written, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("warmup", "kept"), [("3", True), ("1", False)], ids=["warmup-3-of-3", "warmup-1-of-3"])
def test_zero2_head_warmup_holds_the_encoder_then_lets_it_learn(warmup, kept, tiny_bert, reviews_csv, tmp_path):
    """DeepSpeed steps inside backward: the encoder is held by its param groups' zero learning rate (weight decay
    on, which would otherwise shrink it), not by gradients dropped before a step that already happened; after the
    warm-up its flat partitions' optimizer state restarts and it learns."""
    from tests.test_head_warmup import assert_encoder_kept, encoder_weights

    out = tmp_path / "zero2_warmup"
    options = ["--head_warmup_steps", warmup, "--weight_decay", "0.1"]
    run_classify(cpu_zero_config(tmp_path, 2), *classify_args(tiny_bert, reviews_csv, out, 4, *options))
    assert_encoder_kept(encoder_weights(tiny_bert), encoder_weights(str(out)), kept)


def test_zero2_dry_run_plans_without_a_backward_pass_and_writes_nothing(tiny_bert, reviews_csv, tmp_path):
    """Before training, DeepSpeed has not wrapped the model: a timed backward through it would fail. The plan is
    printed without a time estimate."""
    out = tmp_path / "zero2_dry"
    result = run_classify(
        cpu_zero_config(tmp_path, 2), *classify_args(tiny_bert, reviews_csv, out, 4, "--dry_run", "true")
    )
    assert "dry run: 3 optimizer steps" in result.stderr
    assert "no time estimate under FSDP or DeepSpeed" in result.stderr
    assert not out.exists() or not [path for path in out.rglob("*") if path.is_file()]
