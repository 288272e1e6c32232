"""The sparse MLM head must be a pure speed-up: same loss, gradients and checkpoint as the dense head."""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable

import numpy as np
import pytest
import torch
import transformers as tf
from transformers import AutoModelForMaskedLM, EvalPrediction

from transferkit.sparse_mlm import (
    enable_sparse_mlm_head,
    masked_token_accuracy,
    preprocess_logits_for_metrics,
)

VOCAB = 100
_SIZES = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
_SIZES_WITH_POSITIONS = dict(_SIZES, max_position_embeddings=64)

CONFIGS = {
    "bert": lambda: tf.BertConfig(**_SIZES_WITH_POSITIONS),
    "roberta": lambda: tf.RobertaConfig(**_SIZES_WITH_POSITIONS, pad_token_id=1),
    "xlm-roberta": lambda: tf.XLMRobertaConfig(**_SIZES_WITH_POSITIONS, pad_token_id=1),
    "camembert": lambda: tf.CamembertConfig(**_SIZES_WITH_POSITIONS, pad_token_id=1),
    "distilbert": lambda: tf.DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64
    ),
    "deberta-v2": lambda: tf.DebertaV2Config(**_SIZES_WITH_POSITIONS),
    "deberta-v2-nonlegacy": lambda: tf.DebertaV2Config(**_SIZES_WITH_POSITIONS, legacy=False),
    "electra": lambda: tf.ElectraConfig(**_SIZES_WITH_POSITIONS, embedding_size=16),
    "modernbert": lambda: tf.ModernBertConfig(
        **_SIZES_WITH_POSITIONS,
        local_attention=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=3,
        sep_token_id=4,
    ),
}
WITHOUT_SEGMENTS = {"distilbert", "modernbert"}  # their forward takes no token_type_ids


def make_model(arch: str) -> torch.nn.Module:
    """A tiny randomly initialised MaskedLM model in eval mode (no dropout, so two passes are comparable)."""
    torch.manual_seed(0)
    return AutoModelForMaskedLM.from_config(CONFIGS[arch]()).eval()


