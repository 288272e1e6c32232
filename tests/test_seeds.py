"""`seeds` / `num_seeds` in classify: one complete run per seed on one data split, the aggregate recomputed here by
hand from the seeds' own files, a rerun that runs only what is missing, the options' checks, and one push."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil

import pytest
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import recipes.classify as classify
from recipes.mlm import main as mlm_main
from tests.hub_server import hub_server_fixture  # noqa: F401 - provides the `hub_server` fixture
from transferkit.arguments import ClassificationArguments
from transferkit.config import parse_config
from transferkit.errors import TransferKitError
from transferkit.evidence.seeds import read_predictions, seed_bootstrap, seed_run_argv
from transferkit.resume import is_finished

T_975_2 = 4.302652729911275  # Student t, 97.5th percentile, 2 degrees of freedom
SEEDS = (1, 2, 3)
REPO = "tester/tiny-seeds"


def seed_args(model: str, data: str, output_dir, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", model, "--train_file", data, "--output_dir", str(output_dir),
        "--max_steps", "4", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3",
        "--max_seq_length", "32", "--test_split_percentage", "20", "--disable_tqdm", "true", "--seed", "1", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def three_seeds(tiny_bert, reviews_csv, tmp_path_factory):
    """One 3-seed run (num_seeds 3 from seed 1), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("seeds") / "run"
    returned = classify.main(seed_args(tiny_bert, reviews_csv, out, "--num_seeds", "3"))
    return out, returned


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def test_the_aggregate_is_the_mean_std_and_t_interval_of_the_seed_files(three_seeds):
    out, returned = three_seeds
    aggregate = read_json(out / "all_results.json")
    assert returned == aggregate
    assert aggregate["num_seeds"] == 3 and aggregate["seeds"] == list(SEEDS)
    per_seed = {seed: read_json(out / f"seed-{seed}" / "all_results.json") for seed in SEEDS}
    for key in ("test_accuracy", "test_loss", "eval_loss", "eval_f1_macro", "train_loss"):
        values = [per_seed[seed][key] for seed in SEEDS]
        mean = sum(values) / 3
        std = math.sqrt(sum((value - mean) ** 2 for value in values) / 2)
        half = T_975_2 * std / math.sqrt(3)
        assert aggregate[key] == pytest.approx(mean), key
        assert aggregate[f"{key}_std"] == pytest.approx(std), key
        assert (aggregate[f"{key}_ci95_low"], aggregate[f"{key}_ci95_high"]) == pytest.approx(
            (mean - half, mean + half)
        ), key
    assert "precision" not in aggregate and "epoch" not in aggregate  # not metrics of a split
    for seed in SEEDS:
        assert {k: v for k, v in aggregate["per_seed"][str(seed)].items() if k in per_seed[seed]} == per_seed[seed]
    assert is_finished(str(out)) and all(is_finished(str(out / f"seed-{seed}")) for seed in SEEDS)


def test_every_seed_has_the_same_split_but_its_own_weights(three_seeds):
    out, _ = three_seeds
    splits, weights = [], []
    for seed in SEEDS:
        with open(out / f"seed-{seed}" / "predictions.csv", encoding="utf-8") as handle:
            splits.append([(row["text"], row["label"]) for row in csv.DictReader(handle)])
        weights.append(load_file(str(out / f"seed-{seed}" / "model.safetensors"))["classifier.weight"])
        assert read_json(out / f"seed-{seed}" / "trainer_state.json")["global_step"] == 4
    assert len(splits[0]) == 32 and splits[0] == splits[1] == splits[2]
    assert not (weights[0].equal(weights[1]) or weights[1].equal(weights[2]))  # the head starts from the seed
    losses = [read_json(out / f"seed-{seed}" / "all_results.json")["eval_loss"] for seed in SEEDS]
    assert len(set(losses)) == 3


def test_summary_and_bootstrap_intervals_per_seed(three_seeds):
    out, _ = three_seeds
    summary = (out / "summary.md").read_text()
    aggregate = read_json(out / "all_results.json")
    assert "| metric | mean | std | 95% CI | per seed (1, 2, 3) |" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| eval_loss |"))
    assert f"{aggregate['eval_loss']:.4g}" in row and f"{aggregate['eval_loss_ci95_low']:.4g} to" in row
    assert "test_runtime" not in summary  # speed figures stay in all_results.json
    for seed in SEEDS:
        figures = read_json(out / f"seed-{seed}" / "bootstrap.json")
        per_seed = aggregate["per_seed"][str(seed)]
        assert figures["test_examples"] == 32 and figures["n_resamples"] == 1000
        assert figures["test_accuracy"] == pytest.approx(per_seed["test_accuracy"])  # from predictions.csv
        assert figures["test_accuracy_bootstrap95_low"] <= figures["test_accuracy"]
        assert figures["test_accuracy"] <= figures["test_accuracy_bootstrap95_high"]
        assert figures["test_accuracy_bootstrap95_high"] > figures["test_accuracy_bootstrap95_low"]
        assert per_seed["test_f1_macro_bootstrap95_low"] == figures["test_f1_macro_bootstrap95_low"]
        low, high = figures["test_accuracy_bootstrap95_low"], figures["test_accuracy_bootstrap95_high"]
        assert f"| {seed} | 32 | {figures['test_accuracy']:.4g} ({low:.4g} to {high:.4g}) |" in summary


