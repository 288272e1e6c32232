"""LoRA: the head is found, trained and saved; adapters and merged models reload to the same logits; errors are clear.

Tiny models only (tests/tiny.py); each training run is a few steps on a handful of examples, on the CPU.
"""

from __future__ import annotations

import json
import os
import random

import pytest
import torch
import transformers
from datasets import Dataset
from peft import AutoPeftModelForSequenceClassification, PeftModel
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import load_file
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from tests.tiny import review
from transferkit.errors import TransferKitError
from transferkit.lora import (
    LoraArguments,
    apply_lora,
    check_adapter_base,
    check_quantization_runs,
    find_classification_head,
    label_kwargs,
    load_lora_model,
    merge_saved_adapter,
    parameter_counts,
    save_lora_outputs,
)

LABELS = {0: "neg", 1: "meh", 2: "pos"}


def lora_args(**overrides) -> LoraArguments:
    settings = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}  # no dropout: exact comparisons
    return LoraArguments(**{**settings, **overrides})


def load_classifier(path: str):
    torch.manual_seed(0)  # the fresh head's initial weights
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )
    model.accepts_loss_kwargs = False  # BERT's loss ignores num_items_in_batch (models.mark_loss_as_per_batch_mean)
    return model


def reviews(tokenizer, rows: int = 12, with_labels: bool = True) -> Dataset:
    rng = random.Random(0)
    texts = [review(rng, positive=index % 2 == 0) for index in range(rows)]
    data = dict(tokenizer(texts, truncation=True, max_length=32))
    if with_labels:
        data["labels"] = [0 if index % 2 else 2 for index in range(rows)]
    return Dataset.from_dict(data)


def make_trainer(
    model, tokenizer, output_dir: str, dataset: Dataset, collator, eval_dataset=None, **overrides
) -> Trainer:
    settings = dict(
        output_dir=output_dir,
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=5e-2,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        seed=0,
    )
    args = TrainingArguments(**{**settings, **overrides})
    return Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=collator,
    )


def batch(tokenizer) -> dict:
    return dict(tokenizer(["a good film", "so dull and cold , really"], padding=True, return_tensors="pt"))


@torch.no_grad()
def logits(model, inputs: dict) -> torch.Tensor:
    model.eval()
    return model(**inputs).logits


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    return AutoTokenizer.from_pretrained(tiny_bert)


def test_classifier_trains_saves_and_reloads(tiny_bert, tokenizer, tmp_path):
    model = apply_lora(load_classifier(tiny_bert), lora_args(), "classification")
    initial = {name: model.get_base_model().get_submodule(name).weight.detach().clone() for name in ("classifier",)}
    initial["bert.pooler"] = model.get_base_model().bert.pooler.dense.weight.detach().clone()
    trainer = make_trainer(model, tokenizer, str(tmp_path), reviews(tokenizer), DataCollatorWithPadding(tokenizer))
    trainer.train()
    trainer.save_model()  # as train_and_save does: save_lora_outputs adds labels, counts and the merge
    save_lora_outputs(trainer, str(tmp_path), merge=True, tokenizer=tokenizer)

    trained = model.get_base_model()
    assert not torch.allclose(trained.classifier.weight, initial["classifier"])  # the forward pass's copy moved
    assert not torch.allclose(trained.bert.pooler.dense.weight, initial["bert.pooler"])
    saved = load_file(os.path.join(tmp_path, "adapter_model.safetensors"))
    assert {"base_model.model.classifier.weight", "base_model.model.bert.pooler.dense.weight"} <= set(saved)

    inputs = batch(tokenizer)
    expected = logits(model, inputs)
    assert isinstance(model, PeftModel) and not any(getattr(m, "merged", False) for m in model.modules())

    adapter = AutoPeftModelForSequenceClassification.from_pretrained(str(tmp_path), **label_kwargs(str(tmp_path)))
    torch.testing.assert_close(logits(adapter, inputs), expected, atol=1e-5, rtol=0)
    assert adapter.config.id2label == LABELS
    torch.testing.assert_close(logits(load_lora_model(str(tmp_path)), inputs), expected, atol=1e-5, rtol=0)

    merged = AutoModelForSequenceClassification.from_pretrained(os.path.join(tmp_path, "merged"))
    torch.testing.assert_close(logits(merged, inputs), expected, atol=1e-5, rtol=0)
    assert merged.config.id2label == LABELS and merged.config.label2id == {v: k for k, v in LABELS.items()}
    assert merged.config.problem_type == "single_label_classification"
    assert os.path.isfile(os.path.join(tmp_path, "merged", "tokenizer.json"))
    torch.testing.assert_close(logits(model, inputs), expected)  # merging worked on a copy
    remerged = merge_saved_adapter(str(tmp_path), str(tmp_path / "remerged"))  # the route after FSDP/ZeRO/QLoRA
    torch.testing.assert_close(logits(remerged, inputs), expected, atol=1e-5, rtol=0)
    assert remerged.config.id2label == LABELS


