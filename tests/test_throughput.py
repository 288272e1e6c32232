"""Throughput logging (transferkit.throughput) and length-bucketed batching (transferkit.batching)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from datasets import Dataset
from torch.utils.data import BatchSampler, DataLoader
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments
from transformers.trainer_pt_utils import get_length_grouped_indices

from tests.tiny import build_tokenizer
from transferkit.batching import (
    LengthBucketedSampler,
    LengthBucketedTrainer,
    LengthSortedSampler,
    length_bucketed,
    sequence_lengths,
)
from transferkit.throughput import (
    PEAK_FLOPS_ENV,
    CountingCollator,
    TokenCounter,
    count_batch,
    enable_throughput,
    model_flops_per_token,
    peak_flops_for,
    resolve_peak_flops,
)
from transferkit.train import ClassWeightedTrainer

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


def make_trainer(model_dir, tmp_path, dataset, cls=Trainer, model=None, **overrides) -> Trainer:
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
    )


# ---- counting ----------------------------------------------------------------------------------------------------


def test_count_batch_by_hand():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    assert count_batch({"input_ids": torch.ones_like(mask), "attention_mask": mask}) == (3, 7, 12)
    ids = torch.tensor([[5, 6, 0], [5, 0, 0]])
    assert count_batch({"input_ids": ids}, pad_token_id=0) == (2, 3, 6)
    assert count_batch({"input_ids": ids.numpy()}) == (2, 6, 6)  # no mask, no pad id: every position counts
    assert count_batch({"labels": torch.ones(3)}) is None


def _collate(features):
    return DataCollatorWithPadding(build_tokenizer())(features)


def test_counting_collator_counts_in_worker_processes():
    data = [{"input_ids": [2] + [5] * (n - 2) + [3], "attention_mask": [1] * n} for n in BATCH_LENGTHS * 5]
    collator = CountingCollator(_collate, TokenCounter())
    batches = list(DataLoader(data, batch_size=4, collate_fn=collator, num_workers=2))
    assert len(batches) == 5 and set(batches[0]) == {"input_ids", "attention_mask"}  # batches unchanged
    counts = collator.counter.read()
    assert counts.batches == 5 and counts.samples == 20
    assert counts.tokens == 5 * sum(BATCH_LENGTHS) and counts.positions == 5 * 4 * max(BATCH_LENGTHS)


# ---- the callback in a Trainer -----------------------------------------------------------------------------------


def test_callback_adds_throughput_to_logs(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.delenv(PEAK_FLOPS_ENV, raising=False)
    trainer = make_trainer(
        tiny_bert, tmp_path, fixed_length_dataset(3), num_train_epochs=2, eval_strategy="steps", eval_steps=2
    )
    callback = enable_throughput(trainer)
    assert enable_throughput(trainer) is callback
    assert trainer.callback_handler.callbacks[0] is callback  # before the printer and report_to integrations
    result = trainer.train()

    step_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(step_logs) == 6  # a log every step, two of them at an epoch's end
    for entry in step_logs:
        assert entry["nonpad_tokens_per_second"] > 0
        assert entry["samples_per_second"] > 0
        assert entry["padding_share"] == pytest.approx(PADDING_SHARE, abs=1e-4)
        assert "mfu" not in entry  # CPU, no peak given
        assert entry["samples_per_second"] == pytest.approx(entry["nonpad_tokens_per_second"] / 5, rel=1e-3)
    eval_logs = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(eval_logs) == 3 and not any("padding_share" in entry for entry in eval_logs)

    # The summary reaches train()'s metrics (and so train_results.json); evaluation batches were not counted.
    assert result.metrics["train_padding_share"] == pytest.approx(PADDING_SHARE, abs=1e-4)
    assert result.metrics["train_nonpad_tokens_per_second"] > 0
    assert 0 < result.metrics["train_compute_seconds"] <= result.metrics["train_runtime"]
    counts = callback.total_counts()
    assert (counts.batches, counts.samples, counts.tokens) == (6, 24, 6 * sum(BATCH_LENGTHS))


def test_mfu_logged_when_peak_flops_is_set(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv(PEAK_FLOPS_ENV, "1e9")  # a tiny model on a CPU is far from any real peak
    trainer = make_trainer(tiny_bert, tmp_path, fixed_length_dataset(3), num_train_epochs=1)
    enable_throughput(trainer)
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


# ---- the bucketing sampler ---------------------------------------------------------------------------------------


def skewed_lengths(n: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(3.0, 0.6, n).astype(np.int64), 3, 256)


@pytest.mark.parametrize("pool_batches", [1, 7, 100, None])
@pytest.mark.parametrize("n", [1000, 1003])
def test_every_index_once_per_epoch(pool_batches, n):
    sampler = LengthBucketedSampler(skewed_lengths(n), batch_size=32, pool_batches=pool_batches, seed=1)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler) == n
        assert sorted(order) == list(range(n))


def test_less_padding_than_random_and_group_by_length():
    lengths = skewed_lengths()
    random_share = padding_share(lengths, np.random.default_rng(0).permutation(len(lengths)), 32)
    torch.manual_seed(0)
    trainer_share = padding_share(lengths, get_length_grouped_indices(lengths.tolist(), 32), 32)
    pooled = padding_share(lengths, LengthBucketedSampler(lengths, 32, seed=0), 32)
    whole_epoch = padding_share(lengths, LengthBucketedSampler(lengths, 32, pool_batches=None, seed=0), 32)
    assert random_share > 0.3
    assert pooled < random_share / 4
    assert whole_epoch < trainer_share and whole_epoch <= pooled


def test_batches_are_full_except_the_last():
    lengths = skewed_lengths(1003)
    sampler = LengthBucketedSampler(lengths, batch_size=32, pool_batches=5, seed=0)
    order = np.asarray(list(sampler))
    # the short group is last, so every batch of 32 comes from one sorted pool: lengths within a batch are sorted
    for start in range(0, len(order) - 32, 32):
        batch = lengths[order[start : start + 32]]
        assert (np.diff(batch) <= 0).all()


def test_order_changes_per_epoch_and_is_seeded():
    lengths = skewed_lengths(500)
    first = LengthBucketedSampler(lengths, 16, seed=3)
    again = LengthBucketedSampler(lengths, 16, seed=3)
    other = LengthBucketedSampler(lengths, 16, seed=4)
    epoch0 = list(first)
    assert epoch0 == list(again)
    assert epoch0 != list(other)
    first.set_epoch(1)
    assert list(first) != epoch0
    again.set_epoch(1)
    assert list(first) == list(again)


def test_longest_batch_comes_first():
    lengths = skewed_lengths(800)
    order = list(LengthBucketedSampler(lengths, 16, seed=0))
    assert lengths[order[:16]].max() == lengths.max()


@pytest.mark.parametrize("n", [1024, 1000])
def test_two_ranks_get_distinct_batches_of_similar_length(n):
    """Accelerate deals the DataLoader's batches round-robin to the ranks (BatchSamplerShard), as Trainer does."""
    lengths = skewed_lengths(n)
    sampler = LengthBucketedSampler(lengths, batch_size=16, group_batches=2, seed=0)
    shards = [
        list(BatchSamplerShard(BatchSampler(sampler, 16, drop_last=False), num_processes=2, process_index=rank))
        for rank in range(2)
    ]
    seen = [{index for batch in shard for index in batch} for shard in shards]
    assert seen[0] | seen[1] == set(range(n))
    if n % 32 == 0:
        assert not seen[0] & seen[1]
    # batches run in the same step come from the same length bucket
    gaps = [abs(lengths[a].max() - lengths[b].max()) for a, b in zip(shards[0][:-1], shards[1][:-1])]
    spread = lengths.max() - lengths.min()
    assert np.mean(gaps) < 0.05 * spread