def test_a_rerun_runs_only_the_seed_that_did_not_finish(three_seeds, tmp_path, monkeypatch, tiny_bert, reviews_csv):
    out = tmp_path / "run"
    shutil.copytree(three_seeds[0], out)
    os.remove(out / "seed-3" / "run_finished.json")  # cut short after its last checkpoint (checkpoint-4)
    finished_at = (out / "seed-1" / "all_results.json").stat().st_mtime_ns
    calls, real_main = [], classify.main

    def recording_main(argv):
        calls.append(argv)
        return real_main(argv)

    monkeypatch.setattr(classify, "main", recording_main)  # what the seed loop calls for each seed
    aggregate = recording_main(seed_args(tiny_bert, reviews_csv, out, "--seeds", "1,2,3"))
    seed_runs = calls[1:]  # the first call is the multi-seed command itself
    assert [argv[argv.index("--output_dir", len(argv) - 10) + 1] for argv in seed_runs] == [str(out / "seed-3")]
    assert seed_runs[0][-10:] == ["--seed", "3", "--output_dir", str(out / "seed-3"), "--split_seed", "1",
                                  "--resume_from_checkpoint", "auto", "--push_to_hub", "false"]  # fmt: skip
    assert "--seeds" not in seed_runs[0]
    assert (out / "seed-1" / "all_results.json").stat().st_mtime_ns == finished_at
    # resumed: without resume_from_checkpoint auto, the folder holding checkpoint-4 would have been refused
    assert read_json(out / "seed-3" / "trainer_state.json")["global_step"] >= 4
    assert is_finished(str(out / "seed-3")) and is_finished(str(out)) and aggregate["num_seeds"] == 3


def test_seed_run_options_leave_out_the_seed_loop_keys(tmp_path):
    config = tmp_path / "my.yaml"
    config.write_text(yaml.safe_dump({"train_file": "a.csv", "seeds": [1, 2], "learning_rate": 0.001}))
    argv = ["--config", str(config), "--num_seeds", "2", "--seed", "7", "--seeds=4,5", "--text_column_names", "t"]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    options = seed_run_argv(argv, str(scratch))
    assert options[:2] == ["--config", str(scratch / "my.yaml")]
    assert options[2:] == ["--seed", "7", "--text_column_names", "t"]
    assert yaml.safe_load((scratch / "my.yaml").read_text()) == {"train_file": "a.csv", "learning_rate": 0.001}
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"train_file": "a.csv"}))
    assert seed_run_argv(["--config", str(plain), "--seeds", "1", "2"], str(scratch)) == ["--config", str(plain)]


def test_the_command_lines_seeds_win_over_the_config_files(tmp_path, caplog):
    base = ["--model_name_or_path", "m", "--train_file", "a.csv", "--output_dir", str(tmp_path / "out")]
    cases = (("num_seeds: 3", "--seeds", "4,5", "seeds", [4, 5]), ("seeds: [7, 8]", "--num_seeds", "2", "num_seeds", 2))
    for line, flag, value, key, expected in cases:
        config = tmp_path / f"{key}.yaml"
        config.write_text(line + "\n")
        parsed = parse_config(classify.ARGUMENT_TYPES, [*base, "--config", str(config), flag, value])
        (cls_args,) = [args for args in parsed if isinstance(args, ClassificationArguments)]
        other = "num_seeds" if key == "seeds" else "seeds"
        assert getattr(cls_args, key) == expected and getattr(cls_args, other) is None
        assert f"({config}), which has no effect" in caplog.text
    both = tmp_path / "both.yaml"
    both.write_text("num_seeds: 3\nseeds: [7, 8]\n")
    with pytest.raises(TransferKitError, match="set one of them"):  # both in one file: which one was meant?
        parse_config(classify.ARGUMENT_TYPES, [*base, "--config", str(both)])


