"""`precision`: auto picks bf16 where the hardware runs it fast, before TrainingArguments is built; flags and the
accelerate config keep their say; the card and all_results.json record what Accelerate actually used."""

from __future__ import annotations

import json
import logging

import pytest
import transformers as tf
from transformers import Trainer, TrainingArguments

from recipes import classify
from transferkit import precision
from transferkit.arguments import DataArguments, ModelArguments
from transferkit.config import parse_config
from transferkit.errors import TransferKitError
from transferkit.publish import finish_run

# Paths that do not exist: parsing alone must settle the precision, nothing is loaded.
NOTHING = ["--model_name_or_path", "no/such-model", "--train_file", "no_such_file.csv", "--output_dir", "unused"]


@pytest.fixture(autouse=True)
def cpu_machine(monkeypatch):
    """A CPU-only machine with AMX, outside any accelerate launch; tests change what they need."""
    monkeypatch.delenv(precision.LAUNCHER_ENV, raising=False)
    monkeypatch.setattr(precision, "_accelerator", lambda: None)
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: ["amx_bf16", "avx512_bf16"])


def training_args(*argv: str, yaml_text: str | None = None, tmp_path=None) -> TrainingArguments:
    config = []
    if yaml_text is not None:
        path = tmp_path / "config.yaml"
        path.write_text(yaml_text)
        config = ["--config", str(path)]
    return parse_config(classify.ARGUMENT_TYPES, [*config, *NOTHING, *argv])[-1]


def test_auto_on_a_bf16_cpu_trains_in_bf16_on_the_cpu_and_says_why(caplog):
    with caplog.at_level(logging.INFO, logger="transferkit.precision"):
        args = training_args("--precision", "auto")
    assert args.bf16 and args.use_cpu and not args.fp16 and args.mixed_precision == "bf16"
    lines = [record.getMessage() for record in caplog.records if record.name == "transferkit.precision"]
    assert lines == ["Precision: bf16 mixed precision (auto: this CPU has amx_bf16)."]


def test_auto_without_bf16_hardware_stays_fp32(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: [])
    with caplog.at_level(logging.INFO, logger="transferkit.precision"):
        args = training_args("--precision", "auto")
    assert not args.bf16 and not args.use_cpu and args.mixed_precision == "no"
    assert "Precision: fp32 (auto: this CPU has no bf16 instructions" in caplog.text


def test_auto_on_avx512_bf16_without_amx_stays_fp32(monkeypatch, caplog):
    """Measured here: bf16 autocast on AVX-512 BF16 without AMX trained a classification epoch 1.6x slower."""
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: ["avx512_bf16"])
    with caplog.at_level(logging.INFO, logger="transferkit.precision"):
        args = training_args("--precision", "auto")
    assert not args.bf16 and not args.use_cpu
    assert "Precision: fp32 (auto: this CPU has avx512_bf16 but no AMX, where bf16 trains slower)" in caplog.text


def test_unset_precision_changes_nothing_even_where_bf16_is_fast():
    """The quickstart's published numbers are fp32: a config without `precision` trains as before."""
    args = training_args()
    assert not args.bf16 and not args.use_cpu and args.mixed_precision == "no"


def test_auto_keeps_the_accelerate_configs_mixed_precision(monkeypatch, caplog):
    monkeypatch.setenv(precision.LAUNCHER_ENV, "fp16")
    with caplog.at_level(logging.INFO, logger="transferkit.precision"):
        args = training_args("--precision", "auto")
    assert not args.bf16 and args.mixed_precision == "fp16"  # TrainingArguments took it from the launcher
    assert "Precision: fp16 mixed precision (accelerate config: mixed_precision fp16" in caplog.text
    monkeypatch.setenv(precision.LAUNCHER_ENV, "no")  # what `accelerate launch` exports when its config is silent
    assert training_args("--precision", "auto").bf16


def test_flags_the_user_sets_win_over_auto(monkeypatch):
    assert not training_args("--precision", "auto", "--bf16", "false").bf16
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: [])
    args = training_args("--precision", "auto", "--bf16", "true", "--use_cpu", "true")
    assert args.bf16 and args.mixed_precision == "bf16"


def test_a_flag_contradicting_precision_follows_the_precedence_rule(tmp_path, caplog):
    args = training_args("--bf16", "true", yaml_text="precision: fp32\n", tmp_path=tmp_path)
    assert args.bf16 and args.use_cpu  # the command line's flag wins, with the use_cpu it needs here
    assert "bf16 True (command line) wins over precision fp32" in caplog.text
    assert training_args("--precision", "bf16", yaml_text="bf16: false\n", tmp_path=tmp_path).bf16
    with pytest.raises(TransferKitError, match="precision bf16 .* contradicts bf16 False"):
        training_args("--precision", "bf16", "--bf16", "false")


def test_precision_fp32_winning_over_a_yaml_flag_turns_the_flag_off(tmp_path):
    args = training_args("--precision", "fp32", yaml_text="bf16: true\n", tmp_path=tmp_path)
    assert not args.bf16 and not args.fp16  # the log said fp32: the run must not train in bf16


def test_code_that_asks_the_arguments_sees_the_accelerate_configs_precision(monkeypatch):
    """TrainingArguments keeps a launcher's bf16 in `mixed_precision` with its bf16 flag off: QLoRA's compute dtype
    and the dry run's memory estimate read both."""
    monkeypatch.setenv(precision.LAUNCHER_ENV, "bf16")
    args = training_args("--use_cpu", "true")
    assert not args.bf16 and precision.args_precision(args) == "bf16"
    monkeypatch.setenv(precision.LAUNCHER_ENV, "no")
    assert precision.args_precision(training_args("--use_cpu", "true")) is None


def test_fp32_cannot_undo_the_accelerate_configs_mixed_precision(monkeypatch):
    monkeypatch.setenv(precision.LAUNCHER_ENV, "bf16")
    with pytest.raises(TransferKitError, match="precision fp32 .* mixed_precision bf16"):
        training_args("--precision", "fp32")
    assert training_args("--precision", "bf16").bf16  # the flag and the launcher agree


def test_help_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        parse_config(classify.ARGUMENT_TYPES, ["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--precision {auto,bf16,fp16,fp32}" in help_text and "AMX" in help_text


@pytest.mark.parametrize("launcher", ["bf16", "no"])
def test_card_and_all_results_record_the_precision_accelerate_used(launcher, monkeypatch, tmp_path):
    """Set only in the accelerate config, bf16 leaves `args.bf16` False: the record must not follow the flag."""
    monkeypatch.setenv(precision.LAUNCHER_ENV, launcher)
    (tmp_path / "all_results.json").write_text(json.dumps({"train_loss": 0.5}))
    config = tf.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32)  # fmt: skip
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    trainer = Trainer(model=tf.BertForSequenceClassification(config), args=args)
    assert not args.bf16 and trainer.accelerator.mixed_precision == launcher
    finish_run(trainer, push=None, task="text-classification", metrics={"eval_accuracy": 0.9},
               model_args=ModelArguments(model_name_or_path="tiny"),
               data_args=DataArguments(train_file="train.csv"))  # fmt: skip
    expected = {"bf16": "bf16", "no": "fp32"}[launcher]
    assert json.loads((tmp_path / "all_results.json").read_text()) == {"train_loss": 0.5, "precision": expected}
    card = (tmp_path / "README.md").read_text()
    assert f"\n| precision | {expected} |" in card and "\n| bf16 |" not in card  # no raw flag row
