"""Decoders: causal-LM continued pretraining (recipes/mlm.py with objective: clm), decoder classification, the
pipeline chaining both, padding and pad-token edge cases, and the objective/model mismatch errors.

Tiny GPT-2 and Llama-style models with a word-level tokenizer (tests/tiny.py), built offline; a few steps each.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
import yaml
from datasets import Dataset, DatasetDict
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    DataCollatorWithPadding,
    EvalPrediction,
    GPT2Config,
    LlamaConfig,
    T5Config,
    Trainer,
    TrainingArguments,
)

from recipes import classify, mlm, pipeline
from tests.tiny import build_tokenizer, launch_two_processes, review, save_tiny_decoder, write_templated_corpus
from transferkit.arguments import DataArguments, MLMArguments
from transferkit.errors import TransferKitError
from transferkit.lora import LoraArguments, apply_lora, label_kwargs, load_lora_model, save_lora_outputs
from transferkit.mlm_data import CLMCollator, next_token_accuracy, tokenize_for_mlm
from transferkit.models import ensure_pad_token, supported_objectives

LABELS = {0: "neg", 1: "pos"}
TEXTS = ["a good film", "so dull and cold , really the plot was bad"]  # different lengths: the batch gets padded


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> str:
    return save_tiny_decoder(str(tmp_path_factory.mktemp("tiny-gpt2")), "gpt2")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return save_tiny_decoder(str(tmp_path_factory.mktemp("tiny-llama")), "llama")


def three_step_args(output_dir, **extra) -> TrainingArguments:
    """Three quick CPU steps at a high learning rate: enough for trained weights to differ from the initial ones."""
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=5e-2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        **extra,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return write_templated_corpus(str(tmp_path_factory.mktemp("corpus") / "corpus.txt"))


def clm_args(model: str, corpus: str, output_dir, *extra: str) -> list[str]:
    return [
        "--objective",
        "clm",
        "--model_name_or_path",
        model,
        "--train_file",
        corpus,
        "--output_dir",
        str(output_dir),
        "--max_seq_length",
        "32",
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "5e-3",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
        *extra,
    ]


def tokenize(tokenizer, texts: list[str], mlm_args: MLMArguments, size: int = 16) -> Dataset:
    return tokenize_for_mlm(
        DatasetDict({"train": Dataset.from_dict({"text": texts})}),
        tokenizer,
        ["text"],
        size,
        DataArguments(train_file="unused"),
        mlm_args,
        TrainingArguments(output_dir="unused", report_to="none"),
    )["train"]


@torch.no_grad()
def logits(model, inputs: dict) -> torch.Tensor:
    model.eval()
    return model(**inputs).logits


def padded_batch(tokenizer) -> dict:
    return dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))


def assert_padding_free(model, tokenizer) -> None:
    """Each text's logits in a padded batch equal its logits alone: pooling reads the last real token."""
    batched = logits(model, padded_batch(tokenizer))
    for row, text in enumerate(TEXTS):
        alone = logits(model, dict(tokenizer([text], return_tensors="pt")))
        torch.testing.assert_close(batched[row], alone[0], atol=1e-5, rtol=0)


