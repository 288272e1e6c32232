"""Recipes publishing to the (local, fake) Hub: access checked before training, one push from the main process,
a failed push keeps everything local and `transferkit push` finishes the job, the token lands nowhere."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from recipes.classify import main
from tests.hub_server import hub_server_fixture  # noqa: F401 - provides the `hub_server` fixture
from tests.tiny import launch_two_processes
from transferkit.errors import TransferKitError
from transferkit.hub import PushError, push_main

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


def test_recipe_pushes_once_and_the_hub_copy_predicts_like_the_local_one(hub_server, tiny_bert, reviews_csv, tmp_path):
    out = tmp_path / "run"
    main(run_args(tiny_bert, reviews_csv, out))
    assert hub_server.commit_count == 1
    stored = hub_server.repos[REPO].files
    assert {"model.safetensors", "config.json", "README.md", "all_results.json", "eval_results.json"} <= set(stored)
    assert not any(path.startswith("checkpoint-") for path in stored)
    card = stored["README.md"].decode()
    assert "model-index" in card and "accuracy" in card and "transferkit" in card

    texts = ["great fun film", "dull boring plot"]
    local_tokenizer = AutoTokenizer.from_pretrained(out)
    hub_model = AutoModelForSequenceClassification.from_pretrained(REPO)
    local_model = AutoModelForSequenceClassification.from_pretrained(out)
    with torch.no_grad():
        batch = local_tokenizer(texts, return_tensors="pt", padding=True)
        torch.testing.assert_close(hub_model(**batch).logits, local_model(**batch).logits)
    assert files_containing(out, hub_server.token) == []


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
    launch_two_processes(
        "classify.py", run_args(tiny_bert, reviews_csv, tmp_path / "two", "--per_device_train_batch_size", "4")
    )
    assert hub_server.commit_count == 1
    assert "model.safetensors" in hub_server.repos[REPO].files
