"""Config parsing: YAML sets defaults, the command line wins, typos and wrong types fail with the key named."""

from __future__ import annotations

import pytest
from transformers import TrainingArguments

from transferkit.arguments import ClassificationArguments, DataArguments, ModelArguments
from transferkit.config import build_parser, parse_config
from transferkit.errors import TransferKitError

TYPES = (ModelArguments, DataArguments, ClassificationArguments, TrainingArguments)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_sets_values_and_command_line_wins(tmp_path):
    config = write(
        tmp_path,
        "model_name_or_path: m\ntrain_file: t.csv\nlearning_rate: 1.0e-4\n"
        "num_train_epochs: 2\ntext_column_names: [a, b]\nbf16: false\n",
    )
    model, data, _, training = parse_config(TYPES, ["--config", config, "--num_train_epochs", "5"])
    assert model.model_name_or_path == "m"
    assert data.text_column_names == ["a", "b"]
    assert training.learning_rate == pytest.approx(1e-4)
    assert training.num_train_epochs == 5


def test_recipe_defaults_sit_between_dataclass_defaults_and_yaml(tmp_path):
    config = write(tmp_path, "model_name_or_path: m\ntrain_file: t.csv\nlogging_steps: 7\n")
    defaults = {"logging_steps": 3, "eval_strategy": "epoch"}
    *_, training = parse_config(TYPES, ["--config", config], defaults=defaults)
    assert training.logging_steps == 7
    assert training.eval_strategy == "epoch"


def test_yaml_int_accepted_for_float_field(tmp_path):
    config = write(tmp_path, "model_name_or_path: m\ntrain_file: t.csv\nnum_train_epochs: 3\n")
    *_, training = parse_config(TYPES, ["--config", config])
    assert training.num_train_epochs == 3.0


def test_unknown_yaml_key_names_closest_valid_key(tmp_path):
    config = write(tmp_path, "model_name_or_path: m\ntrain_file: t.csv\nlearning_rat: 0.1\n")
    with pytest.raises(TransferKitError, match=r"unknown key 'learning_rat'.*Did you mean 'learning_rate'"):
        parse_config(TYPES, ["--config", config])


def test_unknown_command_line_flag_names_closest_key(tmp_path):
    with pytest.raises(TransferKitError, match=r"unknown key 'max_seq_lenght'.*'max_seq_length'"):
        parse_config(TYPES, ["--model_name_or_path", "m", "--train_file", "t.csv", "--max_seq_lenght", "64"])


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("num_train_epochs: three", "'num_train_epochs' expects a number, got 'three'"),
        ("per_device_train_batch_size: 8.5", "'per_device_train_batch_size' expects an integer"),
        ("drop_duplicates: maybe", "'drop_duplicates' expects true or false"),
        ("text_column_names: {a: 1}", "'text_column_names' expects a list of strings, got a mapping"),
        ("eval_strategy: sometimes", "'eval_strategy' expects one of"),
        ("max_seq_length: [1, 2]", "'max_seq_length' takes a single value"),
    ],
)
def test_wrong_type_names_key_and_expected_type(tmp_path, line, expected):
    config = write(tmp_path, f"model_name_or_path: m\ntrain_file: t.csv\n{line}\n")
    with pytest.raises(TransferKitError) as info:
        parse_config(TYPES, ["--config", config])
    assert expected in str(info.value)
    assert config in str(info.value)


def test_yaml_must_be_a_mapping(tmp_path):
    config = write(tmp_path, "- just\n- a list\n")
    with pytest.raises(TransferKitError, match="must hold a mapping"):
        parse_config(TYPES, ["--config", config])


def test_missing_config_file():
    with pytest.raises(TransferKitError, match="Config file not found"):
        parse_config(TYPES, ["--config", "/nonexistent/c.yaml"])


def test_required_option_can_come_from_yaml_only(tmp_path):
    config = write(tmp_path, "model_name_or_path: from-yaml\ntrain_file: t.csv\n")
    model, *_ = parse_config(TYPES, ["--config", config])
    assert model.model_name_or_path == "from-yaml"


def test_help_lists_every_option_with_help_text():
    text = build_parser(TYPES).format_help()
    for option in (
        "--model_name_or_path",
        "--text_column_names",
        "--validation_split_percentage",
        "--class_weights",
        "--learning_rate",
        "--config",
        "--max_seq_length",
        "--metric_name",
    ):
        assert option in text
    assert "One text column, or two encoded as a text pair" in text


def test_dataclass_checks_fail_early():
    with pytest.raises(TransferKitError, match="No training data"):
        parse_config(TYPES, ["--model_name_or_path", "m"])
    with pytest.raises(TransferKitError, match="class_weights takes 'auto'"):
        parse_config(TYPES, ["--model_name_or_path", "m", "--train_file", "t", "--class_weights", "x", "y"])


def test_a_str_or_bool_training_option_takes_its_words_too(tmp_path):
    """TrainingArguments' include_num_input_tokens_seen is `str | bool` (all, non_padding, no, or a boolean), which
    HfArgumentParser alone reads as a boolean only."""
    base = ["--model_name_or_path", "m", "--train_file", "t.csv"]
    *_, training = parse_config(TYPES, [*base, "--include_num_input_tokens_seen", "non_padding"])
    assert training.include_num_input_tokens_seen == "non_padding"
    *_, training = parse_config(TYPES, ["--config", write(tmp_path, "include_num_input_tokens_seen: true\n"), *base])
    assert training.include_num_input_tokens_seen == "all"
    with pytest.raises(TransferKitError, match="expects one of all, non_padding, no, true or false, got 'non-padding'"):
        parse_config(TYPES, ["--config", write(tmp_path, "include_num_input_tokens_seen: non-padding\n"), *base])
    with pytest.raises(SystemExit):  # argparse's own error for a command-line typo
        parse_config(TYPES, [*base, "--include_num_input_tokens_seen", "none"])
