"""Shared fixtures: a tiny BERT saved once per session, and toy review data."""

from __future__ import annotations

import logging
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


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """A recipe run in-process calls setup_logging, whose logging.basicConfig(force=True) binds a root handler to
    the sys.stderr of that moment: under capsys, a capture that is closed when the test ends. Later tests would log
    into the closed stream ("--- Logging error ---"), so the stream handlers a test added go when it ends (pytest's
    own capture handlers, added and removed around each phase, are left to pytest)."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if type(handler) is logging.StreamHandler and handler not in before:
            root.removeHandler(handler)
    root.setLevel(level)
