"""Throughput in the logs (transferkit.throughput) and ClassificationTrainer's length-sorted evaluation
(transferkit.trainers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from tests.tiny import build_tokenizer
from transferkit.throughput import (
    PEAK_FLOPS_ENV,
    ThroughputCallback,
    mean_row_length,
    model_flops_per_token,
    peak_flops_for,
    resolve_peak_flops,
)
from transferkit.trainers import ClassificationTrainer, LengthSortedSampler, row_lengths

# Every batch of 4 has sequences of 8, 4, 6 and 2 tokens: padded to 8, so 12 of its 32 positions are padding.
BATCH_LENGTHS = [8, 4, 6, 2]
PADDING_SHARE = 1 - sum(BATCH_LENGTHS) / (len(BATCH_LENGTHS) * max(BATCH_LENGTHS))


def fixed_length_dataset(batches: int) -> Dataset:
    lengths = BATCH_LENGTHS * batches
    return Dataset.from_dict(
        {
            "input_ids": [[2] + [5 + i % 20] * (n - 2) + [3] for i, n in enumerate(lengths)],
            "attention_mask": [[1] * n for n in lengths],
            "label": [i % 2 for i in range(len(lengths))],
        }
    )


def padding_share(lengths: np.ndarray, order, batch_size: int) -> float:
    order = np.asarray(list(order))
    padded = real = 0
    for start in range(0, len(order), batch_size):
        batch = lengths[order[start : start + batch_size]]
        padded += batch.max() * len(batch)
        real += batch.sum()
    return 1 - real / padded


def make_trainer(model_dir, tmp_path, dataset, cls=Trainer, model=None, callbacks=None, **overrides) -> Trainer:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        num_train_epochs=1,
        train_sampling_strategy="sequential",
        include_num_input_tokens_seen="non_padding",
        seed=0,
    )
    settings.update(overrides)
    tokenizer = build_tokenizer()
    if model is None:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    return cls(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=callbacks,
    )


# ---- counting ----------------------------------------------------------------------------------------------------


class FakeClock:
    """Time that moves only where a test says: 1 s per training step, 100 s per evaluation or save."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Elapse(TrainerCallback):
    """Advances the fake clock: before each step's end, and before the throughput callback hears of an evaluation
    or a save (it is first in the list)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.now += 1.0

    def on_evaluate(self, args, state, control, **kwargs):
        self.clock.now += 100.0

    on_save = on_evaluate


@pytest.mark.parametrize("accumulation", [1, 2])
def test_callback_rates_count_training_time_only(accumulation, tiny_bert, tmp_path, monkeypatch):
    monkeypatch.delenv(PEAK_FLOPS_ENV, raising=False)
    clock = FakeClock()
    callback = ThroughputCallback(clock=clock)
    trainer = make_trainer(tiny_bert, tmp_path, fixed_length_dataset(6), callbacks=[Elapse(clock)],
                           per_device_train_batch_size=4 // accumulation, gradient_accumulation_steps=accumulation,
                           eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=3)  # fmt: skip
    callback.add_first(trainer)
    assert trainer.callback_handler.callbacks[0] is callback  # ahead of the report_to integrations
    trainer.callback_handler.callbacks.insert(0, trainer.callback_handler.pop_callback(Elapse))  # the clock moves first
    result = trainer.train()

    step_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(step_logs) == 6 and "mfu" not in step_logs[0]  # a log every step; CPU, no peak given
    tokens_per_step = sum(BATCH_LENGTHS)  # 4 rows a step, however they are accumulated
    assert all(entry["nonpad_tokens_per_second"] == pytest.approx(tokens_per_step) for entry in step_logs)
    eval_logs = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(eval_logs) == 3 and not any("nonpad_tokens_per_second" in entry for entry in eval_logs)
    # 6 s of steps: the 3 evaluations and 2 saves (500 s on the clock) are not training time
    assert result.metrics["train_compute_seconds"] == pytest.approx(6.0)
    assert result.metrics["train_nonpad_tokens_per_second"] == pytest.approx(tokens_per_step)


def test_callback_logs_nothing_unless_trainer_counts_non_padding_tokens(tiny_bert, tmp_path):
    callback = ThroughputCallback()
    trainer = make_trainer(tiny_bert, tmp_path, fixed_length_dataset(1), include_num_input_tokens_seen="all")
    callback.add_first(trainer)
    trainer.train()
    assert not any("nonpad_tokens_per_second" in entry for entry in trainer.state.log_history)  # padding would count


def test_mfu_logged_when_peak_flops_is_set(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv(PEAK_FLOPS_ENV, "1e9")  # a tiny model on a CPU is far from any real peak
    trainer = make_trainer(tiny_bert, tmp_path, fixed_length_dataset(3))
    ThroughputCallback().add_first(trainer)
    result = trainer.train()
    step_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    mean_length = sum(BATCH_LENGTHS) / len(BATCH_LENGTHS)
    flops_per_token = model_flops_per_token(trainer.model, mean_length)
    for entry in step_logs:
        assert 0 < entry["mfu"] < 1
        expected = flops_per_token * entry["nonpad_tokens_per_second"] / 1e9
        assert entry["mfu"] == pytest.approx(expected, rel=2e-3)
    assert result.metrics["train_mfu"] > 0


def test_flops_per_token_leaves_out_embeddings(tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    embedding = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    dense = sum(p.numel() for p in model.parameters()) - embedding
    config = model.config
    assert model_flops_per_token(model) == 6 * dense
    attention = 12 * config.num_hidden_layers * config.hidden_size * 10
    assert model_flops_per_token(model, seq_len=10) == 6 * dense + attention


def test_peak_flops_table_and_override(monkeypatch):
    assert peak_flops_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for("NVIDIA H200") == 989e12
    assert peak_flops_for("NVIDIA L4") == 121e12
    assert peak_flops_for("NVIDIA L40S") == 362e12
    assert peak_flops_for("NVIDIA A10G") == 125e12
    assert peak_flops_for("Some Future Accelerator") is None
    monkeypatch.delenv(PEAK_FLOPS_ENV, raising=False)
    assert resolve_peak_flops("cpu") is None
    monkeypatch.setenv(PEAK_FLOPS_ENV, "2.5e12")
    assert resolve_peak_flops("cpu") == 2.5e12


# ---- length-sorted evaluation --------------------------------------------------------------------------------------


def test_row_lengths_mean_length_and_the_sorted_sampler():
    dataset = Dataset.from_dict({"input_ids": [[1] * n for n in (5, 2, 9, 4)], "label": [0, 1, 0, 1]})
    assert row_lengths(dataset.select([2, 0])).tolist() == [9, 5]
    assert row_lengths(Dataset.from_dict({"text": ["a"]})) is None
    assert mean_row_length(dataset) == 5.0 and mean_row_length(None) == 0.0
    assert list(LengthSortedSampler(np.array([3, 9, 1, 9]))) == [1, 3, 0, 2]


# ---- the Trainer -------------------------------------------------------------------------------------------------


def varied_dataset(n: int = 48) -> Dataset:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 40, n)
    return Dataset.from_dict(
        {
            "input_ids": [[2] + [5 + (i + j) % 30 for j in range(k - 2)] + [3] for i, k in enumerate(lengths)],
            "label": [i % 2 for i in range(n)],
        }
    )


def test_evaluation_batches_are_sorted_and_predict_keeps_dataset_order(tiny_bert, tmp_path):
    dataset = varied_dataset(30)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    plain = make_trainer(tiny_bert, tmp_path / "plain", dataset, model=model).predict(dataset)
    trainer = make_trainer(tiny_bert, tmp_path / "sorted", dataset, cls=ClassificationTrainer, model=model)
    assert isinstance(trainer._get_eval_sampler(dataset), LengthSortedSampler)
    lengths = row_lengths(dataset)
    in_order = [len(ids) for batch in trainer.get_eval_dataloader(dataset) for ids in batch["input_ids"]]
    assert len(in_order) == 30 and max(in_order[:4]) == lengths.max()  # the longest batch first, padded to it
    predicted = trainer.predict(dataset)
    assert predicted.label_ids.tolist() == dataset["label"]
    np.testing.assert_allclose(predicted.predictions, plain.predictions, atol=1e-5)
    assert predicted.metrics["test_loss"] == pytest.approx(plain.metrics["test_loss"], abs=1e-5)


def test_class_weights_are_optional(tiny_bert, tmp_path):
    trainer = make_trainer(tiny_bert, tmp_path, varied_dataset(), cls=ClassificationTrainer)
    assert trainer.class_weights is None  # Trainer's own loss
    weighted = ClassificationTrainer(model=trainer.model, args=trainer.args, class_weights=[1.0, 2.0])
    assert weighted.class_weights.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("setting", [{"eval_do_concat_batches": False}, {"dataloader_drop_last": True}])
def test_rows_that_could_not_be_put_back_are_not_sorted(setting, tiny_bert, tmp_path):
    dataset = varied_dataset(30)
    trainer = make_trainer(tiny_bert, tmp_path, dataset, cls=ClassificationTrainer, **setting)
    assert not isinstance(trainer._get_eval_sampler(dataset), LengthSortedSampler)