def make_batch(arch: str) -> dict[str, torch.Tensor]:
    """Two sequences, the second padded, with masked positions in both (including one near the padding)."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, VOCAB, (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    labels = torch.full_like(input_ids, -100)
    for row, cols in ((0, [1, 4, 10]), (1, [2, 7, 8])):
        labels[row, cols] = input_ids[row, cols]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if arch not in WITHOUT_SEGMENTS:
        batch["token_type_ids"] = torch.zeros_like(input_ids)
    return batch


def loss_and_grads(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    output = model(**batch)
    output.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return output, grads


@pytest.fixture(scope="module")
def batches() -> dict[str, dict[str, torch.Tensor]]:
    return {arch: make_batch(arch) for arch in CONFIGS}


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_sparse_matches_dense_loss_and_gradients(arch: str, batches: dict) -> None:
    model, batch = make_model(arch), batches[arch]
    dense, dense_grads = loss_and_grads(model, batch)
    assert enable_sparse_mlm_head(model) is True
    sparse, sparse_grads = loss_and_grads(model, batch)

    torch.testing.assert_close(sparse.loss, dense.loss, atol=1e-5, rtol=0)
    assert set(sparse_grads) == set(dense_grads) == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, grad in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, atol=1e-5, rtol=0, msg=name)

    masked = batch["labels"] != -100
    assert sparse.logits.shape == batch["labels"].shape and sparse.logits.dtype == torch.long
    assert torch.equal(sparse.logits[masked], dense.logits.argmax(-1)[masked])
    assert (sparse.logits[~masked] == -100).all()


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_checkpoint_stays_standard_and_reloads(arch: str, batches: dict, tmp_path) -> None:
    model = make_model(arch)
    keys_before = list(model.state_dict())
    enable_sparse_mlm_head(model)
    assert list(model.state_dict()) == keys_before
    model.save_pretrained(tmp_path)

    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model) and "forward" not in reloaded.__dict__
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, msg=name)
    batch = {k: v for k, v in batches[arch].items() if k != "labels"}
    torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)


def test_inference_without_labels_is_the_dense_forward(batches: dict) -> None:
    model = make_model("bert")
    batch = {k: v for k, v in batches["bert"].items() if k != "labels"}
    expected = model(**batch).logits
    enable_sparse_mlm_head(model)
    output = model(**batch)
    assert output.loss is None and output.logits.shape == (2, 12, VOCAB)
    torch.testing.assert_close(output.logits, expected)


def test_signature_lists_the_columns_trainer_must_keep() -> None:
    bert, distilbert = make_model("bert"), make_model("distilbert")
    enable_sparse_mlm_head(bert)
    enable_sparse_mlm_head(distilbert)
    bert_params = inspect.signature(bert.forward).parameters
    assert {"input_ids", "attention_mask", "token_type_ids", "position_ids", "labels"} <= set(bert_params)
    assert "token_type_ids" not in inspect.signature(distilbert.forward).parameters


@pytest.mark.parametrize(
    "build",
    [
        lambda: tf.AlbertForMaskedLM(
            tf.AlbertConfig(
                vocab_size=VOCAB, embedding_size=16, **{k: v for k, v in _SIZES.items() if k != "vocab_size"}
            )
        ),
        lambda: torch.nn.Linear(4, 4),
    ],
    ids=["albert", "plain-module"],
)
def test_unknown_architecture_keeps_the_dense_forward(build, caplog) -> None:
    model = build()
    with caplog.at_level(logging.INFO, logger="transferkit.sparse_mlm"):
        assert enable_sparse_mlm_head(model) is False
    assert "forward" not in model.__dict__
    records = [r for r in caplog.records if r.name == "transferkit.sparse_mlm"]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert "dense head" in records[0].getMessage() and type(model).__name__ in records[0].getMessage()


def test_subclass_overriding_forward_is_not_patched() -> None:
    class CustomBert(tf.BertForMaskedLM):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    torch.manual_seed(0)
    assert enable_sparse_mlm_head(CustomBert(CONFIGS["bert"]())) is False


def test_enabling_twice_and_deepcopy_keep_one_binding(batches: dict) -> None:
    model = make_model("bert")
    assert enable_sparse_mlm_head(model) and enable_sparse_mlm_head(model)
    twin = copy.deepcopy(model)
    assert twin.forward.__self__ is twin
    with torch.no_grad():
        twin.cls.predictions.transform.dense.weight.mul_(2)
    assert not torch.allclose(twin(**batches["bert"]).loss, model(**batches["bert"]).loss)


def test_loss_follows_num_items_in_batch_and_tuple_output(batches: dict) -> None:
    model = make_model("bert")
    enable_sparse_mlm_head(model)
    batch = batches["bert"]
    masked = int((batch["labels"] != -100).sum())
    mean_loss = model(**batch).loss
    torch.testing.assert_close(model(**batch, num_items_in_batch=2 * masked).loss, mean_loss / 2)
    as_tuple = model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], mean_loss)


def test_batch_without_masked_tokens_gives_zero_loss_and_zero_head_gradients(batches: dict) -> None:
    model = make_model("bert")
    enable_sparse_mlm_head(model)
    batch = dict(batches["bert"], labels=torch.full_like(batches["bert"]["labels"], -100))
    output, grads = loss_and_grads(model, batch)
    assert output.loss.item() == 0.0
    assert (output.logits == -100).all()
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())


def test_peft_lora_wrapped_after_enabling_matches_dense_lora(batches: dict) -> None:
    peft = pytest.importorskip("peft")
    lora = dict(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False)
    dense_base, sparse_base = make_model("bert"), make_model("bert")
    assert enable_sparse_mlm_head(sparse_base)
    torch.manual_seed(2)
    dense = peft.get_peft_model(dense_base, peft.LoraConfig(**lora))
    sparse = peft.get_peft_model(sparse_base, peft.LoraConfig(**lora))
    sparse.load_state_dict(dense.state_dict())

    dense_out, dense_grads = loss_and_grads(dense, batches["bert"])
    sparse_out, sparse_grads = loss_and_grads(sparse, batches["bert"])
    torch.testing.assert_close(sparse_out.loss, dense_out.loss, atol=1e-5, rtol=0)
    assert sparse_out.logits.dtype == torch.long  # the patched forward really ran under PEFT
    assert set(sparse_grads) == set(dense_grads) and any("lora_" in name for name in dense_grads)
    for name, grad in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, atol=1e-5, rtol=0, msg=name)


def test_enabling_through_a_peft_model_patches_its_base_model() -> None:
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(make_model("bert"), peft.LoraConfig(r=2, target_modules=["query"]))
    assert enable_sparse_mlm_head(wrapped) is True
    assert "forward" in wrapped.get_base_model().__dict__


def tiny_tokenizer() -> tf.PreTrainedTokenizerFast:
    """A word-level fast tokenizer over VOCAB ids, enough for DataCollatorForLanguageModeling."""
    from tokenizers import Tokenizer, models

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(specials + [f"w{i}" for i in range(VOCAB - len(specials))])}
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def test_trainer_trains_and_evaluates_with_masked_accuracy(tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    generator = np.random.default_rng(0)
    rows = [[2, *generator.integers(5, VOCAB, size=int(n)).tolist(), 3] for n in generator.integers(8, 20, 24)]
    data = datasets.Dataset.from_dict(
        {
            "input_ids": rows,
            "token_type_ids": [[0] * len(r) for r in rows],
            "text": ["unused column"] * len(rows),  # must be dropped by Trainer's signature check
        }
    )
    model = make_model("bert").train()
    assert enable_sparse_mlm_head(model)
    model.accepts_loss_kwargs = False
    args = tf.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = tf.Trainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=data.select(range(8)),
        data_collator=tf.DataCollatorForLanguageModeling(tiny_tokenizer(), mlm_probability=0.3, seed=0),
        compute_metrics=masked_token_accuracy,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    first_batch = next(iter(trainer.get_train_dataloader()))
    assert "text" not in first_batch and {"token_type_ids", "labels"} <= set(first_batch)
    trainer.train()
    metrics = trainer.evaluate()
    assert np.isfinite(metrics["eval_loss"]) and 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert all(np.isfinite(log["loss"]) for log in trainer.state.log_history if "loss" in log)


def test_trainer_loss_is_not_scaled_up_when_accepts_loss_kwargs_is_left_unset(tmp_path) -> None:
    """Trainer passes num_items_in_batch to a forward with **kwargs; the sparse loss honours it (no 2x)."""
    datasets = pytest.importorskip("datasets")
    generator = np.random.default_rng(1)
    rows = [[2, *generator.integers(5, VOCAB, size=16).tolist(), 3] for _ in range(8)]
    data = datasets.Dataset.from_dict({"input_ids": rows})
    losses = {}
    for accepts in (None, False):
        model = make_model("bert").train()
        enable_sparse_mlm_head(model)
        if accepts is not None:
            model.accepts_loss_kwargs = accepts
        args = tf.TrainingArguments(
            output_dir=str(tmp_path / str(accepts)),
            max_steps=1,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            learning_rate=0.0,
            save_strategy="no",
            logging_steps=1,
            use_cpu=True,
            report_to="none",
            disable_tqdm=True,
        )
        collator = tf.DataCollatorForLanguageModeling(tiny_tokenizer(), mlm_probability=0.3, seed=0)
        trainer = tf.Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
        assert trainer.model_accepts_loss_kwargs is (accepts is None)
        trainer.train()
        losses[accepts] = trainer.state.log_history[0]["loss"]
    # Per-token mean over both micro-batches vs mean of the two micro-batch means: close, never doubled.
    assert losses[None] == pytest.approx(losses[False], rel=0.1)


def test_metric_helpers_handle_sparse_and_dense_predictions() -> None:
    labels = torch.tensor([[-100, 5, -100, 7], [3, -100, -100, -100]])
    dense_logits = torch.zeros(2, 4, 10)
    dense_logits[0, 1, 5] = dense_logits[0, 3, 2] = dense_logits[1, 0, 3] = 1.0
    ids = preprocess_logits_for_metrics(dense_logits, labels)
    assert ids.shape == (2, 4)
    sparse_ids = torch.where(labels != -100, ids, torch.full_like(ids, -100))
    assert preprocess_logits_for_metrics(sparse_ids, labels) is sparse_ids
    assert preprocess_logits_for_metrics((sparse_ids,), labels) is sparse_ids

    for predictions in (ids, sparse_ids, dense_logits):
        result = masked_token_accuracy(EvalPrediction(predictions=predictions.numpy(), label_ids=labels.numpy()))
        assert result == {"accuracy": pytest.approx(2 / 3)}


def varying_mask_batches(counts: list[int]) -> list[dict[str, torch.Tensor]]:
    """[4, 16] batches with exactly `counts[i]` masked positions, scattered at random."""
    generator = torch.Generator().manual_seed(3)
    batches = []
    for count in counts:
        input_ids = torch.randint(5, VOCAB, (4, 16), generator=generator)
        labels = torch.full_like(input_ids, -100).reshape(-1)
        positions = torch.randperm(labels.numel(), generator=generator)[:count]
        labels[positions] = input_ids.reshape(-1)[positions]
        batches.append(
            {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
             "token_type_ids": torch.zeros_like(input_ids), "labels": labels.view_as(input_ids)}
        )  # fmt: skip
    return batches


@pytest.mark.parametrize("dynamic", [None, False])  # Trainer's default (automatic dynamic shapes), static shapes
def test_compiled_sparse_head_compiles_once_per_row_budget_with_the_eager_loss(dynamic) -> None:
    """torch.compile of a model whose masked count changes every batch: the compiled graphs (counted by a backend
    that runs them as traced, no inductor) are built on the first batch and once more per new multiple of
    COMPILED_ROW_BUCKET, not once per count; loss and predictions are the eager sparse head's, and the dense one's."""
    counts = [5, 9, 13, 3, 17, 21, 25, 11, 29, 7]  # ten counts, all in the first 32-row budget
    compiled_graphs: list[int] = []

    def counting_backend(graph_module: torch.fx.GraphModule, example_inputs: list) -> Callable:
        compiled_graphs.append(len(graph_module.graph.nodes))
        return graph_module.forward

    torch._dynamo.reset()
    dense = make_model("bert")
    model = copy.deepcopy(dense)
    enable_sparse_mlm_head(model)
    compiled = torch.compile(model, backend=counting_backend, dynamic=dynamic)
    graphs_after = []
    for batch in varying_mask_batches(counts):
        output, eager = compiled(**batch), model(**batch)
        graphs_after.append(len(compiled_graphs))
        assert torch.equal(output.loss, eager.loss) and torch.equal(output.logits, eager.logits)
        torch.testing.assert_close(output.loss, dense(**batch).loss, atol=1e-5, rtol=0)
    assert graphs_after == [graphs_after[0]] * len(counts)  # the old head: a new graph for each new count
    assert graphs_after[0] <= 2  # the encoder, then the head: one graph break, where the rows are picked

    more = varying_mask_batches([40, 35, 50])  # a second budget (64 rows = every position): one more head graph
    for batch in more:
        torch.testing.assert_close(compiled(**batch).loss, model(**batch).loss, atol=0, rtol=0)
    assert len(compiled_graphs) == graphs_after[0] + 1
    torch._dynamo.reset()
