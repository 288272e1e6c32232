"""Options as users of transformers' example scripts write them: ranges checked where the config is read, settings
that an option implies (save_steps -> steps), do_train / do_eval / do_predict honoured, pad_to_max_length."""

from __future__ import annotations

import json

import pytest

from recipes import classify, mlm
from tests.tiny import write_templated_corpus
from transferkit.config import parse_config
from transferkit.errors import TransferKitError
from transferkit.example_scripts import NOT_TAKEN
from transferkit.ranges import TRAINING_ARGUMENT_RANGES, numeric_fields, option_range

# Paths that do not exist: an error about a range (and not about them) shows that nothing was loaded first.
NOTHING = ["--model_name_or_path", "no/such-model", "--train_file", "no_such_file.csv", "--output_dir", "unused"]


@pytest.mark.parametrize("recipe", [classify, mlm])
def test_every_numeric_option_has_a_range_and_its_default_is_in_it(recipe):
    fields = numeric_fields(recipe.ARGUMENT_TYPES)
    assert {"learning_rate", "per_device_train_batch_size", "max_seq_length", "lora_dropout"} <= {
        f.name for f in fields
    }
    missing = [field.name for field in fields if option_range(field) is None]
    assert not missing, f"numeric options without a range: {missing}"
    for field in fields:
        if field.name in TRAINING_ARGUMENT_RANGES or field.default is None:
            continue
        assert field.default in option_range(field), field.name


BAD_VALUES = [
    ("learning_rate", "-0.001", ">= 0"),
    ("per_device_train_batch_size", "0", ">= 1"),
    ("gradient_accumulation_steps", "0", ">= 1"),
    ("num_train_epochs", "0", "> 0"),
    ("max_steps", "0", "-1 or >= 1"),
    ("warmup_steps", "-5", ">= 0"),
    ("weight_decay", "-0.1", ">= 0"),
    ("adam_beta2", "1.0", ">= 0 and < 1"),
    ("adam_epsilon", "0", "> 0"),
    ("max_grad_norm", "-1", ">= 0"),
    ("label_smoothing_factor", "1", ">= 0 and < 1"),
    ("save_steps", "0", "> 0"),
    ("save_total_limit", "0", ">= 1"),
    ("seed", "-1", ">= 0 and <= 4294967295"),
    ("dataloader_num_workers", "-2", ">= 0"),
    ("max_seq_length", "4", ">= 8"),
    ("validation_split_percentage", "100", ">= 0 and < 100"),
    ("max_train_samples", "0", ">= 1"),
    ("preprocessing_num_workers", "0", ">= 1"),
    ("head_warmup_steps", "-1", ">= 0"),
    ("early_stopping_patience", "0", ">= 1"),
    ("lora_dropout", "1.5", ">= 0 and < 1"),
    ("lora_r", "0", ">= 1"),
    ("min_free_disk_gb", "-1", ">= 0"),
]


@pytest.mark.parametrize("name, value, allowed", BAD_VALUES)
def test_a_value_out_of_range_stops_before_anything_loads(name, value, allowed):
    with pytest.raises(TransferKitError) as caught:
        classify.main([*NOTHING, f"--{name}", value])
    message = str(caught.value)
    assert message.startswith(f"{name} must be {allowed}, got ") and "(command line)" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "name, value", [("mlm_probability", "0"), ("mlm_probability", "1"), ("random_replace_prob", "-0.1")]
)
def test_mlm_probabilities_out_of_range(name, value):
    with pytest.raises(TransferKitError, match=f"^{name} must be "):
        mlm.main([*NOTHING, f"--{name}", value])


