"""The adapt-then-finetune pipeline on tiny data: stages chain, TAPT sees only train texts, reruns skip work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, Trainer

from transferkit.errors import TransferKitError
from transferkit.recipes.pipeline import main

STAGES = ("finetune", "baseline")
STAGE_KEYS = {
    "max_steps": 4,
    "per_device_train_batch_size": 8,
    "learning_rate": 3e-3,
    "disable_tqdm": True,
    "save_strategy": "no",
    "eval_strategy": "no",
}


def write_config(tmp_path, tiny_bert: str, reviews_csv: str, **extra) -> str:
    config = {
        "base_model": tiny_bert,
        "output_dir": str(tmp_path / "pipe"),
        "shared": {"seed": 3, "max_seq_length": 32},
        "adapt": dict(STAGE_KEYS),
        "classify": {**STAGE_KEYS, "train_file": reviews_csv, "test_split_percentage": 20},
        **extra,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_pipeline_chains_stages_and_compares(tiny_bert, reviews_csv, tmp_path):
    report = main(["--config", write_config(tmp_path, tiny_bert, reviews_csv)])
    out = tmp_path / "pipe"
    assert {"adapt", "finetune", "baseline", "gain"} <= set(report)
    assert "test_accuracy" in report["finetune"] and "test_accuracy" in report["baseline"]
    assert report["gain"]["test_accuracy"] == pytest.approx(
        report["finetune"]["test_accuracy"] - report["baseline"]["test_accuracy"]
    )
    assert "eval_perplexity" in report["adapt"]
    assert json.loads((out / "comparison.json").read_text()) == report
    assert "| test_accuracy |" in (out / "comparison.md").read_text()
    assert "on one seed: no interval can be given from one seed" in report["verdict"]
    assert report["seeds"] == [3] and "over 32 test examples" in report["verdict"]  # seed 3's McNemar, bootstrap
    assert set(report["per_seed_tests"]["3"]["mcnemar"]) == {"adapted_only_right", "base_only_right", "p_value"}
    assert "eval_accuracy" not in report["adapt"] and 0 <= report["adapt"]["eval_token_accuracy"] <= 1
    # the finetuned model's lineage runs base -> adapted
    lineage = AutoConfig.from_pretrained(out / "finetune").transferkit_lineage
    assert lineage == [tiny_bert, str(out / "adapt")]
    assert "adapt" in (out / "finetune" / "README.md").read_text()

    # TAPT pretrains on training texts only: no test text is in the corpus
    corpus = {json.loads(line)["text"] for line in (out / "tapt_corpus.jsonl").read_text().splitlines()}
    with open(out / "finetune" / "predictions.csv", newline="") as handle:
        test_texts = {row["text"] for row in csv.DictReader(handle)}
    assert corpus and test_texts and not corpus & test_texts

    again = main(["--config", write_config(tmp_path, tiny_bert, reviews_csv)])  # finished stages are not rerun
    assert again["finetune"]["test_accuracy"] == report["finetune"]["test_accuracy"]
    assert "stage_seconds" not in again["finetune"]


def test_two_seeds_run_both_classify_stages_on_one_split_and_the_report_pairs_them(
    tiny_bert, reviews_csv, tmp_path, capsys
):
    """Few labels (max_train_samples) for finetuning, every train text for TAPT; adapt runs once, each classify
    stage once per seed; the report's paired difference and McNemar counts are those of the per-seed files."""
    few_labels = ["--classify.seeds", "1,2", "--classify.max_train_samples", "40"]
    report = main(["--config", write_config(tmp_path, tiny_bert, reviews_csv), *few_labels])
    out = tmp_path / "pipe"
    assert not list((out / "adapt").glob("seed-*")) and (out / "adapt" / "model.safetensors").is_file()
    per_seed = {stage: json.loads((out / stage / "all_results.json").read_text())["per_seed"] for stage in STAGES}
    assert list(per_seed["finetune"]) == list(per_seed["baseline"]) == ["1", "2"] and report["seeds"] == [1, 2]

    differences = [per_seed["finetune"][s]["test_accuracy"] - per_seed["baseline"][s]["test_accuracy"] for s in "12"]
    paired = report["paired_over_seeds"]["test_accuracy"]
    assert paired["n"] == 2 and paired["estimate"] == pytest.approx(sum(differences) / 2)
    for seed in "12":
        adapted, base = (_predictions(out / stage / f"seed-{seed}") for stage in STAGES)
        assert [row[:2] for row in adapted] == [row[:2] for row in base]  # same examples, same order
        counts = report["per_seed_tests"][seed]["mcnemar"]
        assert counts["adapted_only_right"] == sum(a[1] == a[2] != b[2] for a, b in zip(adapted, base))
        assert counts["base_only_right"] == sum(b[1] == b[2] != a[2] for a, b in zip(adapted, base))
    assert adapted and [row[:2] for row in adapted] == [row[:2] for row in _predictions(out / "finetune" / "seed-1")]
    # ^ seed 2's test rows are seed 1's: one split for every seed
    assert report["verdict"].startswith("adaptation changed test accuracy by ") and "over 2 seeds" in report["verdict"]
    assert (out / "comparison.md").read_text().startswith(f"# Adapted vs base model\n\n**{report['verdict']}**")
    assert capsys.readouterr().out.rstrip().endswith(report["verdict"])  # the last line printed

    # TAPT read every training text, not only the 40 labelled ones; no test text
    corpus = [json.loads(line)["text"] for line in (out / "tapt_corpus.jsonl").read_text().splitlines()]
    assert len(corpus) > 40 and not set(corpus) & {row[0] for row in adapted}


