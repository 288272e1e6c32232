"""Optional classic text cleaning with NLTK.

The stage is OFF by default. Transformer tokenizers were pretrained on raw text, so lowercasing, dropping
stopwords ("not"!) or punctuation usually costs accuracy with them. It exists for bag-of-words baselines,
very noisy corpora and near-duplicate detection, where the classic pipeline (tokenize, lowercase, drop
stopwords / punctuation / numbers) is what one wants.

The NLTK data the stage needs (Punkt models, stopword lists) is found or built offline by `transferkit.nltk_data`.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from datasets import IterableDataset

from transferkit.errors import TransferKitError
from transferkit.nltk_data import PUNKT_LANGUAGES, check_language, ensure_nltk_data, require_data

_CLEANING_OPTIONS = ("lowercase", "remove_stopwords", "remove_punctuation", "remove_numbers")
# "42", "-3.5", "1,000", ".5": a token that is only a number. "2nd", "covid19" or "24/7" are words.
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:[.,]\d+)*|[.,]\d+)")
# word_tokenize rewrites '"' as the Penn Treebank quotes `` and ''; we give the text its quote back.
_TREEBANK_QUOTES = {"``": '"', "''": '"'}


@dataclass
class TextCleaningArguments:
    """Options of the optional NLTK cleaning stage (recipe config keys, parsed by `HfArgumentParser`)."""

    clean_text: bool = field(
        default=False,
        metadata={
            "help": "Run the classic NLTK cleaning stage on the text columns before tokenization. Off by "
            "default: transformer tokenizers expect raw text. The options below need it on."
        },
    )
    lowercase: bool = field(
        default=False,
        metadata={"help": "Lowercase the text (hurts cased models, e.g. bert-base-cased). Needs clean_text."},
    )
    remove_stopwords: bool = field(
        default=False,
        metadata={
            "help": "Drop NLTK/Snowball stopwords, matched case-insensitively. The lists contain negations "
            "('not', 'no', 'nor'), so this can flip sentiment. Needs clean_text."
        },
    )
    remove_punctuation: bool = field(
        default=False,
        metadata={"help": "Drop tokens made only of punctuation characters. Needs clean_text."},
    )
    remove_numbers: bool = field(
        default=False,
        metadata={"help": "Drop tokens that are only a number (42, 3.14, 1,000, -5). Needs clean_text."},
    )
    nltk_language: str = field(
        default="english",
        metadata={
            "help": "Language of the NLTK Punkt model (word/sentence splitting) and of the stopword list, "
            f"e.g. english or german. One of: {', '.join(PUNKT_LANGUAGES)}."
        },
    )

    def __post_init__(self) -> None:
        check_language(self.nltk_language, need_stopwords=self.remove_stopwords)
        stray = [name for name in _CLEANING_OPTIONS if getattr(self, name)]
        if stray and not self.clean_text:
            raise TransferKitError(
                f"{', '.join(stray)} {'is' if len(stray) == 1 else 'are'} set but clean_text is false, so "
                "nothing would be cleaned. Set clean_text: true to run the NLTK cleaning stage, or remove "
                f"{'this option' if len(stray) == 1 else 'these options'}."
            )


# ---------------------------------------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------------------------------------


def clean_text(text: str, args: TextCleaningArguments) -> str:
    """Tokenize `text` with NLTK, apply the options of `args`, and join the tokens with single spaces.

    Returns `text` unchanged when `args.clean_text` is false (the stage's master switch). With it on and no
    option set, the result is the tokenized text (punctuation split off, whitespace normalised).
    Deterministic: no randomness, and the same NLTK data gives the same output.
    """
    if not args.clean_text:
        return text
    require_data(args.nltk_language, need_stopwords=args.remove_stopwords)
    return " ".join(_clean_tokens(text, args))


def _clean_tokens(text: str, args: TextCleaningArguments) -> list[str]:
    import nltk

    tokens = [_TREEBANK_QUOTES.get(token, token) for token in nltk.word_tokenize(text, args.nltk_language)]
    if args.lowercase:
        tokens = [token.lower() for token in tokens]
    if args.remove_stopwords:
        stop = load_stopwords(args.nltk_language)
        tokens = [token for token in tokens if token.lower() not in stop]
    if args.remove_punctuation:
        tokens = [token for token in tokens if not is_punctuation(token)]
    if args.remove_numbers:
        tokens = [token for token in tokens if not is_number(token)]
    return tokens


def is_punctuation(token: str) -> bool:
    """True for a token made only of ASCII punctuation/symbols or Unicode punctuation ("...", "--", "?!")."""
    return bool(token) and all(ch in string.punctuation or unicodedata.category(ch)[0] == "P" for ch in token)


def is_number(token: str) -> bool:
    """True for a token that is only a number: digits with an optional sign and inner '.'/',' separators."""
    return _NUMBER_RE.fullmatch(token) is not None


_STOPWORD_CACHE: dict[str, frozenset[str]] = {}


def load_stopwords(language: str) -> frozenset[str]:
    """NLTK's stopword list for `language` (``corpora/stopwords/<language>``), lowercased, per process."""
    if language not in _STOPWORD_CACHE:
        import nltk

        pointer = nltk.data.find(f"corpora/stopwords/{language}")
        with pointer.open(encoding="utf-8") as handle:
            words = {line.strip().lower() for line in handle}
        _STOPWORD_CACHE[language] = frozenset(words - {""})
    return _STOPWORD_CACHE[language]


def split_sentences(text: str, language: str = "english") -> list[str]:
    """Split `text` into sentences with NLTK's pretrained Punkt model for `language`.

    Punkt knows abbreviations ("Dr.", "U.S.", "e.g.") that a split on ". " gets wrong, which is why the MLM
    recipe uses it to cut long documents at sentence boundaries.
    """
    import nltk

    check_language(language)
    require_data(language, need_stopwords=False)
    return nltk.sent_tokenize(text, language)


# ---------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------


def apply_text_cleaning(
    dataset: Any,
    text_columns: Sequence[str] | str,
    args: TextCleaningArguments | None,
    num_proc: int | None = None,
) -> Any:
    """Rewrite `text_columns` of a `datasets.Dataset` or `DatasetDict` with `clean_text`.

    Returns `dataset` itself when `args` is None or `args.clean_text` is false. Runs as a batched `map` with
    a module-level function and `fn_kwargs`, so datasets can fingerprint it and reuse its cache on the next
    run (and the recipes' other processes, which clean after the main process, read its files). NLTK data is
    prepared here, in the main process, so a missing package fails once and early rather than in every worker.
    None values stay None. `num_proc` (preprocessing_num_workers) unset: workers by each split's size
    (`preprocess.map_workers`).
    """
    if args is None or not args.clean_text:
        return dataset
    columns = [text_columns] if isinstance(text_columns, str) else list(text_columns)
    _check_text_columns(dataset, columns)
    ensure_nltk_data(need_punkt=True, need_stopwords=args.remove_stopwords, language=args.nltk_language)
    if isinstance(dataset, dict):  # a DatasetDict: each split with the workers its size is worth
        return type(dataset)({name: _clean_split(split, columns, args, num_proc) for name, split in dataset.items()})
    return _clean_split(dataset, columns, args, num_proc)


def _clean_split(split: Any, columns: list[str], args: TextCleaningArguments, num_proc: int | None) -> Any:
    from transferkit.preprocess import map_workers

    options = {"batched": True, "fn_kwargs": {"text_columns": columns, "args": args}}
    if isinstance(split, IterableDataset):  # a stream is cleaned as it is read: no workers, no cache, no length
        return split.map(_clean_batch, **options)
    workers = map_workers(num_proc, len(split))
    return split.map(_clean_batch, num_proc=workers, desc=f"Cleaning {', '.join(columns)} with NLTK", **options)


def _clean_batch(batch: dict[str, list], text_columns: list[str], args: TextCleaningArguments) -> dict:
    """The `map` function: must stay module-level and free of captured state (pickling, cache fingerprint)."""
    # A worker started with "spawn"/"forkserver" has a fresh nltk.data.path: register the cache dir again.
    require_data(args.nltk_language, need_stopwords=args.remove_stopwords)
    return {
        column: [None if text is None else clean_text(text, args) for text in batch[column]] for column in text_columns
    }


def _check_text_columns(dataset: Any, columns: list[str]) -> None:
    """Fail with the column names available, instead of a KeyError deep inside `map`."""
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = dict(dataset)
    elif isinstance(dataset, (datasets.Dataset, IterableDataset)):
        splits = {"dataset": dataset}
    else:
        raise TypeError(f"apply_text_cleaning expects a datasets.Dataset or DatasetDict, got {type(dataset)}")
    if not columns:
        raise TransferKitError("clean_text is set but no text column was given to clean.")
    for split, part in splits.items():
        if part.column_names is None or part.features is None:  # a stream that only knows them at its first row
            continue
        for column in columns:
            if column not in part.column_names:
                raise TransferKitError(
                    f"Text column {column!r} not found in {split} (columns: {', '.join(part.column_names)})."
                )
            feature = part.features[column]
            if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
                raise TransferKitError(
                    f"Text column {column!r} in {split} holds {feature}, not strings; clean_text needs text."
                )
