"""Per-device training memory (transferkit.memory): the estimate against a measured CPU training step, the ZeRO
paper's own figures for sharding, LoRA/QLoRA, meta-device counting, and the dry run's memory lines and warning."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
from transformers import BertForSequenceClassification, Trainer, TrainingArguments

from tests.tiny import build_tokenizer, tiny_bert_config
from transferkit import memory
from transferkit.dry_run import plan_memory, print_memory

BATCH, LENGTH, VOCAB = 8, 64, 1000


def bert_config(attention: str = "sdpa", dropout: float = 0.1):
    """Big enough that activations, not fixed overheads, dominate: hidden 128, 4 layers, 4 heads, MLP 512."""
    return tiny_bert_config(
        VOCAB,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=LENGTH,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        attn_implementation=attention,
    )


def a_batch(size: int = BATCH) -> dict:
    """Random ids, one padded row (so the attention mask is real), two labels."""
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(size, LENGTH, dtype=torch.long)
    mask[0, LENGTH // 2 :] = 0
    return {
        "input_ids": torch.randint(5, VOCAB, (size, LENGTH), generator=generator),
        "attention_mask": mask,
        "labels": torch.randint(0, 2, (size,), generator=generator),
    }


def tensor_bytes(tensors) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def train_step(model, optimizer, batch, bf16: bool, saved_tensors: dict | None = None) -> int:
    """One optimizer step as Trainer takes it (autocast forward, backward, clipping, fused AdamW, zero_grad to
    None). With `saved_tensors`, records each storage autograd saves for backward (weights' own storages
    excluded: they are counted as weights); returns the gradients' bytes before zero_grad."""
    weights = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved_tensors[storage.data_ptr()] = storage.nbytes()
        return tensor

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if saved_tensors is not None else None
    with hooks or contextlib.nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        output = model(**batch)
    if saved_tensors is not None:  # the logits stay alive in the output, as Trainer holds it
        saved_tensors["logits"] = tensor_bytes([output.logits])
    output.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    gradients = tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
    optimizer.zero_grad(set_to_none=True)
    return gradients