def test_parameter_counts(tiny_bert):
    model = apply_lora(load_classifier(tiny_bert), lora_args(), "classification")
    counts = parameter_counts(model)
    lora = 2 * 2 * (4 * 32 + 32 * 4)  # 2 layers x (query, value) x (A + B)
    head = (32 * 32 + 32) + (3 * 32 + 3)  # pooler + classifier
    assert counts["trainable_params"] == lora + head
    assert counts["trainable_percent"] == pytest.approx(100 * counts["trainable_params"] / counts["total_params"])


def tiny_configs() -> dict[str, transformers.PretrainedConfig]:
    small = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    return {
        "bert": transformers.BertConfig(**small),
        "roberta": transformers.RobertaConfig(**small),
        "electra": transformers.ElectraConfig(embedding_size=32, **small),
        "distilbert": transformers.DistilBertConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=37),
        "gpt2": transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, pad_token_id=0),
        "llama": transformers.LlamaConfig(num_key_value_heads=2, pad_token_id=0, **small),
        "deberta-v2": transformers.DebertaV2Config(**small),
        "modernbert": transformers.ModernBertConfig(pad_token_id=0, **small),
    }


HEADS = {
    "bert": ["classifier", "bert.pooler"],
    "roberta": ["classifier"],
    "electra": ["classifier"],
    "distilbert": ["pre_classifier", "classifier"],
    "gpt2": ["score"],
    "llama": ["score"],
    "deberta-v2": ["pooler", "classifier"],
    "modernbert": ["head", "classifier"],
}


@pytest.mark.parametrize("model_type", list(HEADS))
def test_head_found_and_trainable_per_architecture(model_type):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_configs()[model_type])
    head = find_classification_head(model)
    assert sorted(head) == sorted(HEADS[model_type])
    base = apply_lora(model, lora_args(), "classification").get_base_model()  # DistilBERT, ModernBERT: all-linear
    for name in head:  # each head module trains in full through its modules_to_save copy, with no LoRA inside
        wrapper = base.get_submodule(name)
        assert isinstance(wrapper, ModulesToSaveWrapper), name
        assert all(param.requires_grad for param in wrapper.modules_to_save["default"].parameters()), name
        assert not any("lora_" in key for key, _ in wrapper.named_parameters()), name


def test_no_head_is_an_error_naming_the_modules():
    encoder = transformers.AutoModel.from_config(tiny_configs()["bert"])
    with pytest.raises(TransferKitError, match=r"embeddings.*lora_modules_to_save"):
        find_classification_head(encoder)


def test_target_modules_matching_nothing_list_the_linear_layers(tiny_bert):
    with pytest.raises(TransferKitError, match=r"\['qkv'\].*'dense', 'key', 'query', 'value'"):
        apply_lora(load_classifier(tiny_bert), lora_args(lora_target_modules=["query", "qkv"]), "classification")
    with pytest.raises(TransferKitError, match="lora_modules_to_save"):
        apply_lora(load_classifier(tiny_bert), lora_args(lora_modules_to_save=["nope"]), "classification")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lora_r": 0}, "lora_r"),
        ({"lora_r": -4}, "lora_r"),
        ({"lora_alpha": 0}, "lora_alpha"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"lora_target_modules": ["all-linear", "query"]}, "all-linear"),
    ],
)
def test_bad_options_are_errors(options, message):
    with pytest.raises(TransferKitError, match=message):
        lora_args(**options)


def test_lora_options_without_use_peft_are_an_error():
    assert LoraArguments().use_peft is False  # the defaults alone are fine
    with pytest.raises(TransferKitError, match="lora_r, merge_adapter only apply to LoRA: set use_peft: true"):
        LoraArguments(lora_r=8, merge_adapter=True)


