"""The classify recipe end to end on a tiny BERT: in-process, with gradient accumulation, and under 2 processes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from recipes.classify import main
from tests.tiny import REPO, launch_two_processes, save_tiny_decoder, write_reviews_csv
from transferkit.errors import TransferKitError


def base_args(model: str, train_file: str, output_dir, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        model,
        "--train_file",
        train_file,
        "--output_dir",
        str(output_dir),
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "3e-3",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--seed",
        "1",
        *extra,
    ]


def logged_losses(output_dir) -> list[float]:
    with open(os.path.join(output_dir, "trainer_state.json")) as handle:
        return [entry["loss"] for entry in json.load(handle)["log_history"] if "loss" in entry]


def test_single_label_run_writes_everything_and_learns(tiny_bert, reviews_csv, tmp_path):
    out = tmp_path / "run"
    metrics = main(
        base_args(
            tiny_bert,
            reviews_csv,
            out,
            "--num_train_epochs",
            "6",
            "--test_split_percentage",
            "10",
            "--max_seq_length",
            "32",
        )
    )
    assert metrics["eval_accuracy"] >= 0.9 and metrics["test_accuracy"] >= 0.9
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "all_results.json",
        "predictions.csv",
        "confusion_matrix.png",
        "training_curves.png",
        "eval_results.json",
        "test_results.json",
    ):
        assert (out / name).is_file(), name
    results = json.loads((out / "all_results.json").read_text())
    assert {
        "eval_accuracy",
        "eval_f1_macro",
        "eval_matthews_correlation",
        "test_accuracy",
        "train_loss",
    } <= set(results)

    model = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    with torch.no_grad():
        logits = model(
            **tokenizer(["great superb fun film", "awful dull boring film"], return_tensors="pt", padding=True)
        ).logits
    assert logits.argmax(-1).tolist() == [1, 0]

    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert set(rows[0]) == {"text", "label", "predicted", "prob_neg", "prob_pos"}
    with torch.no_grad():  # each row's prediction belongs to that row's text (eval batches are length-sorted)
        rescored = model(**tokenizer([row["text"] for row in rows], return_tensors="pt", padding=True)).logits
    assert [row["predicted"] for row in rows] == [model.config.id2label[i] for i in rescored.argmax(-1).tolist()]
    assert len(rows) == 16
    assert abs(float(rows[0]["prob_neg"]) + float(rows[0]["prob_pos"]) - 1) < 1e-5


def test_multi_label_and_regression(tiny_bert, tmp_path):
    rows = [
        {
            "text": f"great film {i}" if i % 2 else f"dull plot {i}",
            "tags": ["pos", "film"] if i % 2 else ["neg"],
            "score": 4.5 if i % 2 else 1.25,
        }
        for i in range(40)
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    multi = main(base_args(tiny_bert, str(path), tmp_path / "multi", "--label_column_name", "tags", "--max_steps", "4"))
    assert {"eval_f1_micro", "eval_f1_macro", "eval_accuracy"} <= set(multi)
    config = json.loads((tmp_path / "multi" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert set(config["id2label"].values()) == {"film", "neg", "pos"}

    regression = main(
        base_args(
            tiny_bert,
            str(path),
            tmp_path / "reg",
            "--label_column_name",
            "score",
            "--max_steps",
            "4",
            "--early_stopping_patience",
            "2",
            "--eval_strategy",
            "steps",
            "--save_strategy",
            "steps",
            "--eval_steps",
            "2",
            "--save_steps",
            "2",
        )
    )
    assert {"eval_mse", "eval_pearsonr", "eval_spearmanr"} <= set(regression)
    state = json.loads((tmp_path / "reg" / "trainer_state.json").read_text())
    assert state["best_metric"] is not None and state["best_model_checkpoint"]


def test_class_weights_change_the_loss(tiny_bert, tmp_path):
    data = write_reviews_csv(str(tmp_path / "r.csv"), rows=40)
    common = "--max_steps 2 --logging_steps 1 --learning_rate 0 --validation_split_percentage 0".split()
    main(base_args(tiny_bert, data, tmp_path / "plain", *common))
    main(base_args(tiny_bert, data, tmp_path / "weighted", *common, "--class_weights", "1", "5"))
    plain, weighted = logged_losses(tmp_path / "plain"), logged_losses(tmp_path / "weighted")
    assert plain[0] != pytest.approx(weighted[0], rel=1e-3)


def test_gradient_accumulation_keeps_the_loss_scale(tiny_bert, reviews_csv, tmp_path):
    """The loss-scaling trap: batch 8 and batch 4 x 2 accumulation steps must log the same losses."""
    common = (
        "--max_steps 3 --logging_steps 1 --train_sampling_strategy random --validation_split_percentage 0 "
        "--save_strategy no --eval_strategy no"
    ).split()
    main(base_args(tiny_bert, reviews_csv, tmp_path / "b8", *common))
    main(
        base_args(
            tiny_bert,
            reviews_csv,
            tmp_path / "b4x2",
            *common,
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "2",
        )
    )
    assert logged_losses(tmp_path / "b4x2") == pytest.approx(logged_losses(tmp_path / "b8"), abs=1e-4)


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_bert, reviews_csv, tmp_path):
    """Real 2-process DDP (gloo) through the shipped CPU config: same losses as 1 process, one set of outputs,
    and test metrics over exactly the test rows (15: the last batch is padded across ranks, then trimmed)."""
    common = (
        "--max_steps 3 --logging_steps 1 --train_sampling_strategy random --save_strategy no --eval_strategy no "
        "--test_split_percentage 10 --max_test_samples 15"
    ).split()
    main(base_args(tiny_bert, reviews_csv, tmp_path / "one", *common))
    two = tmp_path / "two"
    result = launch_two_processes(
        "classify.py", base_args(tiny_bert, reviews_csv, two, *common, "--per_device_train_batch_size", "4")
    )
    assert "Global batch 8 = 4 per device x 1 accumulation steps x 2 processes" in result.stderr
    assert logged_losses(two) == pytest.approx(logged_losses(tmp_path / "one"), abs=1e-4)
    with open(two / "predictions.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 15
    one_results = json.loads((tmp_path / "one" / "all_results.json").read_text())
    two_results = json.loads((two / "all_results.json").read_text())
    assert two_results["test_accuracy"] == pytest.approx(one_results["test_accuracy"], abs=1e-6)
    assert AutoModelForSequenceClassification.from_pretrained(two).config.num_labels == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train_file", "/nonexistent/reviews.csv"], "train_file: no such file"),
        (
            ["--text_column_names", "review"],
            "column 'review' is not in the train split. Columns there: text, label",
        ),
        (["--label_column_name", "sentiment"], "column 'sentiment' is not in the train split"),
        (["--max_seq_length", "128"], "max_seq_length 128 is above what the model takes (64 tokens)"),
        (["--class_weights", "1", "2", "3"], "class_weights has 3 values but there are 2 labels"),
    ],
)
def test_bad_input_fails_before_training(tiny_bert, reviews_csv, tmp_path, extra, message):
    out = tmp_path / "bad"
    with pytest.raises(TransferKitError) as info:
        main(base_args(tiny_bert, reviews_csv, out, *extra))
    assert message in str(info.value)
    assert not out.exists() or not any(name.startswith("checkpoint") for name in os.listdir(out))


def test_unseen_validation_label(tiny_bert, reviews_csv, tmp_path):
    validation = write_reviews_csv(str(tmp_path / "v.csv"), rows=10, labels=("neg", "neutral"))
    with pytest.raises(TransferKitError, match="validation split has label 'neutral'"):
        main(base_args(tiny_bert, reviews_csv, tmp_path / "o", "--validation_file", validation))


def test_refuses_to_overwrite_a_finished_run_and_resumes(tiny_bert, reviews_csv, tmp_path):
    out = tmp_path / "run"
    common = ("--max_steps", "4", "--save_steps", "2", "--save_strategy", "steps", "--eval_strategy", "no")
    main(base_args(tiny_bert, reviews_csv, out, *common))
    with pytest.raises(TransferKitError, match="already holds"):
        main(base_args(tiny_bert, reviews_csv, out, *common))
    metrics = main(base_args(tiny_bert, reviews_csv, out, *common, "--overwrite_output_dir", "true"))
    assert metrics["train_loss"] > 0


def test_cli_prints_one_line_error(tiny_bert, reviews_csv, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "recipes", "classify.py"),
            *base_args(tiny_bert, reviews_csv, tmp_path / "o", "--text_column_names", "body"),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO),
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: text_column_names: column 'body'")
    assert "Traceback" not in result.stderr


def test_text_cleaning_stage_runs_inside_the_recipe(tiny_bert, tmp_path):
    pytest.importorskip("punkt", reason="needs the text extra: pip install 'transferkit[text]'")
    path = tmp_path / "shouty.csv"
    path.write_text(
        "text,label\n" + "".join(f"THE FILM WAS GREAT {i}!,pos\nTHE PLOT IS DULL {i}.,neg\n" for i in range(10))
    )
    out = tmp_path / "clean"
    main(
        base_args(
            tiny_bert,
            str(path),
            out,
            "--max_steps",
            "2",
            "--clean_text",
            "true",
            "--lowercase",
            "true",
            "--remove_numbers",
            "true",
            "--test_split_percentage",
            "20",
        )
    )
    with open(out / "predictions.csv", newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    assert texts and all(text == text.lower() and not any(ch.isdigit() for ch in text) for text in texts)
    assert any(text.endswith((" !", " .")) for text in texts)  # NLTK word tokens re-joined with spaces


def test_decoder_classifier_gets_a_pad_token_and_pools_the_last_real_token(reviews_csv, tmp_path):
    model_dir = save_tiny_decoder(str(tmp_path / "gpt2"), "gpt2")
    out = tmp_path / "gpt2-cls"
    main(base_args(model_dir, reviews_csv, out, "--max_steps", "6", "--test_split_percentage", "10"))
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token == "<|endoftext|>" and model.config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.padding_side == "right"
    texts = ["great film", "the plot was dull and the cast was flat"]
    with torch.no_grad():  # a padded batch scores each text as it scores it alone: pooling skips the pads
        batch = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
        alone = torch.cat([model(**tokenizer([text], return_tensors="pt")).logits for text in texts])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_lora_under_two_processes_trains_and_saves_one_adapter(tiny_bert, reviews_csv, tmp_path):
    from peft import AutoPeftModelForSequenceClassification

    from transferkit.lora import label_kwargs

    out = tmp_path / "lora2"
    launch_two_processes(
        "classify.py",
        base_args(
            tiny_bert,
            reviews_csv,
            out,
            "--max_steps",
            "4",
            "--use_peft",
            "true",
            "--lora_r",
            "4",
            "--merge_adapter",
            "true",
            "--per_device_train_batch_size",
            "4",
        ),
    )
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    results = json.loads((out / "all_results.json").read_text())
    assert 0 < results["trainable_params"] < results["total_params"]
    adapter = AutoPeftModelForSequenceClassification.from_pretrained(out, **label_kwargs(out)).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged").eval()
    batch = AutoTokenizer.from_pretrained(out)(["great fun film", "dull plot"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(adapter(**batch).logits, merged(**batch).logits, atol=1e-5, rtol=1e-5)


def test_lora_run_saves_the_adapter_once_and_merges_without_copying_the_live_model(
    tiny_bert, reviews_csv, tmp_path, monkeypatch
):
    import copy

    from peft import PeftModel
    from transformers import Trainer

    saves, deepcopy = [], copy.deepcopy

    def refuse_to_copy_a_peft_model(value, *args, **kwargs):
        assert not isinstance(value, PeftModel), "the live model was copied to merge it"
        return deepcopy(value, *args, **kwargs)

    original_save = Trainer.save_model

    def counting_save(self, output_dir=None, _internal_call=False):
        saves.append(output_dir or self.args.output_dir)
        return original_save(self, output_dir, _internal_call)

    monkeypatch.setattr(copy, "deepcopy", refuse_to_copy_a_peft_model)
    monkeypatch.setattr(Trainer, "save_model", counting_save)
    out = tmp_path / "lora"
    args = ["--max_steps", "2", "--use_peft", "true", "--lora_r", "4", "--merge_adapter", "true"]
    main(base_args(tiny_bert, reviews_csv, out, *args, "--save_strategy", "no"))
    assert saves == [str(out)]
    assert (out / "adapter_model.safetensors").is_file() and (out / "merged" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--validation_split_percentage", "0", "--load_best_model_at_end", "true"],
         "No validation split, so evaluation is off: --load_best_model_at_end requires the save and eval strategy"),
        (["--early_stopping_patience", "2", "--save_strategy", "steps", "--eval_strategy", "epoch"],
         "early_stopping_patience keeps the best model: --load_best_model_at_end requires the save and eval strategy"),
    ],
    ids=["no-validation-but-best-model", "early-stopping-with-mismatched-strategies"],
)  # fmt: skip
def test_settings_decided_after_parsing_pass_trainingarguments_own_checks(
    extra, message, tiny_bert, reviews_csv, tmp_path
):
    with pytest.raises(TransferKitError, match=message):
        main(base_args(tiny_bert, reviews_csv, tmp_path / "run", "--max_steps", "2", *extra))
    assert not (tmp_path / "run").exists()
