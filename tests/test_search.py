"""hp_search in the classify recipe: Optuna trials on validation, trials.csv, a best.yaml that runs as it is, the
best config retrained and tested once; bad search spaces refused before anything loads."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
import yaml
from transformers import TrainingArguments

from recipes import classify
from tests.tiny import launch_two_processes
from transferkit.config import parse_config
from transferkit.errors import TransferKitError
from transferkit.evidence.search import BEST_CONFIG, SEARCH_DIR, TRIALS_FILE, TrialObjective, user_config
from transferkit.head_warmup import HeadWarmupCallback
from transferkit.trainers import ClassificationTrainer

SPACE = {
    "learning_rate": {"low": 1.0e-3, "high": 5.0e-3, "log": True},
    "num_train_epochs": {"choices": [1, 2]},
    "per_device_train_batch_size": [16, 32],
    "warmup_steps": {"low": 0.0, "high": 0.2},
    "weight_decay": {"low": 0.0, "high": 0.1},
    "head_warmup_steps": {"choices": [0, 2]},
}
# Paths that do not exist: an error about hp_search (and not about them) shows that nothing was loaded first.
NOTHING = ["--model_name_or_path", "no/such-model", "--train_file", "no_such_file.csv", "--output_dir", "unused"]


def write_config(path, tiny_bert: str, reviews_csv: str, output_dir, hp_search: dict | None, **keys) -> str:
    config = {
        "model_name_or_path": tiny_bert,
        "train_file": reviews_csv,
        "output_dir": str(output_dir),
        "test_split_percentage": 10,
        "max_seq_length": 32,
        "per_device_eval_batch_size": 64,
        "seed": 3,
        "report_to": "none",
        "disable_tqdm": True,
        "logging_steps": 2,
        **keys,
    }
    if hp_search is not None:
        config["hp_search"] = hp_search
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def spy(monkeypatch, name: str, record) -> None:
    """ClassificationTrainer.<name>, calling `record(trainer)` after each call."""
    real = getattr(ClassificationTrainer, name)

    def recorded(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        record(self)
        return result

    monkeypatch.setattr(ClassificationTrainer, name, recorded)


def optimizer_settings(trainer: ClassificationTrainer) -> tuple[float, float, set[float], list[int]]:
    warmups = [cb.steps for cb in trainer.callback_handler.callbacks if isinstance(cb, HeadWarmupCallback)]
    rates = {group["lr"] for group in trainer.optimizer.param_groups}
    return trainer.args.learning_rate, trainer.args.warmup_steps, rates, warmups


def read_trials(output_dir) -> list[dict[str, str]]:
    with open(os.path.join(output_dir, SEARCH_DIR, TRIALS_FILE), encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_search_writes_every_trial_and_a_best_config_retrained_and_tested_once(
    tiny_bert, reviews_csv, tmp_path, monkeypatch
):
    out = tmp_path / "search"
    search = {"n_trials": 3, "metric": "loss", "space": SPACE}  # the loss: no ties on 16 validation rows
    config = write_config(tmp_path / "search.yaml", tiny_bert, reviews_csv, out, search, max_train_samples=64)
    predicted, trained = [], []  # every Trainer.predict (the test split), and the arguments of every training
    spy(monkeypatch, "predict", lambda trainer: predicted.append(trainer.args.output_dir))
    spy(monkeypatch, "train", lambda trainer: trained.append(trainer.args))
    optimizers = []  # what each training ran with: its args' values, its optimizer's rates, its head warm-up
    spy(monkeypatch, "create_optimizer", lambda trainer: optimizers.append(optimizer_settings(trainer)))

    metrics = classify.main(["--config", config, "--overwrite_output_dir", "true"])

    trials = read_trials(out)
    assert [row["number"] for row in trials] == ["0", "1", "2"]
    assert {row["state"] for row in trials} == {"COMPLETE"}
    for row in trials:
        assert 1e-3 <= float(row["learning_rate"]) <= 5e-3 and 0 <= float(row["warmup_steps"]) <= 0.2
        assert 0 <= float(row["weight_decay"]) <= 0.1
        assert row["num_train_epochs"] in ("1", "2") and row["per_device_train_batch_size"] in ("16", "32")
        assert row["head_warmup_steps"] in ("0", "2") and float(row["eval_loss"]) > 0 and float(row["seconds"]) > 0
    assert len({row["eval_loss"] for row in trials}) == 3
    for row, (learning_rate, warmup_ratio, rates, head_warmup) in zip(trials, optimizers):  # what each trial ran with
        assert learning_rate == pytest.approx(float(row["learning_rate"])) and rates == {learning_rate}
        assert warmup_ratio == pytest.approx(float(row["warmup_steps"])) and warmup_ratio > 0  # not cast to int 0
        assert head_warmup == ([] if row["head_warmup_steps"] == "0" else [int(row["head_warmup_steps"])])
    best = min(trials, key=lambda row: float(row["eval_loss"]))  # eval_loss: minimized by default

    best_yaml = out / SEARCH_DIR / BEST_CONFIG
    written = yaml.safe_load(best_yaml.read_text())
    assert "hp_search" not in written and written["train_file"] == reviews_csv and written["seed"] == 3
    assert "overwrite_output_dir" not in written  # run again, it would delete the retrained model and hp_search/
    for name in SPACE:
        assert str(written[name]) == best[name], name
    assert f"python recipes/classify.py --config {best_yaml}" in best_yaml.read_text()
    # it parses as a classify config, with the best values
    *_, search_args, training_args = parse_config(classify.ARGUMENT_TYPES, ["--config", str(best_yaml)])
    assert search_args.plan is None and training_args.learning_rate == pytest.approx(float(best["learning_rate"]))

    # 3 trials, then one retrain with the best values, in output_dir; the test split read once, by the retrain
    assert len(trained) == 4 and len(predicted) == 1
    assert trained[-1].output_dir == str(out) and trained[-1].learning_rate == pytest.approx(written["learning_rate"])
    assert trained[-1].per_device_train_batch_size == written["per_device_train_batch_size"]
    assert all(args.output_dir.startswith(str(out / SEARCH_DIR)) for args in trained[:3])
    assert "test_accuracy" in metrics and not [key for key in trials[0] if key.startswith("test")]
    results = json.loads((out / "all_results.json").read_text())
    assert results["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    saved = torch.load(out / "training_args.bin", weights_only=False)  # the saved model is the best config's
    assert saved.learning_rate == pytest.approx(written["learning_rate"]) and (out / "model.safetensors").is_file()
    assert not (out / SEARCH_DIR / "trials").exists()  # no trial checkpoints left


def test_one_search_under_early_stopping_then_the_best_config_on_every_seed(
    tiny_bert, reviews_csv, tmp_path, monkeypatch
):
    out = tmp_path / "seeds"
    search = {"n_trials": 2, "metric": "loss", "space": {"learning_rate": {"low": 1.0e-3, "high": 4.0e-3}}}
    keys = {"num_seeds": 2, "max_train_samples": 32, "per_device_train_batch_size": 16, "num_train_epochs": 2,
            "early_stopping_patience": 1}  # fmt: skip
    config = write_config(tmp_path / "seeds.yaml", tiny_bert, reviews_csv, out, search, **keys)
    trained, saved = [], []
    spy(monkeypatch, "train", lambda trainer: trained.append((trainer.args.output_dir, trainer.args.seed)))
    spy(monkeypatch, "_save_checkpoint", lambda trainer: saved.append(trainer.args.output_dir))
    classify.main(["--config", config])

    trials_dir = str(out / SEARCH_DIR / "trials")
    assert trained == [(trials_dir, 3), (trials_dir, 3), (str(out / "seed-3"), 3), (str(out / "seed-4"), 4)]
    assert {row["state"] for row in read_trials(out)} == {"COMPLETE"}
    best = yaml.safe_load((out / SEARCH_DIR / BEST_CONFIG).read_text())
    assert best["num_seeds"] == 2 and best["early_stopping_patience"] == 1
    # the trials saved checkpoints to load their best model at the end, and deleted them
    assert trials_dir in saved and not os.path.exists(trials_dir)
    results = json.loads((out / "all_results.json").read_text())  # the seeds' aggregate
    assert results["num_seeds"] == 2 and "test_accuracy_ci95_low" in results


@pytest.mark.slow
def test_search_under_two_process_ddp_gives_every_rank_the_trials_values(tiny_bert, reviews_csv, tmp_path):
    """Rank 0 samples, the other rank trains with the broadcast values (a batch size that differed between the ranks
    would hang DDP), pruning off; one best.yaml, retrained by both."""
    out = tmp_path / "ddp"
    space = {"per_device_train_batch_size": [8, 16], "head_warmup_steps": [0, 1]}
    search = {"n_trials": 2, "metric": "loss", "space": space}
    config = write_config(tmp_path / "ddp.yaml", tiny_bert, reviews_csv, out, search, max_train_samples=32)
    result = launch_two_processes("classify.py", ["--config", config])
    assert "pruning off under several processes" in result.stderr
    assert len(read_trials(out)) == 2 and (out / SEARCH_DIR / BEST_CONFIG).is_file()
    assert "test_accuracy" in json.loads((out / "all_results.json").read_text())


def test_a_trials_value_is_the_evaluation_of_the_model_it_keeps():
    """With load_best_model_at_end a trial keeps its best evaluation's model, so that is its value (transformers
    reports the last); without, the last; each trial starts afresh."""
    keep_best = TrainingArguments("unused", load_best_model_at_end=True, metric_for_best_model="accuracy",
                                  eval_strategy="epoch", save_strategy="epoch")  # fmt: skip
    evaluations = [{"eval_accuracy": 0.6, "eval_f1_macro": 0.5}, {"eval_accuracy": 0.8, "eval_f1_macro": 0.7},
                   {"eval_accuracy": 0.7, "eval_f1_macro": 0.9}]  # fmt: skip
    for args, metric, expected in (
        (keep_best, "eval_f1_macro", 0.7),
        (TrainingArguments("unused"), "eval_f1_macro", 0.9),
    ):
        objective = TrialObjective(metric, args)
        objective.on_train_begin(args, None, None)
        assert [objective(metrics) for metrics in evaluations][-1] == expected
    objective.on_train_begin(args, None, None)  # the next trial
    assert objective({"eval_accuracy": 0.1, "eval_f1_macro": 0.2}) == 0.2
    with pytest.raises(TransferKitError, match="eval_f1_macro is not among the validation metrics"):
        objective({"eval_accuracy": 0.1})


def test_search_needs_a_validation_split_and_a_metric_it_reports(tiny_bert, reviews_csv, tmp_path):
    space = {"n_trials": 2, "space": {"learning_rate": {"low": 1.0e-3, "high": 2.0e-3}}}
    no_validation = write_config(tmp_path / "a.yaml", tiny_bert, reviews_csv, tmp_path / "a", space,
                                 validation_split_percentage=0)  # fmt: skip
    with pytest.raises(TransferKitError, match="hp_search picks on the validation split.*validation_split_percentage"):
        classify.main(["--config", no_validation])
    misspelt = write_config(tmp_path / "b.yaml", tiny_bert, reviews_csv, tmp_path / "b", {**space, "metric": "acuracy"})
    with pytest.raises(TransferKitError, match="eval_acuracy is not a validation metric.*Did you mean eval_accuracy"):
        classify.main(["--config", misspelt])
    assert not (tmp_path / "a" / SEARCH_DIR).exists() and not (tmp_path / "b" / SEARCH_DIR).exists()
    # a finished search whose retrain did not finish is neither searched again nor replaced, unless asked
    (tmp_path / "c" / SEARCH_DIR).mkdir(parents=True)
    (tmp_path / "c" / SEARCH_DIR / BEST_CONFIG).write_text("seed: 1\n")
    finished = write_config(tmp_path / "c.yaml", tiny_bert, reviews_csv, tmp_path / "c", space)
    with pytest.raises(
        TransferKitError, match="holds a finished search.*resume_from_checkpoint: auto.*overwrite_output"
    ):
        classify.main(["--config", finished])
    assert (tmp_path / "c" / SEARCH_DIR / BEST_CONFIG).read_text() == "seed: 1\n"


BAD_SPACES = [
    (
        {"space": {"learning_rat": {"low": 1.0e-5, "high": 1.0e-4}}},
        "unknown option a search can vary 'learning_rat'. Did you mean 'learning_rate'",
    ),
    ({"space": {"learning_rate": {"low": 1.0e-4, "high": 1.0e-5}}}, r"low \(0.0001\) must be below high"),
    ({"space": {"learning_rate": {"low": 0.0, "high": 1.0e-4, "log": True}}}, "log: true needs low above 0"),
    ({"space": {"learning_rate": {"low": -1.0e-4, "high": 1.0e-4}}}, r"learning_rate.low must be >= 0"),
    ({"space": {"learning_rate": {"low": "1e-5", "high": 1.0e-4}}}, "write 1.0e-5"),
    ({"space": {"learning_rate": {"low": 1.0e-5}}}, "needs both low and high"),
    ({"space": {"learning_rate": {"lo": 1.0e-5, "high": 1.0e-4}}}, "unknown key 'lo'. Did you mean 'low'"),
    ({"space": {"per_device_train_batch_size": [16, 0]}}, r"per_device_train_batch_size.choices must be >= 1"),
    ({"space": {"per_device_train_batch_size": [16, 24.5]}}, "takes a whole number"),
    ({"space": {"per_device_train_batch_size": {"choices": []}}}, "non-empty list"),
    ({"space": {"num_train_epochs": {"low": 1.5, "high": 3}}}, "must be whole numbers"),
    ({"space": {"warmup_steps": {"low": 0.05, "high": 100}}}, "a ratio .both below 1. or steps"),
    ({"space": {"head_warmup_steps": {"low": -1, "high": 10}}}, "head_warmup_steps.low must be >= 0"),
    ({"space": {}}, "hp_search needs a space"),
    ({"n_trials": 3}, "hp_search needs a space"),
    ({"n_trial": 3, "space": {"weight_decay": [0.0, 0.1]}}, "unknown key 'n_trial'. Did you mean 'n_trials'"),
    ({"n_trials": 0, "space": {"weight_decay": [0.0, 0.1]}}, "n_trials must be a whole number >= 1"),
    ({"direction": "up", "space": {"weight_decay": [0.0, 0.1]}}, "direction must be maximize or minimize"),
    ([1, 2], "'hp_search' takes a single value"),
    ("learning_rate", "hp_search takes a mapping; given as text"),
]


@pytest.mark.parametrize(("hp_search", "message"), BAD_SPACES)
def test_bad_search_spaces_are_refused_naming_the_key_before_anything_loads(tmp_path, hp_search, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"hp_search": hp_search}))
    with pytest.raises(TransferKitError, match=message):
        classify.main(["--config", str(config), *NOTHING])


def test_hp_search_from_the_command_line_is_json_and_null_turns_it_off():
    plan = parse_config(
        classify.ARGUMENT_TYPES,
        [*NOTHING, "--hp_search", json.dumps({"n_trials": 4, "metric": "f1_macro", "space": SPACE})],
    )[-2].plan
    assert plan.n_trials == 4 and plan.metric == "eval_f1_macro" and plan.names == tuple(SPACE)
    with pytest.raises(TransferKitError, match="as text .on the command line., a JSON mapping"):
        parse_config(classify.ARGUMENT_TYPES, [*NOTHING, "--hp_search", "{n_trials: 4"])
    assert parse_config(classify.ARGUMENT_TYPES, [*NOTHING, "--hp_search", "null"])[-2].plan is None


def test_best_config_leaves_out_the_file_options_the_command_line_won_over(tmp_path):
    """best.yaml is one file: a file option that lost to a command-line one (num_seeds to --seeds, save_strategy
    epoch to --save_steps) would contradict it there, and the retrain would stop after the whole search."""
    config = tmp_path / "search.yaml"
    config.write_text("num_seeds: 3\nsave_strategy: epoch\nlearning_rate: 0.001\neval_strategy: epoch\n")
    base = ["--config", str(config), "--model_name_or_path", "m", "--train_file", "a.csv", "--output_dir", "o"]
    merged = user_config([*base, "--seeds", "4,5", "--save_steps", "10"], classify.ARGUMENT_TYPES)
    assert merged["seeds"] == ["4,5"] and merged["save_steps"] == 10
    assert "num_seeds" not in merged and "save_strategy" not in merged
    assert merged["learning_rate"] == 0.001 and merged["eval_strategy"] == "epoch"  # the rest as the file has them
    assert user_config(base, classify.ARGUMENT_TYPES)["num_seeds"] == 3
