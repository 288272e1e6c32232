"""head_warmup_steps: only the task head learns at first (linear probing, then finetuning), however the model is
wrapped; the classify recipe's saved encoder is untouched after a head-only run."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification
from transformers.trainer_callback import TrainerControl, TrainerState

from tests.tiny import save_tiny_decoder
from transferkit.errors import TransferKitError
from transferkit.lora import LoraArguments, apply_lora
from transferkit.train import head_warmup_callbacks, unwrapped_name


def test_unwrapped_name_strips_nested_wrapper_prefixes():
    assert unwrapped_name("module.base_model.model.bert.encoder.weight") == "bert.encoder.weight"
    assert unwrapped_name("_orig_mod.model.layers.0.weight") == "model.layers.0.weight"
    assert unwrapped_name("classifier.weight") == "classifier.weight"


def grads_after_callback(model: torch.nn.Module, global_step: int, steps: int = 3) -> dict[str, bool]:
    """Which trainable parameters still have a gradient once the callback ran at `global_step`."""
    inputs = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    model(input_ids=inputs, attention_mask=torch.ones_like(inputs), labels=torch.tensor([0, 1])).loss.backward()
    (callback,) = head_warmup_callbacks(steps, model)
    state = TrainerState()
    state.global_step = global_step
    callback.on_pre_optimizer_step(None, state, TrainerControl(), model=model)
    return {name: p.grad is not None for name, p in model.named_parameters() if p.requires_grad}


def test_bert_classifier_keeps_only_head_gradients_during_warmup(tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    has_grad = grads_after_callback(model, global_step=0)
    assert has_grad["classifier.weight"] and has_grad["classifier.bias"]
    assert not any(has for name, has in has_grad.items() if name.startswith("bert."))
    assert all(grads_after_callback(model, global_step=3).values())  # warm-up over: everything learns


def test_lora_llama_classifier_prefix_model_does_not_match_the_peft_wrapper(tmp_path):
    # Llama's encoder is `model`, and PEFT names every parameter `base_model.model....`: a substring match on
    # "model." would drop the head's gradients too and nothing would learn during the warm-up.
    model = AutoModelForSequenceClassification.from_pretrained(save_tiny_decoder(str(tmp_path), "llama"), num_labels=2)
    model.config.pad_token_id = 0
    model = apply_lora(model, LoraArguments(use_peft=True, lora_r=2), "classification")
    has_grad = grads_after_callback(model, global_step=1)
    head = [name for name in has_grad if ".score." in name]
    adapters = [name for name in has_grad if "lora_" in name]
    assert head and adapters
    assert all(has_grad[name] for name in head)
    assert not any(has_grad[name] for name in adapters)


def test_zero_steps_adds_no_callback_and_a_model_without_encoder_is_refused(tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    assert head_warmup_callbacks(0, model) == []
    with pytest.raises(TransferKitError, match="head_warmup_steps"):
        head_warmup_callbacks(5, torch.nn.Linear(2, 2))
