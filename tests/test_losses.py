"""Where the loss is computed: class-weighted cross-entropy keeps label smoothing, and a causal LM's loss is
normalised over the whole accumulated (and distributed) batch, so padding never reweights its tokens."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, TrainingArguments

from recipes import mlm
from tests.tiny import launch_two_processes, save_tiny_decoder
from transferkit.trainers import ClassificationTrainer


def test_class_weighted_loss_keeps_label_smoothing(tiny_bert, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    torch.nn.init.normal_(model.classifier.weight, std=20.0)  # confident logits: smoothing changes the loss
    args = TrainingArguments(output_dir=str(tmp_path), label_smoothing_factor=0.2, use_cpu=True, report_to="none")
    trainer = ClassificationTrainer(model=model, args=args, class_weights=[1.0, 3.0])
    inputs = {"input_ids": torch.tensor([[2, 5, 6, 3], [2, 15, 16, 3]]), "labels": torch.tensor([1, 1])}
    loss = trainer.compute_loss(model, dict(inputs))
    logits = model(input_ids=inputs["input_ids"]).logits
    weights = torch.tensor([1.0, 3.0])
    expected = F.cross_entropy(logits, inputs["labels"], weight=weights, label_smoothing=0.2)
    unsmoothed = F.cross_entropy(logits, inputs["labels"], weight=weights)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() != pytest.approx(unsmoothed.item(), rel=1e-3)


@pytest.fixture(scope="module")
def gpt2_and_lines(tmp_path_factory) -> tuple[str, str]:
    """A tiny GPT-2 and, read in order, two short lines then two long ones: the first micro-batch (or rank) holds 8
    real tokens, the second 40, so a mean of per-micro-batch means weights a short line's tokens 5x."""
    root = tmp_path_factory.mktemp("clm-loss")
    long = "the plot was {0} and the acting was cold . " * 2
    lines = ["a good film", "so dull", long.format("bad"), long.format("flat")] * 5
    (root / "lines.txt").write_text("\n".join(lines) + "\n")
    return save_tiny_decoder(str(root / "gpt2"), "gpt2"), str(root / "lines.txt")


def one_sgd_step(model: str, corpus: str, output_dir, per_device: int, accumulation: int) -> list[str]:
    """One plain-SGD step on the corpus's first 4 lines: the saved weights are w - lr * gradient."""
    return [
        *("--objective", "clm", "--line_by_line", "true", "--model_name_or_path", model, "--train_file", corpus),
        *("--output_dir", str(output_dir), "--max_seq_length", "32", "--validation_split_percentage", "0"),
        *("--per_device_train_batch_size", str(per_device), "--gradient_accumulation_steps", str(accumulation)),
        *("--max_steps", "1", "--optim", "sgd", "--learning_rate", "0.5", "--max_grad_norm", "0"),
        *("--train_sampling_strategy", "sequential"),
        *("--logging_steps", "1", "--save_strategy", "no", "--seed", "0", "--disable_tqdm", "true"),
    ]


def loss_and_weights(output_dir) -> tuple[float, dict[str, torch.Tensor]]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return next(entry["loss"] for entry in history if "loss" in entry), load_file(output_dir / "model.safetensors")


def assert_same_step(run, reference) -> None:
    (loss, weights), (expected_loss, expected_weights) = loss_and_weights(run), loss_and_weights(reference)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for name, tensor in expected_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_clm_loss_with_padding_and_accumulation_equals_one_large_batch(gpt2_and_lines, tmp_path):
    model, corpus = gpt2_and_lines
    mlm.main(one_sgd_step(model, corpus, tmp_path / "b4", per_device=4, accumulation=1))
    mlm.main(one_sgd_step(model, corpus, tmp_path / "b2x2", per_device=2, accumulation=2))
    assert_same_step(tmp_path / "b2x2", tmp_path / "b4")


@pytest.mark.slow
def test_clm_loss_with_padding_under_two_processes_equals_one_process(gpt2_and_lines, tmp_path):
    model, corpus = gpt2_and_lines
    mlm.main(one_sgd_step(model, corpus, tmp_path / "one", per_device=4, accumulation=1))
    launch_two_processes("mlm.py", one_sgd_step(model, corpus, tmp_path / "two", per_device=2, accumulation=1))
    assert_same_step(tmp_path / "two", tmp_path / "one")


def sgd_step_with_fixed_masks(model_dir: str, output_dir, per_device: int, accumulation: int) -> dict:
    """One SGD step of the MLM recipe's model and collator on rows whose masks are fixed in advance (the
    evaluation masks), so two batch layouts see the same targets; the sparse head is on, as in the recipe."""
    from datasets import Dataset
    from transformers import AutoModelForMaskedLM, AutoTokenizer, Trainer

    from transferkit.arguments import MLMArguments
    from transferkit.mlm_data import MLMCollator, mask_for_evaluation
    from transferkit.models import mark_loss_as_per_batch_mean
    from transferkit.sparse_mlm import enable_sparse_mlm_head

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = ["a good film", "so dull", "the plot was bad and the acting was cold . " * 3, "fun and warm"] * 2
    rows = Dataset.from_dict(dict(tokenizer(texts, return_special_tokens_mask=True)))
    rows = mask_for_evaluation(rows, tokenizer).remove_columns("token_type_ids")
    model = AutoModelForMaskedLM.from_pretrained(model_dir)
    mark_loss_as_per_batch_mean(model)  # what the recipe's loader does for a masked LM
    assert enable_sparse_mlm_head(model)
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
        max_steps=1, optim="sgd", learning_rate=0.5, max_grad_norm=0, train_sampling_strategy="sequential",
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, remove_unused_columns=False,
    )  # fmt: skip
    collator = MLMCollator(tokenizer, MLMArguments())
    Trainer(model=model, args=args, train_dataset=rows, data_collator=collator).train()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_sparse_mlm_loss_with_accumulation_equals_one_large_batch(tiny_bert, tmp_path):
    """Masked-token counts differ between micro-batches; the sparse head divides by the whole batch's count."""
    large = sgd_step_with_fixed_masks(tiny_bert, tmp_path / "b4", per_device=4, accumulation=1)
    accumulated = sgd_step_with_fixed_masks(tiny_bert, tmp_path / "b2x2", per_device=2, accumulation=2)
    for name, tensor in large.items():
        torch.testing.assert_close(accumulated[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
