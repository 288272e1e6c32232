"""head_warmup_steps: only the task head learns at first (linear probing, then finetuning). The encoder's param groups
have learning rate 0 during the warm-up, so the encoder keeps its loaded weights, weight decay included, in one
process, under 2-process DDP (here) and under DeepSpeed ZeRO-2 (tests/test_deepspeed.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, TrainingArguments
from transformers.trainer_callback import TrainerControl, TrainerState

from recipes import classify, mlm
from tests.test_classify_e2e import base_args
from tests.test_mlm import run_args
from tests.tiny import launch_two_processes, save_tiny_decoder, write_templated_corpus
from transferkit.errors import TransferKitError
from transferkit.head_warmup import ENCODER_GROUP, head_warmup
from transferkit.lora import LoraArguments, apply_lora


def build_optimizer(model: torch.nn.Module, tmp_path, **args) -> torch.optim.Optimizer:
    """The optimizer exactly as Trainer builds it from `optimizer_cls_and_kwargs`."""
    training_args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **args)
    factory, kwargs = head_warmup(3, model).optimizer_cls_and_kwargs(training_args, model)
    return factory()(model, **kwargs)


def group_members(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, tuple[bool, float]]:
    """Parameter name -> (in an encoder group, that group's weight decay)."""
    where = {id(p): (g[ENCODER_GROUP], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    return {name: where[id(p)] for name, p in model.named_parameters() if p.requires_grad}


def test_the_encoder_gets_param_groups_of_its_own_with_trainers_decay_rule(tiny_bert, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    members = group_members(model, build_optimizer(model, tmp_path, weight_decay=0.1))
    assert members["classifier.weight"] == (False, 0.1) and members["classifier.bias"] == (False, 0.0)
    assert members["bert.encoder.layer.0.attention.self.query.weight"] == (True, 0.1)
    assert members["bert.embeddings.LayerNorm.weight"] == (True, 0.0)
    assert all(in_encoder == name.startswith("bert.") for name, (in_encoder, _) in members.items())


def test_lora_llama_encoder_holds_the_adapters_and_the_score_head_is_apart(tmp_path):
    # Llama's encoder is `model`, and PEFT names every parameter `base_model.model....`: groups go by module, not name.
    model = AutoModelForSequenceClassification.from_pretrained(save_tiny_decoder(str(tmp_path), "llama"), num_labels=2)
    model.config.pad_token_id = 0
    model = apply_lora(model, LoraArguments(use_peft=True, lora_r=2), "classification")
    members = group_members(model, build_optimizer(model, tmp_path / "out"))
    head = [name for name in members if ".score." in name]
    adapters = [name for name in members if "lora_" in name]
    assert head and adapters
    assert not any(members[name][0] for name in head) and all(members[name][0] for name in adapters)


def test_new_body_weights_and_loras_head_copies_learn_during_the_warmup(tiny_bert, tmp_path):
    # The tiny MLM checkpoint has no pooler: the classifier's pooler is new, as after TransferKit's own MLM stage.
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    model.transferkit_missing_keys = ["bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight"]
    members = group_members(model, build_optimizer(model, tmp_path))
    assert not members["bert.pooler.dense.weight"][0] and members["bert.encoder.layer.0.output.dense.weight"][0]
    lora = apply_lora(AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2),
                      LoraArguments(use_peft=True, lora_r=2), "classification")  # fmt: skip
    members = group_members(lora, build_optimizer(lora, tmp_path))
    pooler = [name for name in members if ".pooler.modules_to_save." in name]
    assert pooler and not any(members[name][0] for name in pooler)  # trained in full as part of the head


def state_at(global_step: int, max_steps: int = 10) -> TrainerState:
    state = TrainerState()
    state.global_step, state.max_steps = global_step, max_steps
    return state


def test_encoder_rate_is_0_before_each_warmup_step_and_left_to_the_scheduler_after(tiny_bert, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    optimizer = build_optimizer(model, tmp_path, learning_rate=0.01)
    callback = head_warmup(3, model)
    callback.on_train_begin(None, state_at(0), TrainerControl(), optimizer=optimizer)
    for step, encoder_rate in ((0, 0.0), (2, 0.0), (3, 0.01), (7, 0.01)):
        for group in optimizer.param_groups:
            group["lr"] = 0.01  # what the scheduler sets after each step
        callback.on_step_begin(None, state_at(step), TrainerControl(), optimizer=optimizer)
        rates = {group[ENCODER_GROUP]: group["lr"] for group in optimizer.param_groups}
        assert rates == {True: encoder_rate, False: 0.01}, step


def test_after_the_warmup_the_encoder_takes_the_heads_rate_whatever_the_scheduler(tiny_bert, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    optimizer = build_optimizer(model, tmp_path, learning_rate=0.01)
    callback = head_warmup(3, model)
    callback.on_step_begin(None, state_at(2), TrainerControl(), optimizer=optimizer)
    for group in optimizer.param_groups:
        if not group[ENCODER_GROUP]:
            group["lr"] = 0.005  # a plateau scheduler cut the rate; it does not set every group at every step
    callback.on_step_begin(None, state_at(3), TrainerControl(), optimizer=optimizer)
    assert {group["lr"] for group in optimizer.param_groups} == {0.005}


def test_zero_steps_adds_nothing_and_a_model_without_encoder_is_refused(tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    assert head_warmup(0, model) is None
    with pytest.raises(TransferKitError, match="head_warmup_steps"):
        head_warmup(5, torch.nn.Linear(2, 2))


def test_an_optimizer_without_the_encoder_groups_is_refused(tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    plain = torch.optim.AdamW(model.parameters())
    with pytest.raises(TransferKitError, match="no encoder parameter group"):
        head_warmup(3, model).on_train_begin(None, state_at(0), TrainerControl(), optimizer=plain)


ENCODER_PREFIXES = ("bert.embeddings.", "bert.encoder.")  # the checkpoint's own (the tiny model has no pooler)


def encoder_weights(path: str) -> dict[str, torch.Tensor]:
    return {name: t for name, t in load_file(f"{path}/model.safetensors").items() if name.startswith(ENCODER_PREFIXES)}


def assert_encoder_kept(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], kept: bool = True) -> None:
    assert before.keys() == after.keys() and before
    assert all(torch.equal(before[name], after[name]) for name in before) is kept


@pytest.mark.parametrize("recipe", ["classify", "mlm"])
def test_recipe_warmup_leaves_the_encoder_as_loaded(recipe, tiny_bert, reviews_csv, tmp_path):
    if recipe == "classify":
        auto_class, main, args, data = AutoModelForSequenceClassification, classify.main, base_args, reviews_csv
    else:
        auto_class, main, args = AutoModelForMaskedLM, mlm.main, run_args
        data = write_templated_corpus(str(tmp_path / "corpus.txt"))
    before = encoder_weights(tiny_bert)
    # 1 of 3 steps: the control, where the encoder is unfrozen after the warm-up and moves. Weight decay on: AdamW's
    # decoupled decay would shrink the encoder too, were its learning rate not 0.
    for warmup, encoder_kept in (("3", True), ("1", False)):
        out = tmp_path / f"warmup-{warmup}"
        main(args(tiny_bert, data, out, "--max_steps", "3", "--head_warmup_steps", warmup, "--weight_decay", "0.1"))
        assert_encoder_kept(before, encoder_weights(str(out)), encoder_kept)
        assert auto_class.from_pretrained(out) is not None


@pytest.mark.slow
def test_warmup_under_two_process_ddp_leaves_the_encoder_as_loaded(tiny_bert, reviews_csv, tmp_path):
    out = tmp_path / "ddp"
    args = ["--max_steps", "3", "--head_warmup_steps", "3", "--weight_decay", "0.1", "--per_device_train_batch_size"]
    launch_two_processes("classify.py", base_args(tiny_bert, reviews_csv, out, *args, "4"))
    assert_encoder_kept(encoder_weights(tiny_bert), encoder_weights(str(out)))


def test_the_encoders_optimizer_state_starts_afresh_when_the_warmup_ends(tiny_bert, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    optimizer = build_optimizer(model, tmp_path)
    callback = head_warmup(3, model)
    inputs = {"input_ids": torch.tensor([[2, 5, 6, 3]]), "labels": torch.tensor([1])}
    for step in range(5):
        callback.on_step_begin(None, state_at(step), TrainerControl(), optimizer=optimizer)
        if step == 3:  # the first step after the warm-up: no moments for the encoder, the head keeps its own
            assert not [p for p in model.bert.parameters() if p in optimizer.state]
            assert model.classifier.weight in optimizer.state
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert int(optimizer.state[model.bert.pooler.dense.weight]["step"]) == 2  # steps 3 and 4, since the reset