def test_qlora_on_cpu_is_an_error_when_the_run_starts_not_when_it_is_parsed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    qlora = lora_args(load_in_4bit=True)  # a CPU node may still prepare the data of a QLoRA run (preprocess_only)
    with pytest.raises(TransferKitError, match="CUDA GPU and the bitsandbytes"):
        check_quantization_runs(qlora)


def test_the_merge_reads_the_saved_adapter_so_a_quantized_live_model_merges_too(tiny_bert, tokenizer, tmp_path):
    """The merge loads the base in full precision and applies the saved adapter: what the live model holds by then
    (4-bit weights under QLoRA; here, weights changed after the save) does not enter the merged model."""
    model = apply_lora(load_classifier(tiny_bert), lora_args(), "classification", revision="v1.0")
    trainer = make_trainer(model, tokenizer, str(tmp_path), reviews(tokenizer), DataCollatorWithPadding(tokenizer))
    trainer.train()
    trainer.save_model()
    expected = logits(model, batch(tokenizer))
    with torch.no_grad():
        model.get_base_model().classifier.modules_to_save["default"].weight.zero_()  # the live model, after the save
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["revision"] == "v1.0"  # the base's model_revision: what a reload or merge loads
    # The tiny base is a local folder, which has no revisions: the merge below loads it as it is.
    (tmp_path / "adapter_config.json").write_text(json.dumps({**saved, "revision": None}))
    save_lora_outputs(trainer, str(tmp_path), merge=True, tokenizer=tokenizer)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(merged, batch(tokenizer)), expected, atol=1e-5, rtol=0)


def test_qlora_loads_the_base_in_4_bits_in_both_recipes(tiny_bert, reviews_csv, tmp_path, monkeypatch):
    """bitsandbytes needs CUDA, so the loader is stopped where it receives its arguments: the wiring is checked."""
    import importlib.util

    import transferkit.models
    from recipes import classify, mlm

    class Loaded(Exception):
        pass

    received = []

    def from_pretrained(name, **kwargs):
        received.append(kwargs)
        raise Loaded

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else found(name, *a)
    )
    for auto_class in ("AutoModelForSequenceClassification", "AutoModelForMaskedLM"):
        monkeypatch.setattr(getattr(transferkit.models, auto_class), "from_pretrained", from_pretrained)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # an accelerate config's bf16: no bf16 flag is set
    common = ["--model_name_or_path", tiny_bert, "--train_file", reviews_csv, "--use_peft", "true"]
    common += ["--load_in_4bit", "true", "--use_cpu", "true", "--report_to", "none"]
    for main in (classify.main, mlm.main):
        with pytest.raises(Loaded):
            main([*common, "--output_dir", str(tmp_path / main.__module__)])
    for kwargs in received:
        config = kwargs["quantization_config"]
        assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
        assert "classifier" in config.llm_int8_skip_modules and kwargs["device_map"] == {"": 0}
        assert config.bnb_4bit_compute_dtype == torch.bfloat16  # the 4-bit layers compute in the run's precision
    assert len(received) == 2


def test_adapter_base_must_match(tmp_path, tiny_bert, monkeypatch):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": tiny_bert}))
    check_adapter_base(str(adapter), tiny_bert + "/")
    monkeypatch.chdir(os.path.dirname(tiny_bert))
    check_adapter_base(str(adapter), os.path.basename(tiny_bert))  # the same folder, relative
    with pytest.raises(TransferKitError, match=rf"trained on '{tiny_bert}'.*'org/other-model'"):
        check_adapter_base(str(adapter), "org/other-model")
    with pytest.raises(TransferKitError, match="no adapter_config.json"):
        check_adapter_base(str(tmp_path), tiny_bert)


def load_mlm(path: str):
    model = AutoModelForMaskedLM.from_pretrained(path)
    model.accepts_loss_kwargs = False
    return model


