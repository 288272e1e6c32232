"""Recipes publishing to the (local, fake) Hub: access checked before training, one push from the main process,
checkpoints pushed per hub_strategy, a LoRA run's adapter and merged model in two repos, a failed push keeps
everything local and `transferkit push` finishes the job, the token lands nowhere. Models and pipelines loaded from
the server predict what the local output_dir predicts."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, snapshot_download
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from recipes.classify import main
from recipes.mlm import main as mlm_main
from tests.hub_server import hub_server_fixture  # noqa: F401 - provides the `hub_server` fixture
from tests.tiny import launch_two_processes
from transferkit.errors import TransferKitError
from transferkit.hub import PushError, push_main
from transferkit.lora import load_lora_model
from transferkit.recipes.pipeline import main as pipeline_main

REPO = "tester/tiny-reviews"


def run_args(model: str, data: str, output_dir, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        model,
        "--train_file",
        data,
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "8",
        "--test_split_percentage",
        "10",
        "--disable_tqdm",
        "true",
        "--push_to_hub",
        "true",
        "--hub_model_id",
        REPO,
        "--hub_strategy",  # Trainer's default is every_save; "end" pushes once, after training
        "end",
        *extra,
    ]


def files_containing(root, secret: str) -> list[str]:
    hits = []
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                if secret.encode() in handle.read():
                    hits.append(os.path.join(folder, name))
    return hits


TEXTS = ["great fun film", "dull boring plot", "the story was warm but the ending flat"]


def downloaded(hub_server, repo: str) -> set[str]:
    """The files the clients fetched from the server for `repo` (so a load really came from the Hub)."""
    prefix = f"/{repo}/resolve/"
    return {
        path.split("/", 5)[-1] for method, path in hub_server.requests if method == "GET" and path.startswith(prefix)
    }


def scores(classify, texts: list[str]) -> list[dict[str, float]]:
    return [{item["label"]: item["score"] for item in result} for result in classify(texts)]


def test_recipe_pushes_once_and_the_hub_copy_predicts_like_the_local_one(hub_server, tiny_bert, reviews_csv, tmp_path):
    out = tmp_path / "run"
    main(run_args(tiny_bert, reviews_csv, out))
    assert hub_server.commit_count == 1
    stored = hub_server.repos[REPO].files
    assert {"model.safetensors", "config.json", "README.md", "all_results.json", "eval_results.json"} <= set(stored)
    assert not any(path.startswith("checkpoint-") for path in stored)
    card = ModelCard.load(REPO)
    card.validate()  # huggingface_hub's check, through the server's /api/validate-yaml
    assert card.data.pipeline_tag == "text-classification" and "transferkit" in card.data.tags
    assert {r.metric_type for r in card.data.eval_results} >= {"accuracy", "f1"}
    assert "![training curves](training_curves.png)" in card.text and "training_curves.png" in stored

    local_tokenizer = AutoTokenizer.from_pretrained(out)
    hub_model = AutoModelForSequenceClassification.from_pretrained(REPO)
    local_model = AutoModelForSequenceClassification.from_pretrained(out)
    with torch.no_grad():
        batch = local_tokenizer(TEXTS, return_tensors="pt", padding=True)
        torch.testing.assert_close(hub_model(**batch).logits, local_model(**batch).logits)

    from_hub = scores(pipeline("text-classification", model=REPO, top_k=None), TEXTS)  # what the card tells users
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= downloaded(hub_server, REPO)
    local = scores(pipeline("text-classification", model=str(out), top_k=None), TEXTS)
    assert set(from_hub[0]) == {"neg", "pos"}
    for hub_scores, local_scores in zip(from_hub, local, strict=True):
        assert hub_scores == pytest.approx(local_scores, abs=1e-6)
    assert files_containing(out, hub_server.token) == []


def test_lora_run_pushes_the_adapter_and_the_merged_model_to_two_repos(hub_server, tiny_bert, reviews_csv, tmp_path):
    from peft import AutoPeftModelForSequenceClassification

    out = tmp_path / "lora"
    lora = ["--use_peft", "true", "--lora_r", "4", "--merge_adapter", "true", "--learning_rate", "1e-2"]
    main(run_args(tiny_bert, reviews_csv, out, *lora))
    merged_repo = f"{REPO}-merged"  # the default second repo
    adapter_files, merged_files = set(hub_server.repos[REPO].files), set(hub_server.repos[merged_repo].files)
    assert {"adapter_model.safetensors", "adapter_config.json", "label_config.json", "README.md"} <= adapter_files
    assert not any(path.startswith("merged/") for path in adapter_files) and "model.safetensors" not in adapter_files
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "all_results.json"} <= merged_files
    assert hub_server.commit_count == 2

    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        local = load_lora_model(str(out)).eval()(**batch).logits
        adapter_card = ModelCard.load(REPO)
        assert adapter_card.data.library_name == "peft" and merged_repo in adapter_card.text
        assert "id2label={0: 'neg', 1: 'pos'}" in adapter_card.text  # the snippet gives the adapter its labels
        labels = dict(num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
        remote = AutoPeftModelForSequenceClassification.from_pretrained(REPO, **labels).eval()
        assert "adapter_model.safetensors" in downloaded(hub_server, REPO)
        torch.testing.assert_close(remote(**batch).logits, local)
        merged = AutoModelForSequenceClassification.from_pretrained(merged_repo).eval()
        torch.testing.assert_close(merged(**batch).logits, local, atol=1e-5, rtol=0)
    assert merged.config.id2label == {0: "neg", 1: "pos"}
    from_hub = scores(pipeline("text-classification", model=merged_repo, top_k=None), TEXTS)
    local_merged = scores(pipeline("text-classification", model=str(out / "merged"), top_k=None), TEXTS)
    for hub_scores, local_scores in zip(from_hub, local_merged, strict=True):
        assert hub_scores == pytest.approx(local_scores, abs=1e-6)

    merged_card = ModelCard.load(merged_repo)
    merged_card.validate()
    assert merged_card.data.library_name == "transformers" and "merged-lora" in merged_card.data.tags
    assert f"`{REPO}`" in merged_card.text.split("## Lineage")[1].split("##")[0]  # base -> adapter -> merged
    assert {r.metric_type for r in merged_card.data.eval_results} >= {"accuracy"}


def test_merged_repo_is_checked_before_training(hub_server, tiny_bert, reviews_csv, tmp_path):
    out = tmp_path / "lora"
    lora = ["--use_peft", "true", "--merge_adapter", "true", "--hub_merged_model_id", "someone-else/merged"]
    with pytest.raises(TransferKitError, match="cannot create or write 'someone-else/merged'"):
        main(run_args(tiny_bert, reviews_csv, out, *lora))
    assert not (out / "adapter_model.safetensors").exists()
    with pytest.raises(TransferKitError, match="hub_merged_model_id names the merged model's repo: set merge_adapter"):
        main(run_args(tiny_bert, reviews_csv, out, "--use_peft", "true", "--hub_merged_model_id", "tester/m"))


def test_checkpoint_strategy_pushes_resumable_checkpoints_and_a_cli_token_stays_out_of_files(
    hub_server, tiny_bert, reviews_csv, tmp_path, monkeypatch
):
    monkeypatch.delenv("HF_TOKEN")  # the token comes from the command line only
    out = tmp_path / "run"
    extra = ["--hub_token", hub_server.token, "--hub_strategy", "checkpoint", "--hub_always_push", "true",
             "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "1"]  # fmt: skip
    main(run_args(tiny_bert, reviews_csv, out, *extra))
    repo = hub_server.repos[REPO]
    messages = [repo.messages[sha] for sha in repo.commits if repo.messages[sha] != "initial commit"]
    assert messages[:3] == [f"Training in progress, checkpoint {step} (checkpoint)" for step in (1, 2, 3)]
    assert len(messages) == 4  # three checkpoints, then the finished run
    stored = repo.files
    last = {path.removeprefix("last-checkpoint/") for path in stored if path.startswith("last-checkpoint/")}
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json", "model.safetensors"} <= last
    assert last == {p.relative_to(out / "checkpoint-3").as_posix() for p in (out / "checkpoint-3").rglob("*")}
    assert json.loads(stored["last-checkpoint/trainer_state.json"])["global_step"] == 3
    assert "optimizer.pt" not in stored and "model.safetensors" in stored  # the root is the model, not the state

    secret = hub_server.token.encode()
    assert files_containing(out, hub_server.token) == []  # training_args.bin included: hub_token was dropped
    assert not [path for path, data in stored.items() if secret in data]

    # a preempted run resumes from the Hub's copy of its last checkpoint
    local = snapshot_download(REPO, allow_patterns=["last-checkpoint/*"], local_dir=tmp_path / "download",
                              token=hub_server.token)  # fmt: skip
    resumed = tmp_path / "resumed"
    args = run_args(tiny_bert, reviews_csv, resumed, "--max_steps", "4", "--push_to_hub", "false")
    main([*args, "--resume_from_checkpoint", os.path.join(local, "last-checkpoint")])
    assert json.loads((resumed / "trainer_state.json").read_text())["global_step"] == 4


def test_failing_checkpoint_push_does_not_stop_training(hub_server, tiny_bert, reviews_csv, tmp_path, capsys):
    hub_server.fail_next_uploads = 1  # the first checkpoint push hits an outage; the run goes on
    out = tmp_path / "run"
    extra = ["--hub_strategy", "every_save", "--hub_always_push", "true", "--save_strategy", "steps",
             "--save_steps", "2"]  # fmt: skip
    main(run_args(tiny_bert, reviews_csv, out, *extra))
    logs = capsys.readouterr().err  # the recipe's logging setup writes to stderr
    assert "checkpoint-2 to tester/tiny-reviews failed (Server error '503" in logs and "training goes on" in logs
    repo = hub_server.repos[REPO]
    messages = [repo.messages[sha] for sha in repo.commits]
    assert "Training in progress, checkpoint 3 (every_save)" in messages
    assert not any(path.startswith(("last-checkpoint/", "checkpoint-")) for path in repo.files)
    assert {"model.safetensors", "README.md", "all_results.json"} <= set(repo.files)


def test_mlm_recipe_pushes_a_fill_mask_model_with_perplexity(hub_server, tiny_bert, reviews_csv, tmp_path):
    out = tmp_path / "mlm"
    mlm_main([
        "--model_name_or_path", tiny_bert, "--train_file", reviews_csv, "--output_dir", str(out), "--max_steps", "2",
        "--max_seq_length", "32", "--per_device_train_batch_size", "8", "--disable_tqdm", "true",
        "--push_to_hub", "true", "--hub_model_id", "tester/tiny-mlm", "--hub_revision", "v1",
    ])  # fmt: skip
    repo = hub_server.repos["tester/tiny-mlm"]
    stored = repo.commits[repo.branches["v1"]]
    assert {"model.safetensors", "README.md", "all_results.json", "eval_results.json"} <= set(stored)
    card = ModelCard(stored["README.md"].decode())  # on the v1 branch; main holds only the initial commit
    assert set(repo.files) == {".gitattributes"}
    assert card.data.pipeline_tag == "fill-mask"
    perplexity = [r.metric_value for r in card.data.eval_results if r.metric_type == "perplexity"]
    assert perplexity == [pytest.approx(json.loads(stored["all_results.json"])["eval_perplexity"])]

    text = "the movie was [MASK] ."
    from_hub = pipeline("fill-mask", model="tester/tiny-mlm", revision="v1")(text)
    local = pipeline("fill-mask", model=str(out))(text)
    assert [p["token_str"] for p in from_hub] == [p["token_str"] for p in local]
    assert [p["score"] for p in from_hub] == pytest.approx([p["score"] for p in local], abs=1e-6)


def test_pipeline_pushes_adapt_and_finetune_never_the_baseline(hub_server, tiny_bert, reviews_csv, tmp_path):
    stage = {"max_steps": 2, "per_device_train_batch_size": 8, "disable_tqdm": True, "save_strategy": "no",
             "eval_strategy": "no", "push_to_hub": True}  # fmt: skip
    config = {
        "base_model": tiny_bert,
        "output_dir": str(tmp_path / "pipe"),
        "shared": {"seed": 3, "max_seq_length": 32},
        "adapt": {**stage, "hub_model_id": "tester/tiny-adapted"},
        "classify": {**stage, "train_file": reviews_csv, "test_split_percentage": 20, "hub_model_id": REPO},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(TransferKitError, match="remove hub_token"):
        pipeline_main(["--config", str(path), "--classify.hub_token", "hf_whatever"])
    with pytest.raises(TransferKitError, match="Stage finetune pushes: give it its own hub_model_id"):
        pipeline_main(["--config", str(path), "--classify.hub_model_id", "tester/tiny-adapted"])
    assert hub_server.repos == {}  # both refused before any training or repo creation

    pipeline_main(["--config", str(path)])
    assert set(hub_server.repos) == {"tester/tiny-adapted", REPO} and hub_server.commit_count == 2
    adapted = ModelCard.load("tester/tiny-adapted")
    assert adapted.data.pipeline_tag == "fill-mask"
    finetuned = ModelCard.load(REPO)
    assert finetuned.data.pipeline_tag == "text-classification"
    assert str(tmp_path / "pipe" / "adapt") in finetuned.text  # lineage: base -> adapted -> this model
    assert yaml.safe_load((tmp_path / "pipe" / "baseline.yaml").read_text())["push_to_hub"] is False


def test_bad_token_fails_before_training(hub_server, tiny_bert, reviews_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_valid_token")
    out = tmp_path / "run"
    with pytest.raises(TransferKitError, match="token"):
        main(run_args(tiny_bert, reviews_csv, out))
    assert not (out / "model.safetensors").exists()


def test_failed_push_keeps_the_run_and_transferkit_push_finishes_it(
    hub_server, tiny_bert, reviews_csv, tmp_path, monkeypatch
):
    monkeypatch.setattr("transferkit.hub.time.sleep", lambda seconds: None)  # no real backoff waits in tests
    hub_server.fail_uploads = True
    out = tmp_path / "run"
    with pytest.raises(PushError) as info:
        main(run_args(tiny_bert, reviews_csv, out))
    assert f"transferkit push {out} {REPO}" in str(info.value)
    assert (out / "model.safetensors").is_file() and (out / "all_results.json").is_file()
    hub_server.fail_uploads = False
    assert push_main([str(out), REPO]) == 0
    assert "model.safetensors" in hub_server.repos[REPO].files


@pytest.mark.slow
def test_two_processes_push_exactly_once(hub_server, tiny_bert, reviews_csv, tmp_path):
    """Only the main process pushes, checkpoints included, and the final push waits for every rank."""
    extra = ["--per_device_train_batch_size", "4", "--hub_strategy", "every_save", "--hub_always_push", "true",
             "--save_strategy", "steps", "--save_steps", "2"]  # fmt: skip
    launch_two_processes("classify.py", run_args(tiny_bert, reviews_csv, tmp_path / "two", *extra))
    repo = hub_server.repos[REPO]
    messages = [repo.messages[sha] for sha in repo.commits][1:]  # after the repo's initial commit
    checkpoint_pushes = [f"Training in progress, checkpoint {step} (every_save)" for step in (2, 3)]
    assert messages == [*checkpoint_pushes, "Upload model trained with TransferKit"]
    assert hub_server.commit_count == 3
    assert {"model.safetensors", "all_results.json", "README.md"} <= set(repo.files)