def test_read_predictions_skips_rows_not_predicted(tmp_path):
    single = tmp_path / "single.csv"
    single.write_text("text,label,predicted,prob_neg,prob_pos\na,pos,pos,0.1,0.9\n,neg,,,\nb,neg,pos,0.4,0.6\n")
    gold, predicted = read_predictions(str(single), "single_label_classification")
    assert gold.tolist() == ["pos", "neg"] and predicted.tolist() == ["pos", "pos"]
    multi = tmp_path / "multi.csv"
    multi.write_text("text,label,predicted,prob_x,prob_y\na,x;y,x,0.9,0.2\nb,,,0.1,0.2\n,x,,,\n")
    gold, predicted = read_predictions(str(multi), "multi_label_classification")
    assert gold.tolist() == [[True, True], [False, False]] and predicted.tolist() == [[True, False], [False, False]]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seeds", "1,2", "--num_seeds", "3"], "set one of them"),
        (["--seeds", "1", "2", "1"], "twice"),
        (["--seeds", "one"], "whole numbers"),
        (["--num_seeds", "0"], "num_seeds"),
        (["--split_seed", "-1"], "split_seed"),
        (["--seeds", "1,2", "--resume_from_checkpoint", "some/checkpoint-4"], "its own folder"),
    ],
)
def test_bad_seed_options_stop_before_anything_runs(extra, message, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TransferKitError, match=message):
        classify.main(seed_args("no/such-model", "no-such.csv", out, *extra))
    assert not out.exists()


@pytest.mark.parametrize("left", ["pytorch_model.bin", "training_args.bin", "adapter_config.json", "checkpoint-4"])
def test_seeds_refuse_an_output_dir_holding_a_single_run(left, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / left).mkdir() if left.startswith("checkpoint-") else (out / left).write_bytes(b"")
    with pytest.raises(TransferKitError, match=f"holds a single run \\({left}\\)"):
        classify.main(seed_args("no/such-model", "no-such.csv", out, "--seeds", "1,2"))
    assert os.listdir(out) == [left]  # the aggregate would have been written over that run


def test_the_mlm_recipe_does_not_take_seeds(tmp_path):
    with pytest.raises(TransferKitError, match="unknown key 'seeds'"):
        mlm_main(["--model_name_or_path", "m", "--train_file", "c.txt", "--output_dir", str(tmp_path), "--seeds", "1"])


def test_push_with_seeds_pushes_the_first_seed_once_with_the_aggregate(hub_server, tiny_bert, reviews_csv, tmp_path):
    out = tmp_path / "run"
    extra = ["--seeds", "5,6", "--max_steps", "2", "--push_to_hub", "true", "--hub_model_id", REPO]
    aggregate = classify.main(seed_args(tiny_bert, reviews_csv, out, *extra))
    assert hub_server.commit_count == 1 and set(hub_server.repos) == {REPO}
    stored = hub_server.repos[REPO].files
    assert stored["model.safetensors"] == (out / "seed-5" / "model.safetensors").read_bytes()
    card = ModelCard.load(REPO)
    card.validate()
    assert card.text.startswith(f"\n# {REPO}\n") and f'model="{REPO}"' in card.text
    assert "## Results over 2 seeds" in card.text and "the run with seed 5, the first of 2 seeds (5, 6)" in card.text
    mean, low = aggregate["test_accuracy"], aggregate["test_accuracy_ci95_low"]
    assert f"| test_accuracy | {mean:.4g} |" in card.text and f"{low:.4g} to" in card.text
    assert "This model on its 32 test examples (95% bootstrap interval): accuracy" in card.text
    model_index = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert model_index["Test Accuracy"] == aggregate["per_seed"]["5"]["test_accuracy"]  # the pushed model's own


def test_regression_seeds_are_bootstrapped_for_mse(tmp_path):
    folder = tmp_path / "seed-1"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"problem_type": "regression"}))
    (folder / "predictions.csv").write_text("text,label,predicted,score\na,1.0,2.0,2.0\nb,3.0,3.0,3.0\n,2.0,,\n")
    figures = seed_bootstrap(str(folder))
    assert figures["test_examples"] == 2 and figures["test_mse"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert 0 <= figures["test_mse_bootstrap95_low"] <= figures["test_mse_bootstrap95_high"] <= 1
    assert read_json(folder / "bootstrap.json")["problem_type"] == "regression"


def test_a_card_section_added_again_replaces_the_first(tmp_path):
    """A rerun after a failed push adds the seeds' section again: one copy, the newer, stays."""
    from transferkit.model_card import add_card_section

    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# run\n\n## Results\n\nx\n\n## Lineage\n\nbase\n")
    add_card_section(tmp_path, "Results over 3 seeds", "old figures")
    add_card_section(tmp_path, "Results over 3 seeds", "new figures")
    text = (tmp_path / "README.md").read_text()
    assert text.count("## Results over 3 seeds") == 1
    assert "new figures" in text and "old figures" not in text
    assert text.index("## Results over 3 seeds") < text.index("## Lineage") and "## Results\n" in text