def _predictions(folder) -> list[tuple[str, str, str]]:
    with open(folder / "predictions.csv", newline="") as handle:
        return [(row["text"], row["label"], row["predicted"]) for row in csv.DictReader(handle)]


def test_overrides_and_bad_stage_key_fail_before_training(tiny_bert, reviews_csv, tmp_path):
    config = write_config(tmp_path, tiny_bert, reviews_csv)
    with pytest.raises(TransferKitError, match="unknown key 'lerning_rate'.*'learning_rate'"):
        main(["--config", config, "--classify.lerning_rate", "0.1"])
    assert not (tmp_path / "pipe" / "adapt" / "model.safetensors").exists()
    with pytest.raises(TransferKitError, match="Unknown pipeline key 'stages'"):
        main(["--config", config, "--stages", "2"])
    if not torch.cuda.is_available():  # a finetune stage that cannot train here stops the pipeline before adapt
        with pytest.raises(TransferKitError, match="load_in_4bit \\(QLoRA\\) needs a CUDA GPU"):
            main(["--config", config, "--classify.use_peft", "true", "--classify.load_in_4bit", "true"])
        assert not (tmp_path / "pipe" / "adapt").exists()


def test_validate_names_the_pipeline_section_of_a_missing_key():
    from transferkit.recipes.pipeline import validate_config

    notes = validate_config(Path(__file__).parents[1] / "recipes/configs/quickstart/pipeline.yaml", [])
    assert any("pass --classify.train_file at launch" in note for note in notes), notes
    assert not any("pass --train_file" in note for note in notes)


def test_a_stage_that_crashed_after_training_is_finished_on_rerun_not_skipped(
    tiny_bert, reviews_csv, tmp_path, monkeypatch
):
    """all_results.json exists as soon as training ends; only run_finished.json, the stage's last step, makes a
    rerun skip it. Here the finetune stage dies in test prediction; the rerun resumes its final checkpoint (no step
    is trained again) and writes the missing test metrics."""
    import transferkit.recipes.classify as classify

    # One epoch, checkpointed at its end. (Resuming a checkpoint taken at max_steps in the middle of an epoch,
    # Trainer runs one more step before it checks max_steps; under the default linear schedule its rate is 0.)
    saving = {"max_steps": -1, "num_train_epochs": 1, "save_strategy": "epoch"}
    config = write_config(tmp_path, tiny_bert, reviews_csv, compare_with_base=False)
    overrides = [arg for key, value in saving.items() for arg in (f"--classify.{key}", str(value))]
    original = classify.predict_and_report

    def crash(*args, **kwargs):
        raise RuntimeError("killed during test prediction")

    monkeypatch.setattr(classify, "predict_and_report", crash)
    with pytest.raises(RuntimeError, match="killed during test prediction"):
        main(["--config", config, *overrides])
    finetune = tmp_path / "pipe" / "finetune"
    assert (finetune / "all_results.json").is_file() and not (finetune / "run_finished.json").exists()

    monkeypatch.setattr(classify, "predict_and_report", original)
    steps = []
    training_step = Trainer.training_step
    monkeypatch.setattr(Trainer, "training_step", lambda self, *a, **k: steps.append(1) or training_step(self, *a, **k))
    report = main(["--config", config, *overrides])
    assert "test_accuracy" in report["finetune"] and (finetune / "run_finished.json").is_file()
    assert steps == []  # resumed at its final checkpoint: nothing trained twice