# -- CLM continued pretraining ------------------------------------------------------------------------------------
def test_clm_run_writes_model_metrics_card_and_learns(tiny_gpt2, corpus, tmp_path):
    out = tmp_path / "clm"
    metrics = mlm.main(clm_args(tiny_gpt2, corpus, out, "--num_train_epochs", "3", "--logging_steps", "5"))
    assert metrics["eval_perplexity"] == pytest.approx(np.exp(metrics["eval_loss"]), rel=1e-4)
    assert 0 < metrics["eval_accuracy"] <= 1  # next-token accuracy
    results = json.loads((out / "all_results.json").read_text())
    assert {"eval_loss", "eval_perplexity", "eval_accuracy", "train_loss"} <= set(results)
    assert (out / "training_curves.png").is_file()
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    assert len(eval_losses) >= 3 and eval_losses[-1] < eval_losses[0] - 0.1  # it learns the templates
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "type: perplexity" in card
    model = AutoModelForCausalLM.from_pretrained(out)  # a standard causal LM checkpoint
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "gpt2"
    assert tokenizer.pad_token == tokenizer.eos_token and model.config.pad_token_id == tokenizer.eos_token_id


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_packed_clm_chunks_end_documents_with_eos(kind, tiny_gpt2, tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2 if kind == "gpt2" else tiny_llama)
    documents = ["good film . " * 3, "bad plot ! " * 4, "the cast was fun", "a dull ending"]
    chunks = tokenize(tokenizer, documents, MLMArguments(objective="clm"), size=8)
    assert chunks.column_names == ["input_ids", "attention_mask"]  # no special-token mask for a causal LM
    stream = [token for doc in documents for token in tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]]
    assert chunks["input_ids"] == [stream[start : start + 8] for start in range(0, len(stream) // 8 * 8, 8)]
    flat = [token for ids in chunks["input_ids"] for token in ids]
    assert flat.count(tokenizer.eos_token_id) >= 3
    if kind == "llama":  # every document starts with BOS, right after the previous one's EOS
        after_eos = [flat[i + 1] for i, token in enumerate(flat[:-1]) if token == tokenizer.eos_token_id]
        assert after_eos and set(after_eos) == {tokenizer.bos_token_id}


def test_clm_lines_and_collator_keep_eos_targets(tiny_gpt2):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2, padding_side="left")  # as a generation setup may ship
    ensure_pad_token(tokenizer, AutoModelForCausalLM.from_pretrained(tiny_gpt2), padding_side=None)  # as the recipe
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos  # padding with EOS: the trap the collator must not fall into
    assert tokenizer.padding_side == "left"  # kept for the saved tokenizer; the collator pads right regardless
    lines = tokenize(
        tokenizer,
        ["good film\nbad plot and a dull ending\n\n" + "fun " * 30],
        MLMArguments(objective="clm", line_by_line=True),
    )
    assert [ids[-1] for ids in lines["input_ids"]] == [eos] * 3  # every line ends with EOS, even a truncated one
    assert [len(ids) for ids in lines["input_ids"]] == [3, 7, 16]
    batch = CLMCollator(tokenizer)([lines[i] for i in range(3)])
    assert batch["input_ids"].shape == (3, 16)
    real = batch["attention_mask"] == 1
    assert torch.equal(batch["labels"][real], batch["input_ids"][real])  # every real token is a target, EOS too
    assert (batch["labels"][~real] == -100).all() and (batch["input_ids"][~real] == eos).all()
    assert real[0].tolist() == [True] * 3 + [False] * 13  # padded on the right


def test_next_token_accuracy_compares_with_the_following_label():
    labels = np.array([[5, 6, 7, 8], [5, 6, -100, -100]])
    predictions = np.array([[6, 7, 0, 1], [6, 9, 9, 9]])  # row 0: two of three right; row 1: one scored, right
    assert next_token_accuracy(EvalPrediction(predictions, labels)) == {"accuracy": pytest.approx(3 / 4)}
    dense = np.eye(10)[predictions]  # [N, L, V] logits give the same
    assert next_token_accuracy(EvalPrediction(dense, labels))["accuracy"] == pytest.approx(3 / 4)


def test_clm_lora_run_saves_a_causal_lm_adapter(tiny_llama, corpus, tmp_path):
    out = tmp_path / "lora"
    extra = ["--use_peft", "true", "--lora_r", "4", "--lora_dropout", "0", "--merge_adapter", "true"]
    metrics = mlm.main(clm_args(tiny_llama, corpus, out, "--max_steps", "8", *extra))
    assert metrics["trainable_params"] < metrics["total_params"] and "eval_perplexity" in metrics
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "AutoPeftModelForCausalLM" in card and "text-generation" in card
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = padded_batch(tokenizer)
    adapter = load_lora_model(str(out))
    assert type(adapter.get_base_model()).__name__ == "LlamaForCausalLM"
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    torch.testing.assert_close(logits(adapter, inputs), logits(merged, inputs), atol=1e-5, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert not torch.allclose(logits(base, inputs), logits(merged, inputs), atol=1e-4)  # the adapter learned


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_clm_lora_with_embeddings_and_head_reloads_to_the_same_logits(kind, tiny_gpt2, tiny_llama, tmp_path):
    path = tiny_gpt2 if kind == "gpt2" else tiny_llama
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ensure_pad_token(tokenizer, model)
    options = LoraArguments(
        use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_train_embeddings_and_head=True
    )
    model = apply_lora(model, options, "clm")
    base = model.get_base_model()
    embeddings = base.get_input_embeddings()
    if kind == "gpt2":  # GPT-2 ties its LM head to the embeddings: the trained copies stay one matrix
        assert base.lm_head.modules_to_save["default"].weight is embeddings.modules_to_save["default"].weight
    before = embeddings.modules_to_save["default"].weight.detach().clone()
    data = tokenize(tokenizer, [review(random.Random(i), i % 2 == 0) for i in range(24)], MLMArguments(objective="clm"))
    args = three_step_args(tmp_path, remove_unused_columns=False)
    trainer = Trainer(
        model=model, args=args, train_dataset=data, processing_class=tokenizer, data_collator=CLMCollator(tokenizer)
    )
    trainer.train()
    assert not torch.allclose(embeddings.modules_to_save["default"].weight, before)
    trainer.save_model()
    save_lora_outputs(trainer, str(tmp_path), merge=True, tokenizer=tokenizer)
    inputs = padded_batch(tokenizer)
    expected = logits(model, inputs)
    torch.testing.assert_close(logits(load_lora_model(str(tmp_path)), inputs), expected, atol=1e-5, rtol=0)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(merged, inputs), expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_clm_two_process_run(tiny_gpt2, corpus, tmp_path):
    result = launch_two_processes(
        "mlm.py",
        clm_args(tiny_gpt2, corpus, tmp_path / "two", "--max_steps", "4", "--per_device_train_batch_size", "4"),
    )
    assert "Global batch 8 = 4 per device x 1 accumulation steps x 2 processes" in result.stderr
    results = json.loads((tmp_path / "two" / "all_results.json").read_text())
    assert results["eval_perplexity"] == pytest.approx(np.exp(results["eval_loss"]), rel=1e-4)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "two").config.model_type == "gpt2"


# -- objective / model mismatch and other bad input -------------------------------------------------------------------
def test_supported_objectives_per_model_type():
    assert supported_objectives(BertConfig()) == ["mlm"]  # BERT has a causal-LM class too, but is an encoder
    assert supported_objectives(BertConfig(is_decoder=True)) == ["clm"]
    assert supported_objectives(GPT2Config()) == ["clm"]
    assert supported_objectives(LlamaConfig()) == ["clm"]
    assert supported_objectives(T5Config()) == []


def test_decoder_given_mlm_names_clm(tiny_gpt2, corpus, tmp_path):
    argv = clm_args(tiny_gpt2, corpus, tmp_path / "bad")[2:]  # no --objective: mlm, the default
    with pytest.raises(TransferKitError, match="gpt2 model, which has no masked-LM head: it supports objective: clm"):
        mlm.main(argv)


def test_encoder_given_clm_names_mlm(tiny_bert, corpus, tmp_path):
    with pytest.raises(
        TransferKitError, match="bert model, an encoder without a causal-LM head: it supports objective: mlm"
    ):
        mlm.main(clm_args(tiny_bert, corpus, tmp_path / "bad"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mlm_probability", "0.3"], "mlm_probability only apply to objective: mlm"),
        (["--whole_word_mask", "true", "--head_warmup_steps", "5"], "whole_word_mask, head_warmup_steps only apply"),
        (["--objective", "causal"], "objective must be one of ('mlm', 'clm')"),
    ],
)
def test_bad_clm_options(tiny_gpt2, corpus, tmp_path, extra, message):
    with pytest.raises(TransferKitError) as info:
        mlm.main(clm_args(tiny_gpt2, corpus, tmp_path / "bad", *extra))
    assert message in str(info.value)
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_clm_needs_an_eos_token():
    with pytest.raises(TransferKitError, match="has none"):  # a BERT tokenizer: no end-of-sequence token
        tokenize(build_tokenizer(), ["good film"], MLMArguments(objective="clm"))


# -- decoder classification -----------------------------------------------------------------------------------------
def classify_args(model: str, reviews_csv: str, output_dir, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        model,
        "--train_file",
        reviews_csv,
        "--output_dir",
        str(output_dir),
        "--test_split_percentage",
        "20",
        "--max_seq_length",
        "32",
        "--num_train_epochs",
        "4",  # 2 epochs at 1e-2 learned the toy task in some seeds only (0.56 to 1.0): this setting, 0.97+ in 4
        "--save_strategy",
        "no",
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "3e-3",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
        *extra,
    ]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoder_classification_end_to_end(kind, tiny_gpt2, tiny_llama, reviews_csv, tmp_path):
    """GPT-2 full finetuning, Llama with LoRA; both tokenizers ship without a pad token, Llama's pads on the left."""
    source = tiny_gpt2 if kind == "gpt2" else tiny_llama
    if kind == "llama":
        tokenizer = AutoTokenizer.from_pretrained(source)
        tokenizer.padding_side = "left"  # as many Llama-family tokenizers ship
        source = str(tmp_path / "llama-left")
        AutoModelForCausalLM.from_pretrained(tiny_llama).save_pretrained(source)
        tokenizer.save_pretrained(source)
    lora = ["--use_peft", "true", "--lora_r", "4", "--merge_adapter", "true", "--learning_rate", "2e-2"]
    out = tmp_path / "classify"
    metrics = classify.main(classify_args(source, reviews_csv, out, *(lora if kind == "llama" else [])))
    # The toy task is learnable from the last token's context (chance: 0.5). Seeds 0-3 measured: GPT-2 0.97-1.0,
    # Llama-LoRA 0.75-0.81.
    assert metrics["test_accuracy"] >= 0.7
    assert "test_f1_macro" in metrics and (out / "predictions.csv").is_file()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "right"
    if kind == "llama":
        saved = json.loads((out / "adapter_config.json").read_text())
        assert saved["task_type"] == "SEQ_CLS" and "score" in saved["modules_to_save"]
        model = load_lora_model(str(out))  # the labels and the pad id come back with it
        merged = AutoModelForSequenceClassification.from_pretrained(out / "merged")
        torch.testing.assert_close(logits(merged, padded_batch(tokenizer)), logits(model, padded_batch(tokenizer)))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.pad_token_id == tokenizer.eos_token_id and model.config.id2label == LABELS
    assert_padding_free(model, tokenizer)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoder_classifier_lora_trains_score_and_reloads(kind, tiny_gpt2, tiny_llama, tmp_path):
    """The reload check of test_lora.py on decoders: in memory, adapter (two ways) and merged model agree on a padded
    batch, which also needs the pad id saved with the adapter (the base config has none)."""
    from peft import AutoPeftModelForSequenceClassification
    from safetensors.torch import load_file

    path = tiny_gpt2 if kind == "gpt2" else tiny_llama
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )
    ensure_pad_token(tokenizer, model)
    model.accepts_loss_kwargs = False
    model = apply_lora(model, LoraArguments(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0), "classification")
    score_before = model.get_base_model().score.modules_to_save["default"].weight.detach().clone()
    rng = random.Random(0)
    texts = [review(rng, positive=i % 2 == 0) for i in range(12)]
    data = Dataset.from_dict(
        {**tokenizer(texts, truncation=True, max_length=32), "labels": [1 - i % 2 for i in range(12)]}
    )
    args = three_step_args(tmp_path)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    trainer.train()
    trainer.save_model()
    save_lora_outputs(trainer, str(tmp_path), merge=True, tokenizer=tokenizer)
    assert not torch.allclose(model.get_base_model().score.modules_to_save["default"].weight, score_before)
    assert "base_model.model.score.weight" in load_file(os.path.join(tmp_path, "adapter_model.safetensors"))
    assert AutoConfig.from_pretrained(path).pad_token_id is None  # so the reload must bring the pad id

    inputs = padded_batch(tokenizer)
    expected = logits(model, inputs)
    adapter = AutoPeftModelForSequenceClassification.from_pretrained(str(tmp_path), **label_kwargs(str(tmp_path)))
    torch.testing.assert_close(logits(adapter, inputs), expected, atol=1e-5, rtol=0)
    assert adapter.config.id2label == LABELS
    torch.testing.assert_close(logits(load_lora_model(str(tmp_path)), inputs), expected, atol=1e-5, rtol=0)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(merged, inputs), expected, atol=1e-5, rtol=0)
    assert_padding_free(merged, AutoTokenizer.from_pretrained(tmp_path / "merged"))


