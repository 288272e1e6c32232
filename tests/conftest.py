"""Shared fixtures: a tiny BERT saved once per session, and toy review data."""

from __future__ import annotations

import os

# No test may reach the network: the Hub is unreachable here and tests must not depend on it. Set before anything
# imports huggingface_hub, which reads HF_HUB_OFFLINE once, at import (tests.tiny imports transformers).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests.tiny import save_tiny_bert, write_reviews_csv  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return save_tiny_bert(str(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="session")
def reviews_csv(tmp_path_factory) -> str:
    return write_reviews_csv(str(tmp_path_factory.mktemp("data") / "reviews.csv"), rows=160)
