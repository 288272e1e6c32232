"""head_warmup_steps: only the task head learns at first (linear probing, then finetuning), however the model is
wrapped; the recipes' saved encoder (tied embeddings included) is untouched after a head-only run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, TrainingArguments
from transformers.trainer_callback import TrainerControl, TrainerState
from transformers.training_args import ParallelMode

from recipes import classify, mlm
from tests.test_classify_e2e import base_args
from tests.test_mlm import run_args
from tests.tiny import save_tiny_decoder, write_templated_corpus
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


def state_at(global_step: int, max_steps: int = 10) -> TrainerState:
    state = TrainerState()
    state.global_step, state.max_steps = global_step, max_steps
    return state


def trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_single_process_warmup_freezes_the_encoder_so_backward_stops_at_the_head(tiny_bert, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    everything = trainable(model)
    (callback,) = head_warmup_callbacks(3, model)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert args.parallel_mode == ParallelMode.NOT_PARALLEL
    callback.on_train_begin(args, state_at(0), TrainerControl(), model=model)
    assert trainable(model) == {"classifier.weight", "classifier.bias"}
    inputs = torch.tensor([[5, 6, 7, 8]])
    model(input_ids=inputs, labels=torch.tensor([1])).loss.backward()
    assert model.classifier.weight.grad is not None
    assert all(p.grad is None for name, p in model.named_parameters() if name.startswith("bert."))
    callback.on_step_end(args, state_at(2), TrainerControl())
    assert trainable(model) == {"classifier.weight", "classifier.bias"}  # still warming up
    callback.on_step_end(args, state_at(3), TrainerControl())
    assert trainable(model) == everything


def test_resuming_after_the_warmup_freezes_nothing(tiny_bert, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    everything = trainable(model)
    (callback,) = head_warmup_callbacks(3, model)
    callback.on_train_begin(
        TrainingArguments(output_dir=str(tmp_path), use_cpu=True), state_at(5), TrainerControl(), model=model
    )
    assert trainable(model) == everything


def test_distributed_warmup_keeps_every_parameter_trainable(tiny_bert):
    # DDP registered every trainable parameter when it wrapped the model: freezing would break its reducer.
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    everything = trainable(model)
    (callback,) = head_warmup_callbacks(3, model)
    callback.on_train_begin(
        SimpleNamespace(parallel_mode=ParallelMode.DISTRIBUTED), state_at(0), TrainerControl(), model=model
    )
    assert trainable(model) == everything


def test_lora_warmup_unfreezes_only_what_it_froze(tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(save_tiny_decoder(str(tmp_path), "llama"), num_labels=2)
    model.config.pad_token_id = 0
    model = apply_lora(model, LoraArguments(use_peft=True, lora_r=2), "classification")
    before = trainable(model)
    (callback,) = head_warmup_callbacks(3, model)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True)
    callback.on_train_begin(args, state_at(0), TrainerControl(), model=model)
    assert trainable(model) and all(".score." in name for name in trainable(model))
    callback.on_train_end(args, state_at(3), TrainerControl())
    assert trainable(model) == before  # the base weights stay frozen, the adapters learn again


def test_zero_steps_adds_no_callback_and_a_model_without_encoder_is_refused(tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    assert head_warmup_callbacks(0, model) == []
    with pytest.raises(TransferKitError, match="head_warmup_steps"):
        head_warmup_callbacks(5, torch.nn.Linear(2, 2))


@pytest.mark.parametrize("recipe", ["classify", "mlm"])
def test_recipe_warmup_leaves_the_encoder_as_loaded(recipe, tiny_bert, reviews_csv, tmp_path):
    if recipe == "classify":
        auto_class, main, args = AutoModelForSequenceClassification, classify.main, base_args
        data, load_kwargs = reviews_csv, {"num_labels": 2}
    else:
        auto_class, main, args = AutoModelForMaskedLM, mlm.main, run_args
        data, load_kwargs = write_templated_corpus(str(tmp_path / "corpus.txt")), {}
    before = auto_class.from_pretrained(tiny_bert, **load_kwargs).state_dict()
    # The checkpoint's weights (the tiny model has no pooler: a random one is drawn at each load).
    encoder = [name for name in before if name.startswith(("bert.embeddings.", "bert.encoder."))]
    # 1 of 3 steps: the control, where the encoder is unfrozen after the warm-up and moves.
    for warmup, encoder_kept in (("3", True), ("1", False)):
        out = tmp_path / f"warmup-{warmup}"
        main(args(tiny_bert, data, out, "--max_steps", "3", "--head_warmup_steps", warmup))
        after = auto_class.from_pretrained(out).state_dict()
        assert all(torch.equal(before[name], after[name]) for name in encoder) is encoder_kept