def test_mlm_trains_embeddings_and_head_tied(tiny_bert, tokenizer, tmp_path):
    frozen = apply_lora(load_mlm(tiny_bert), lora_args(), "mlm")
    assert not frozen.get_base_model().bert.embeddings.word_embeddings.weight.requires_grad

    model = apply_lora(load_mlm(tiny_bert), lora_args(lora_train_embeddings_and_head=True), "mlm")
    base = model.get_base_model()
    embeddings = base.bert.embeddings.word_embeddings.modules_to_save["default"]
    head = base.cls.modules_to_save["default"]
    assert embeddings.weight.requires_grad and all(p.requires_grad for p in head.parameters())
    assert head.predictions.decoder.weight is embeddings.weight  # still one matrix, as in full MLM training
    before = embeddings.weight.detach().clone()

    torch.manual_seed(0)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3)
    trainer = make_trainer(model, tokenizer, str(tmp_path), reviews(tokenizer, with_labels=False), collator)
    trainer.train()
    assert not torch.allclose(embeddings.weight, before)
    trainer.save_model()
    save_lora_outputs(trainer, str(tmp_path), merge=True, tokenizer=tokenizer)

    inputs = batch(tokenizer)
    expected = logits(model, inputs)
    reloaded = load_lora_model(str(tmp_path))  # AutoPeftModel: no task type, the class comes from auto_mapping
    assert type(reloaded.get_base_model()).__name__ == "BertForMaskedLM"
    torch.testing.assert_close(logits(reloaded, inputs), expected, atol=1e-5, rtol=0)
    merged = AutoModelForMaskedLM.from_pretrained(os.path.join(tmp_path, "merged"))
    torch.testing.assert_close(logits(merged, inputs), expected, atol=1e-5, rtol=0)


def test_mlm_all_linear_leaves_the_trained_head_to_modules_to_save(tiny_bert):
    options = lora_args(lora_target_modules=["all-linear"], lora_train_embeddings_and_head=True)
    model = apply_lora(load_mlm(tiny_bert), options, "mlm")
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    assert any(".intermediate.dense.lora_A." in name for name in names)
    assert not any("lora_" in name and ".cls." in name for name in names)
    head = model.get_base_model().cls.modules_to_save["default"]
    embeddings = model.get_base_model().bert.embeddings.word_embeddings.modules_to_save["default"]
    assert head.predictions.decoder.weight is embeddings.weight


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tiny_bert, tokenizer, tmp_path):
    def run(resume: str | None = None) -> dict[str, torch.Tensor]:
        model = apply_lora(load_classifier(tiny_bert), lora_args(), "classification")
        collator = DataCollatorWithPadding(tokenizer)
        trainer = make_trainer(
            model,
            tokenizer,
            str(tmp_path),
            reviews(tokenizer),
            collator,
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainable_state(model)

    uninterrupted = run()
    checkpoint = os.path.join(tmp_path, "checkpoint-2")
    assert os.path.isfile(os.path.join(checkpoint, "adapter_model.safetensors"))
    resumed = run(resume=checkpoint)
    assert uninterrupted.keys() == resumed.keys()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-5, rtol=0, msg=name)


def test_load_best_model_at_end_restores_the_best_adapter_and_head(tiny_bert, tokenizer, tmp_path):
    model = apply_lora(load_classifier(tiny_bert), lora_args(), "classification")
    counts = parameter_counts(model)
    data = reviews(tokenizer)
    trainer = make_trainer(
        model,
        tokenizer,
        str(tmp_path),
        data,
        DataCollatorWithPadding(tokenizer),
        eval_dataset=data,
        max_steps=3,
        learning_rate=0.5,  # big steps: the evaluations differ, and the best is not the last
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
    )
    trainer.train()
    assert not trainer.state.best_model_checkpoint.endswith("checkpoint-3")  # else this test proves nothing
    trainer.save_model(str(tmp_path / "final"))
    save_lora_outputs(trainer, str(tmp_path / "final"), merge=False, tokenizer=tokenizer)
    best = load_file(os.path.join(trainer.state.best_model_checkpoint, "adapter_model.safetensors"))
    final = load_file(os.path.join(tmp_path, "final", "adapter_model.safetensors"))
    assert best.keys() == final.keys() and "base_model.model.classifier.weight" in final
    for name, value in best.items():
        torch.testing.assert_close(final[name], value, msg=name)
    assert parameter_counts(model) == counts  # reloading the best adapter leaves it trainable


def test_options_parse_from_the_command_line_and_yaml(tmp_path):
    from transferkit.config import parse_config

    config = tmp_path / "lora.yaml"
    config.write_text("use_peft: true\nlora_r: 8\nlora_target_modules: [query, value]\n")
    (parsed,) = parse_config((LoraArguments,), ["--config", str(config), "--lora_modules_to_save", "bert.pooler"])
    assert (parsed.lora_r, parsed.lora_target_modules, parsed.lora_modules_to_save) == (
        8,
        ["query", "value"],
        ["bert.pooler"],
    )
    with pytest.raises(TransferKitError, match="lora_r only apply to LoRA"):
        parse_config((LoraArguments,), ["--lora_r", "8"])