def test_sequence_lengths_from_arrow_and_from_rows():
    dataset = Dataset.from_dict({"input_ids": [[1] * n for n in (5, 2, 9, 4)], "label": [0, 1, 0, 1]})
    subset = dataset.select([2, 0])
    assert sequence_lengths(subset).tolist() == [9, 5]
    rows = [{"input_ids": [1] * n} for n in (3, 1)]
    assert sequence_lengths(rows).tolist() == [3, 1]
    assert sequence_lengths(Dataset.from_dict({"text": ["a"]})) is None
    assert list(LengthSortedSampler([3, 9, 1, 9])) == [1, 3, 0, 2]


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


def test_trainer_uses_bucketed_batches_and_sets_epochs(tiny_bert, tmp_path):
    dataset = varied_dataset(32)
    trainer = make_trainer(
        tiny_bert,
        tmp_path,
        dataset,
        cls=LengthBucketedTrainer,
        train_sampling_strategy="group_by_length",
        num_train_epochs=2,
        logging_steps=4,
    )
    trainer.bucket_pool_batches = None
    callback = enable_throughput(trainer)
    trainer.train()

    loader = trainer.callback_handler.train_dataloader
    sampler = getattr(loader.batch_sampler, "batch_sampler", loader.batch_sampler).sampler  # DDP: BatchSamplerShard
    assert isinstance(sampler, LengthBucketedSampler) and sampler.epoch == 1  # Trainer called set_epoch
    counts = callback.total_counts()
    assert counts.samples == 2 * len(dataset)
    lengths = sequence_lengths(dataset)
    random_share = np.mean(
        [padding_share(lengths, np.random.default_rng(s).permutation(len(lengths)), 4) for s in range(20)]
    )
    assert 1 - counts.tokens / counts.positions < random_share / 2
    assert isinstance(trainer._get_eval_sampler(dataset), LengthSortedSampler)


def test_other_strategies_stay_trainers(tiny_bert, tmp_path):
    trainer = make_trainer(tiny_bert, tmp_path, varied_dataset(), cls=LengthBucketedTrainer)
    assert not isinstance(trainer._get_train_sampler(), LengthBucketedSampler)  # "sequential" is Trainer's own


def test_predict_keeps_dataset_order(tiny_bert, tmp_path):
    dataset = varied_dataset(30)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    plain = make_trainer(tiny_bert, tmp_path / "plain", dataset, model=model).predict(dataset)
    bucketed = make_trainer(
        tiny_bert,
        tmp_path / "b",
        dataset,
        cls=LengthBucketedTrainer,
        model=model,
        train_sampling_strategy="group_by_length",
    ).predict(dataset)
    assert bucketed.label_ids.tolist() == dataset["label"]
    np.testing.assert_allclose(bucketed.predictions, plain.predictions, atol=1e-5)
    assert bucketed.metrics["test_loss"] == pytest.approx(plain.metrics["test_loss"], abs=1e-5)


def test_length_bucketed_wraps_other_trainers(tiny_bert, tmp_path):
    assert length_bucketed(Trainer) is LengthBucketedTrainer
    cls = length_bucketed(ClassWeightedTrainer)
    assert cls is length_bucketed(ClassWeightedTrainer) and issubclass(cls, ClassWeightedTrainer)
    trainer = make_trainer(tiny_bert, tmp_path, varied_dataset(), cls=_with_weights(cls))
    assert trainer.class_weights.tolist() == [1.0, 2.0] and trainer.bucket_pool_batches == 100


def _with_weights(cls):
    def build(*args, **kwargs):
        return cls(*args, class_weights=[1.0, 2.0], **kwargs)

    return build