def profiled_peak(step) -> int:
    """Peak bytes the CPU allocator held above what was allocated before `step()`: the running sum of the
    profiler's allocation and free events, in time order (torch.profiler with profile_memory=True)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    events = [event for event in profiler.profiler.kineto_results.events() if event.name() == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda event: event.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize(
    "attention, dropout, bf16, checkpointing, batch_size",
    [
        ("sdpa", 0.1, False, False, BATCH),  # BERT's defaults: SDPA falls back to its math kernel (CPU, dropout)
        ("sdpa", 0.1, True, False, BATCH),  # bf16 autocast over fp32 weights
        ("sdpa", 0.0, True, False, BATCH),  # no dropout: SDPA's fused CPU kernel, no s^2 scores
        ("eager", 0.1, False, True, 4 * BATCH),  # gradient checkpointing (a batch where activations still dominate)
    ],
)
def test_estimate_matches_a_measured_cpu_training_step(attention, dropout, bf16, checkpointing, batch_size):
    """What is measured, and why it is the comparison to make. A CPU has no max_memory_allocated, so the step's
    real peak is taken from torch.profiler's allocation events (exact allocator bytes, no RSS noise) on the second
    step, when the AdamW moments exist, plus the weights and moments allocated before it: that total is what the
    run must fit in, and the estimate must be within 30% of it. Each part is also checked apart, because a total
    can hide compensating errors: weights, gradients and optimizer states exactly (summing the tensors after a
    step) and, without checkpointing (whose recomputation hides saved tensors from the hooks), the activations
    against the unique storages autograd saves for backward (saved_tensors_hooks) plus the live logits, within
    15%. An estimate off by a factor 2 in any part fails."""
    torch.manual_seed(0)
    config = bert_config(attention, dropout)
    model = BertForSequenceClassification(config).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    batch, saved = a_batch(batch_size), {}
    gradients = train_step(model, optimizer, batch, bf16, saved)
    weights, moments = (
        tensor_bytes(model.parameters()),
        tensor_bytes(value for state in optimizer.state.values() for value in state.values() if value.dim()),
    )
    peak = weights + moments + profiled_peak(lambda: train_step(model, optimizer, batch, bf16))

    kind = memory.attention_kind(attention, dropout, "cpu")
    estimate = memory.estimate(
        memory.count_parameters(model),
        memory.TransformerShape.from_config(config),
        batch_size,
        LENGTH,
        mixed_precision=bf16,
        optim="adamw_torch_fused",
        attention=kind,
        checkpointing=checkpointing,
    )
    assert (estimate.weights, estimate.gradients, estimate.optimizer) == (weights, gradients, moments)
    assert estimate.total == pytest.approx(peak, rel=0.30)
    if not checkpointing:
        assert estimate.activations == pytest.approx(sum(saved.values()), rel=0.15)
    else:  # only the total checks the activations here: they must be most of it for a 2x error to miss the peak
        assert estimate.activations > 0.5 * estimate.total


def test_korthikanti_per_layer_formula():
    """16-bit activations with dropout, 1-byte CUDA masks, MLP 4h, scores materialised: s*b*h*(34 + 5*a*s/h)
    bytes per layer (Korthikanti et al. 2022, eq. 1); a fused kernel drops the 5*a*s/h term."""
    s, b, h, a = 512, 4, 1024, 16
    shape = memory.TransformerShape(24, h, a, 4 * h, 30522, hidden_dropout=0.1, attention_dropout=0.1)
    half = memory.Precision(activation_bytes=2)
    assert memory.layer_activation_bytes(shape, b, s, half, "eager", "cuda") == s * b * h * (34 + 5 * a * s / h)
    fused = memory.layer_activation_bytes(shape, b, s, half, "fused", "cuda")
    # no score matrices; the kernel keeps its output (2sbh), an fp32 log-sum-exp and the 16-bit padding mask
    assert fused == s * b * h * (34 + 2) + 4 * b * a * s + 2 * b * s * s


def test_zero_stages_reproduce_the_zero_paper():
    """ZeRO paper figure 1: 7.5B parameters, mixed-precision Adam (K = 12), 64 devices: 120 GB with data
    parallelism, 31.4 GB with ZeRO-1, 16.6 GB with ZeRO-2, 1.9 GB with ZeRO-3."""
    psi = 7_500_000_000
    counts = memory.ParameterCounts(total=psi, trainable=psi)
    per_device = {
        stage: sum(memory.state_bytes(counts, f"zero{stage}", 64, 8, deepspeed_mixed_precision=True)) / 1e9
        for stage in range(4)
    }
    assert per_device == pytest.approx({0: 120, 1: 31.4, 2: 16.6, 3: 1.875}, abs=0.05)


def test_sharded_backends_need_less_per_device_than_ddp():
    """The same model at world size 2: ZeRO-3 and FSDP full shard < ZeRO-2 and FSDP shard-grad-op < DDP; DDP's
    gradient buckets copy the gradients; activations do not shard."""
    config = bert_config()
    counts = memory.count_parameters(memory.meta_model(config, BertForSequenceClassification))
    shape = memory.TransformerShape.from_config(config)

    def at(backend: str, world_size: int = 2) -> memory.MemoryEstimate:
        return memory.estimate(counts, shape, BATCH, LENGTH, backend=backend, world_size=world_size)

    ddp, single = at("ddp"), at("single", 1)
    assert at("zero3").total < at("zero2").total < ddp.total
    assert at("fsdp_full_shard").total < at("fsdp_shard_grad_op").total < ddp.total
    assert ddp.gradients == 2 * single.gradients and ddp.weights == single.weights
    fsdp = at("fsdp_full_shard")  # half the weights + one gathered layer; half the gradients and moments
    assert fsdp.weights == counts.total * 4 / 2 + counts.largest_layer * 4
    assert (fsdp.gradients, fsdp.optimizer) == (counts.total * 4 / 2, counts.total * 8 / 2)
    assert len({at(backend).activations for backend in memory.BACKENDS}) == 1


def test_lora_counts_gradients_and_moments_for_the_adapters_only():
    """After a real LoRA step the gradients and AdamW moments are exactly the adapters' (and the new head's):
    what the estimate counts."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        BertForSequenceClassification(bert_config()), LoraConfig(r=4, target_modules=["query", "value"])
    )
    counts = memory.count_parameters(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts.trainable == trainable < counts.total / 20
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    gradients = train_step(model, optimizer, a_batch(), bf16=False)
    moments = tensor_bytes(value for state in optimizer.state.values() for value in state.values() if value.dim())
    estimate = memory.estimate(counts, memory.TransformerShape.from_config(model.config), BATCH, LENGTH)
    assert (estimate.gradients, estimate.optimizer) == (gradients, moments) == (4 * trainable, 8 * trainable)
    assert estimate.weights == 4 * counts.total


def test_qlora_and_bf16_weights():
    """QLoRA's 4-bit base weights cost ~0.52 byte each; a bfloat16 load halves weights, gradients and moments."""
    base, adapters = 1_000_000, 10_000
    qlora = memory.ParameterCounts(total=base + adapters, trainable=adapters, weight_bytes=2, quantized=base)
    weights, gradients, optimizer = memory.state_bytes(qlora, "single", 1, 8)
    assert weights == pytest.approx(base * 0.516 + adapters * 2, rel=1e-3)
    assert (gradients, optimizer) == (adapters * 4, adapters * 8)
    fp32 = memory.ParameterCounts(total=base, trainable=base)
    bf16 = memory.ParameterCounts(total=base, trainable=base, weight_bytes=2, trainable_bytes=2)
    assert memory.state_bytes(bf16, "single", 1, 4) == tuple(x // 2 for x in memory.state_bytes(fp32, "single", 1, 8))


def test_meta_model_counts_without_allocating():
    config = bert_config()
    model = memory.meta_model(config, BertForSequenceClassification)
    assert all(parameter.is_meta for parameter in model.parameters())
    torch.manual_seed(0)
    assert memory.count_parameters(model) == memory.count_parameters(BertForSequenceClassification(config))


def test_device_memory_on_the_cpu(monkeypatch):
    """psutil's total when installed, else /proc/meminfo's MemTotal: the same machine RAM."""
    with_psutil = memory.device_memory("cpu")
    monkeypatch.setitem(__import__("sys").modules, "psutil", None)  # import psutil now raises ImportError
    assert memory.device_memory("cpu") == pytest.approx(with_psutil, rel=0.01) and with_psutil > 2**28


def test_dry_run_memory_plan_and_warning(tmp_path, monkeypatch, caplog):
    """plan_memory on a Trainer gives the estimate for its model and batch; print_memory warns when the device
    (monkeypatched to 1 MiB) has less. The recipe's real --dry_run prints the same lines (tests/test_reliability.py)."""
    torch.manual_seed(0)
    config = bert_config()
    model = BertForSequenceClassification(config)
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=BATCH, report_to="none", use_cpu=True)
    trainer = Trainer(model=model, args=args, processing_class=build_tokenizer())
    plan = plan_memory(trainer, None)  # no sized split: the truncation limit, 64
    expected = memory.estimate(
        memory.count_parameters(model), memory.TransformerShape.from_config(config), BATCH, LENGTH, attention="math"
    )
    assert plan["length"] == LENGTH and plan["total"] == expected.total and plan["backend"] == "single"
    assert plan["exceeds"] is False

    monkeypatch.setattr(memory, "device_memory", lambda device: 2**20)
    plan = plan_memory(trainer, None)
    assert plan["exceeds"] is True
    with caplog.at_level(logging.INFO, logger="transferkit.dry_run"):
        print_memory(plan)
    assert f"about {plan['total'] / 2**20:.1f} MiB = weights" in caplog.text
    warning = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warning) == 1 and "but cpu has 1.0 MiB of memory: it will likely run out of memory" in warning[0].message