def test_the_message_names_the_yaml_file_that_set_the_value(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: -1\n")
    with pytest.raises(TransferKitError, match=rf"learning_rate must be >= 0, got -1.0 \({config}\)"):
        classify.main([*NOTHING, "--config", str(config)])


def test_values_at_the_edges_are_accepted():
    *_, training = parse_config(
        classify.ARGUMENT_TYPES,
        [*NOTHING, "--learning_rate", "0", "--max_steps", "-1", "--adam_beta1", "0", "--warmup_steps", "0.1"],
        defaults=classify.DEFAULTS,
    )
    assert training.learning_rate == 0 and training.warmup_steps == 0.1


def parse(*extra: str, recipe=classify):
    return parse_config(recipe.ARGUMENT_TYPES, [*NOTHING, *extra], defaults=recipe.DEFAULTS)


def test_save_steps_alone_means_the_steps_strategy():
    *_, training = parse("--save_steps", "8")
    assert training.save_strategy == "steps" and training.save_steps == 8
    *_, training = parse("--eval_steps", "4")
    assert training.eval_strategy == "steps" and training.eval_steps == 4
    *_, training = parse()  # the recipe's own default stays when the user sets no interval
    assert training.save_strategy == "epoch" and training.eval_strategy == "epoch"


def test_save_steps_under_an_epoch_strategy_set_in_the_same_place_is_an_error(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("save_strategy: epoch\nsave_steps: 8\n")
    with pytest.raises(TransferKitError, match=r"save_steps 8 \(.*run.yaml\) contradicts save_strategy epoch"):
        parse("--config", str(config))
    with pytest.raises(TransferKitError, match=r"save_steps 8 \(command line\) contradicts save_strategy epoch"):
        parse("--save_strategy", "epoch", "--save_steps", "8")
    config.write_text("save_strategy: epoch\n")
    *_, training = parse("--config", str(config), "--save_steps", "8")  # the command line wins
    assert training.save_strategy == "steps" and training.save_steps == 8


def test_do_eval_false_evaluates_nothing_and_keeps_every_training_row():
    _, data, *_, training = parse("--do_eval", "false")
    assert training.eval_strategy == "no" and training.do_eval is False
    assert data.validation_split_percentage == 0
    with pytest.raises(TransferKitError, match="do_eval False .* contradicts validation_split_percentage 20"):
        parse("--do_eval", "false", "--validation_split_percentage", "20")  # the split would go unused
    with pytest.raises(TransferKitError, match="do_eval False .* contradicts eval_strategy steps"):
        parse("--do_eval", "false", "--eval_strategy", "steps")


def test_the_command_line_wins_over_the_yaml_file_with_a_warning(tmp_path, caplog):
    config = tmp_path / "run.yaml"
    config.write_text("eval_strategy: epoch\nlogging_steps: 50\ntest_split_percentage: 10\n")
    with caplog.at_level("WARNING", logger="transferkit.implied"):
        _, data, *_, training = parse("--config", str(config), "--do_eval", "false", "--logging_strategy", "epoch")
    assert training.eval_strategy == "no" and training.logging_strategy == "epoch"
    assert "do_eval False (command line) wins over eval_strategy epoch" in caplog.text
    assert "logging_strategy epoch (command line) wins over logging_steps 50" in caplog.text
    _, data, *_, training = parse("--config", str(config), "--do_train", "--do_eval")
    assert training.do_predict is False and data.test_split_percentage == 0  # no unused test split carved
    with pytest.raises(TransferKitError, match="do_predict False .* contradicts test_split_percentage 10"):
        parse("--do_train", "--test_split_percentage", "10")


def test_eval_steps_asks_for_evaluation_and_best_model_keeping_moves_both_strategies(tmp_path):
    *_, training = parse("--do_train", "--eval_steps", "4")
    assert training.do_eval is True and training.eval_strategy == "steps" and training.eval_steps == 4
    *_, cls, _, _, training = parse("--early_stopping_patience", "2", "--save_steps", "8")
    assert (training.save_strategy, training.eval_strategy, training.eval_steps) == ("steps", "steps", 8)
    config = tmp_path / "run.yaml"
    config.write_text("eval_steps: null\n")
    *_, training = parse("--config", str(config))
    assert training.eval_strategy == "epoch"  # a null interval asks for nothing


def test_the_splits_of_a_phase_that_is_off_are_not_read(reviews_csv, tmp_path):
    from transferkit.arguments import ModelArguments
    from transferkit.data import load_classification_splits

    test = tmp_path / "test.csv"
    test.write_text("text,label\ngreat film,neutral\n")  # a label training never saw: an error, if it were read
    _, data, *_ = parse("--train_file", reviews_csv, "--test_file", str(test))
    model = ModelArguments(model_name_or_path="unused")
    with pytest.raises(TransferKitError, match="neutral"):
        load_classification_splits(data, model, None, 42)
    splits, _, _ = load_classification_splits(data, model, None, 42, skip=("test",))
    assert "test" not in splits


def test_test_rows_left_blank_by_max_test_samples_stop_before_training(reviews_csv, tmp_path):
    from transferkit.arguments import ModelArguments
    from transferkit.data import load_classification_splits

    test = tmp_path / "test.csv"
    test.write_text('text,label\n"",neg\n"  ",\ngreat film,pos\n')
    _, data, *_ = parse("--train_file", reviews_csv, "--test_file", str(test), "--max_test_samples", "2")
    with pytest.raises(TransferKitError, match="The test split has no text in any row .* max_test_samples"):
        load_classification_splits(data, ModelArguments(model_name_or_path="unused"), None, 42)


@pytest.mark.parametrize("recipe", [classify, mlm])
def test_validate_runs_the_same_checks(recipe, tmp_path):
    from pathlib import Path

    from transferkit.validate import validate_recipe_config

    name = recipe.__name__.rsplit(".", 1)[-1]
    config = Path(tmp_path / f"{name}.yaml")
    for text, message in (
        ("learning_rate: -1\n", "learning_rate must be >= 0, got -1.0"),
        ("save_strategy: epoch\nsave_steps: 8\n", "save_steps 8 .* contradicts save_strategy epoch"),
        ("do_train: false\n", "do_train is off"),
    ):
        config.write_text(text)
        with pytest.raises(TransferKitError, match=message):
            validate_recipe_config(config, name, [])
    config.write_text("per_device_train_batch_size: 4\n")
    with pytest.raises(TransferKitError, match="per_device_train_batch_size must be >= 1, got 0 \\(command line\\)"):
        validate_recipe_config(config, name, ["--per_device_train_batch_size", "0"])
    if recipe is mlm:
        config.write_text("do_predict: true\n")
        with pytest.raises(TransferKitError, match="do_predict .*: the mlm recipe predicts nothing"):
            validate_recipe_config(config, name, [])


def test_do_train_false_is_refused_with_what_to_do_instead():
    for extra in (["--do_train", "false"], ["--do_eval"]):  # --do_eval alone: the example scripts would only evaluate
        with pytest.raises(TransferKitError, match="do_train is off: .*transferkit predict MODEL DATA --output FILE"):
            classify.main([*NOTHING, *extra])


def test_phases_not_asked_for_are_off_as_in_the_example_scripts():
    *_, training = parse("--do_train", "--do_eval")
    assert (training.do_train, training.do_eval, training.do_predict) == (True, True, False)
    _, data, *_, training = parse("--do_train")
    assert training.do_eval is False and training.eval_strategy == "no" and data.validation_split_percentage == 0
    *_, training = parse("--do_train", "--eval_strategy", "steps", "--eval_steps", "5")
    assert training.do_eval is True and training.eval_strategy == "steps"  # TrainingArguments' own rule
    *_, training = parse()
    assert (training.do_train, training.do_eval, training.do_predict) == (True, True, True)


def test_the_mlm_recipe_refuses_do_predict():
    with pytest.raises(TransferKitError, match=r"do_predict \(command line\): the mlm recipe predicts nothing"):
        mlm.main([*NOTHING, "--do_train", "--do_predict"])


def test_text_column_names_take_the_example_scripts_comma_form(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("text_column_names: sentence1,sentence2\n")
    for extra in (["--text_column_names", "sentence1,sentence2"], ["--config", str(config)]):
        _, data, *_ = parse(*extra)
        assert data.text_column_names == ["sentence1", "sentence2"]


def run_classify(tiny_bert, reviews_csv, out, *extra: str) -> None:
    classify.main(
        [
            "--model_name_or_path", tiny_bert, "--train_file", reviews_csv, "--output_dir", str(out),
            "--max_train_samples", "48", "--per_device_train_batch_size", "8", "--num_train_epochs", "1",
            "--max_seq_length", "32", "--report_to", "none", "--disable_tqdm", "true",
            *extra,
        ]
    )  # fmt: skip


def test_phases_and_save_steps_take_effect_in_a_run(tiny_bert, reviews_csv, tmp_path):
    out = tmp_path / "steps"
    run_classify(
        tiny_bert, reviews_csv, out, "--save_steps", "2", "--save_total_limit", "10", "--test_split_percentage", "10"
    )
    checkpoints = sorted(path.name for path in out.glob("checkpoint-*"))
    assert checkpoints[:2] == ["checkpoint-2", "checkpoint-4"]
    assert (out / "eval_results.json").is_file() and (out / "predictions.csv").is_file()

    out = tmp_path / "no-eval-no-predict"
    run_classify(tiny_bert, reviews_csv, out, "--do_train")  # evaluation and prediction not asked for: off
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert not any(key.startswith("eval_") for entry in history for key in entry)
    assert not (out / "eval_results.json").exists() and not (out / "predictions.csv").exists()
    assert (out / "model.safetensors").is_file()


def test_pad_to_max_length_pads_every_batch_to_max_seq_length(tiny_bert, tmp_path, monkeypatch):
    shapes = []
    original = mlm.MLMTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        shapes.append(tuple(inputs["input_ids"].shape))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(mlm.MLMTrainer, "compute_loss", recording)
    corpus = write_templated_corpus(str(tmp_path / "corpus.txt"), lines=40)
    common = [
        "--model_name_or_path", tiny_bert, "--train_file", corpus, "--line_by_line", "--max_seq_length", "48",
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--disable_tqdm", "true",
        "--do_eval", "false",
    ]  # fmt: skip
    mlm.main([*common, "--output_dir", str(tmp_path / "dynamic")])
    assert all(length < 48 for _, length in shapes)  # short lines: each batch padded to its longest
    shapes.clear()
    mlm.main([*common, "--output_dir", str(tmp_path / "fixed"), "--pad_to_max_length"])
    assert shapes and all(length == 48 for _, length in shapes)


def test_text_column_delimiter_joins_any_number_of_columns_into_one_text(tiny_bert):
    from transformers import AutoTokenizer

    from transferkit.preprocess import _tokenize_batch

    _, data, *_ = parse("--text_column_names", "title,body,category", "--text_column_delimiter", "\\n")
    assert data.text_column_names == ["title", "body", "category"] and data.text_column_delimiter == "\n"
    with pytest.raises(TransferKitError, match="to join more into one text, set text_column_delimiter"):
        parse("--text_column_names", "title,body,category")
    with pytest.raises(TransferKitError, match=r"text_column_delimiter '\\\\': a backslash starts an escape"):
        parse("--text_column_delimiter", "\\")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    batch = {"title": ["great"], "body": [None], "category": ["film"]}
    joined = _tokenize_batch(batch, tokenizer, ["title", "body", "category"], 32, delimiter=" ")
    assert joined["input_ids"] == tokenizer(["great film"])["input_ids"]  # one text; the empty side left out
    with pytest.raises(TransferKitError, match="text_column_delimiter .*: the mlm recipe reads each text column"):
        mlm.main([*NOTHING, "--text_column_delimiter", " "])


def test_shuffle_train_dataset_takes_a_seeded_random_subset(reviews_csv):
    from transferkit.arguments import ModelArguments
    from transferkit.data import load_classification_splits

    def train_texts(*extra: str) -> list[str]:
        _, data, *_ = parse("--train_file", reviews_csv, "--max_train_samples", "10", *extra)
        splits, _, _ = load_classification_splits(data, ModelArguments(model_name_or_path="unused"), None, 42)
        return splits["train"]["text"]

    first = train_texts()
    shuffled = train_texts("--shuffle_train_dataset")
    assert shuffled != first and shuffled == train_texts("--shuffle_train_dataset")
    assert shuffled != train_texts("--shuffle_train_dataset", "--shuffle_seed", "7")


def test_remove_splits_names_a_split_that_is_not_there(reviews_csv):
    from transferkit.arguments import ModelArguments
    from transferkit.data import load_classification_splits

    _, data, *_ = parse("--train_file", reviews_csv, "--test_file", reviews_csv, "--remove_splits", "test")
    splits, _, _ = load_classification_splits(data, ModelArguments(model_name_or_path="unused"), None, 42)
    assert "test" not in splits
    _, data, *_ = parse("--train_file", reviews_csv, "--remove_splits", "unused")
    with pytest.raises(TransferKitError, match="remove_splits: the dataset has no split 'unused' \\(splits: train\\)"):
        load_classification_splits(data, ModelArguments(model_name_or_path="unused"), None, 42)


def test_ignore_mismatched_sizes_starts_from_a_classifier_with_other_labels(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from transferkit.arguments import ModelArguments
    from transferkit.labels import LabelSpec
    from transferkit.models import load_classifier

    three = str(tmp_path / "three-labels")
    AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3).save_pretrained(three)
    spec = LabelSpec(problem_type="single_label_classification", names=("neg", "pos"))
    with pytest.raises(TransferKitError, match="shapes do not match .* set ignore_mismatched_sizes: true"):
        load_classifier(ModelArguments(model_name_or_path=three), spec)
    model = load_classifier(ModelArguments(model_name_or_path=three, ignore_mismatched_sizes=True), spec)
    assert model.config.num_labels == 2


@pytest.mark.parametrize("key", sorted(NOT_TAKEN))
def test_each_example_option_not_taken_stops_with_its_line(key):
    with pytest.raises(TransferKitError) as caught:
        classify.main([*NOTHING, f"--{key}=hf_SECRET"])
    message = str(caught.value)
    assert message.startswith(f"command line: '{key}' is an option of transformers' example scripts")
    assert message.endswith(NOT_TAKEN[key]) and "hf_SECRET" not in message


def test_dtype_and_attn_implementation_reach_from_pretrained(tiny_bert):
    import torch

    from transferkit.arguments import ModelArguments
    from transferkit.labels import LabelSpec
    from transferkit.models import load_classifier, load_language_model

    spec = LabelSpec(problem_type="single_label_classification", names=("neg", "pos"))
    model = load_classifier(ModelArguments(model_name_or_path=tiny_bert, dtype="bfloat16"), spec)
    assert next(model.parameters()).dtype == torch.bfloat16
    model = load_language_model(ModelArguments(model_name_or_path=tiny_bert, attn_implementation="eager"))
    assert model.config._attn_implementation == "eager" and next(model.parameters()).dtype == torch.float32
    with pytest.raises(TransferKitError, match="'dtype' expects one of 'auto', 'bfloat16'"):
        parse_config(classify.ARGUMENT_TYPES, ["--config", write_yaml("dtype: bf16\n"), *NOTHING])


def write_yaml(text: str) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(text)
    return handle.name


def test_an_interval_under_a_strategy_the_user_turned_off_is_left_alone():
    *_, training = parse("--save_strategy", "steps", "--save_steps", "4", "--save_strategy", "no")  # an override
    assert training.save_strategy == "no"