def test_a_lora_adapt_stage_is_merged_and_finetuned_in_full(tiny_bert, reviews_csv, tmp_path):
    config = write_config(tmp_path, tiny_bert, reviews_csv, compare_with_base=False)
    report = main(["--config", config, "--adapt.use_peft", "true", "--adapt.lora_r", "4"])
    out = tmp_path / "pipe"
    assert (out / "adapt" / "adapter_model.safetensors").is_file() and (
        out / "adapt" / "merged" / "config.json"
    ).is_file()
    assert "test_accuracy" in report["finetune"] and (out / "finetune" / "model.safetensors").is_file()
    lineage = AutoConfig.from_pretrained(out / "finetune").transferkit_lineage
    assert lineage == [tiny_bert, str(out / "adapt"), str(out / "adapt" / "merged")]


def test_a_lora_adapt_stage_that_is_not_merged_cannot_chain(tiny_bert, reviews_csv, tmp_path):
    from transferkit.recipes.pipeline import validate_config

    config = write_config(tmp_path, tiny_bert, reviews_csv)
    unmerged = ["--adapt.use_peft", "true", "--adapt.merge_adapter", "false"]
    with pytest.raises(TransferKitError, match="remove merge_adapter: false"):
        validate_config(config, unmerged)
    with pytest.raises(TransferKitError, match="remove merge_adapter: false"):
        main(["--config", config, *unmerged, "--shared.dry_run", "true"])
    assert not (tmp_path / "pipe").exists()


@pytest.mark.slow
def test_under_two_processes_only_the_main_process_writes_the_shared_files(tiny_bert, reviews_csv, tmp_path):
    from tests.tiny import launch_two_processes

    config = write_config(tmp_path, tiny_bert, reviews_csv)
    launch_two_processes(str(Path(__file__).parent / "record_pipeline_writes.py"), ["--config", config])
    out = tmp_path / "pipe"
    writes = {rank: (tmp_path / f"writes-rank{rank}.txt").read_text().splitlines() for rank in (0, 1)}
    shared_files = [line for line in writes[1] if line.startswith(str(out))]
    assert not shared_files, writes[1]
    assert sorted(line.rsplit("/", 1)[-1] for line in writes[0] if line.startswith(str(out))) == [
        "adapt.yaml", "baseline.yaml", "comparison", "finetune.yaml", "tapt_corpus.jsonl"
    ]  # fmt: skip
    report = json.loads((out / "comparison.json").read_text())
    assert "test_accuracy" in report["finetune"] and "test_accuracy" in report["baseline"]


def test_overrides_take_the_recipes_forms(tiny_bert, reviews_csv, tmp_path):
    from transferkit.recipes.pipeline import load_pipeline_config

    config = write_config(tmp_path, tiny_bert, reviews_csv)
    argv = ["--config", config, "--adapt.max_steps=7", "--classify.fp16", "--shared.seed", "5"]
    argv += ["--classify.text_column_names", "text", "--compare_with_base", "false", "--adapt.learning_rate", "-1"]
    loaded = load_pipeline_config(argv)
    assert loaded["adapt"]["max_steps"] == 7 and loaded["classify"]["fp16"] is True  # `--k=v`, a bare boolean
    assert loaded["shared"]["seed"] == 5 and loaded["classify"]["text_column_names"] == ["text"]
    assert loaded["compare_with_base"] is False and loaded["adapt"]["learning_rate"] == -1.0
    with pytest.raises(TransferKitError, match="'objective'"):  # a shared key must suit both recipes
        load_pipeline_config(["--config", config, "--shared.objective", "mlm"])
    with pytest.raises(TransferKitError, match="section 'stage2'"):
        load_pipeline_config(["--config", config, "--stage2.max_steps", "3"])