# -- padding side and pad-token edge cases --------------------------------------------------------------------------
def load_decoder_classifier(path: str):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_left_padding_is_turned_right_and_pooling_reads_the_last_real_token(kind, tiny_gpt2, tiny_llama):
    path = tiny_gpt2 if kind == "gpt2" else tiny_llama
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = load_decoder_classifier(path)
    ensure_pad_token(tokenizer, model)
    assert tokenizer.padding_side == "right" and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.eos_token_id
    assert_padding_free(model, tokenizer)
    tokenizer.padding_side = "left"
    left = logits(model, padded_batch(tokenizer))
    alone = logits(model, dict(tokenizer([TEXTS[0]], return_tensors="pt")))
    if kind == "gpt2":  # why right: left pads shift GPT-2's absolute positions, so the shorter text's logits change
        assert not torch.allclose(left[0], alone[0], atol=1e-4)
    else:  # rotary positions are relative, and the pooling finds the last real token after left pads too
        torch.testing.assert_close(left[0], alone[0], atol=1e-5, rtol=0)


def test_a_tokenizer_pad_token_is_kept_and_given_to_the_model(tiny_gpt2, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    model = load_decoder_classifier(tiny_gpt2)
    model.resize_token_embeddings(len(tokenizer))
    ensure_pad_token(tokenizer, model)
    assert tokenizer.pad_token == "<pad>" and model.config.pad_token_id == tokenizer.convert_tokens_to_ids("<pad>")
    assert_padding_free(model, tokenizer)


def test_a_config_pad_id_that_the_tokenizer_does_not_pad_with_follows_the_tokenizer(tiny_gpt2):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    model = load_decoder_classifier(tiny_gpt2)
    model.config.pad_token_id = 5  # a real word: pooling would stop at it, and padding with EOS would be read
    ensure_pad_token(tokenizer, model)
    assert model.config.pad_token_id == tokenizer.eos_token_id
    assert_padding_free(model, tokenizer)


def test_a_tokenizer_without_pad_and_eos_is_an_error(tiny_gpt2):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    tokenizer.eos_token = None
    with pytest.raises(TransferKitError, match="neither a pad nor an end-of-sequence token"):
        ensure_pad_token(tokenizer, load_decoder_classifier(tiny_gpt2))


# -- pipeline ---------------------------------------------------------------------------------------------------------
def test_pipeline_chains_clm_adaptation_and_decoder_classification(tiny_gpt2, reviews_csv, tmp_path):
    stage = {"max_steps": 4, "per_device_train_batch_size": 8, "learning_rate": 3e-3, "disable_tqdm": True}
    stage |= {"save_strategy": "no", "eval_strategy": "no"}
    config = {
        "base_model": tiny_gpt2,
        "output_dir": str(tmp_path / "pipe"),
        "shared": {"seed": 3, "max_seq_length": 32},
        "adapt": {**stage, "objective": "clm"},
        "classify": {**stage, "train_file": reviews_csv, "test_split_percentage": 20},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    report = pipeline.main(["--config", str(path)])
    out = tmp_path / "pipe"
    assert "eval_perplexity" in report["adapt"] and "test_accuracy" in report["gain"]
    assert "pipeline_tag: text-generation" in (out / "adapt" / "README.md").read_text()
    finetuned = AutoConfig.from_pretrained(out / "finetune")
    assert finetuned.transferkit_lineage == [tiny_gpt2, str(out / "adapt")]
    assert finetuned.architectures == ["GPT2ForSequenceClassification"]
    assert finetuned.pad_token_id == AutoTokenizer.from_pretrained(out / "finetune").eos_token_id
