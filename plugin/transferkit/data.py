"""Loading a dataset from the Hub or from local files, and shaping it into train / validation / test splits.

Everything here fails early with a message naming the file, split or column and the fix, so a bad path or a
misspelt column never costs a tokenization pass or a model download.
"""

from __future__ import annotations

import codecs
import csv
import glob
import hashlib
import itertools
import json
import logging
import os
from typing import TYPE_CHECKING

from datasets import ClassLabel, Dataset, DatasetDict, IterableDatasetDict, concatenate_datasets, load_dataset

from transferkit.arguments import DataArguments, ModelArguments
from transferkit.errors import TransferKitError
from transferkit.labels import (
    LabelSpec,
    check_labels_present,
    drop_missing_class_labels,
    encode_labels,
    has_text,
    infer_label_spec,
)

if TYPE_CHECKING:
    from transformers import TrainingArguments

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")  # the splits a run uses; others (IMDB's `unsupervised`) are left unread
FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
}
TABLE_FORMATS = tuple(ext for ext in FORMATS if ext != ".txt")
STREAM_CHECK_LINES = 10_000  # a streamed corpus is too large to read twice: its head is checked
STREAM_SHUFFLE_BUFFER = 10_000  # documents held to shuffle a stream (datasets' default is 1,000)
DEFAULT_TEXT_COLUMNS = (["text"], ["sentence1", "sentence2"], ["sentence"])


def resolve_data_files(spec: str, option: str, extensions: tuple[str, ...]) -> list[str]:
    """Expand a file, a folder or a glob into a sorted list of data files with one known extension."""
    if os.path.isdir(spec):
        files = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(spec)
            for name in names
            if os.path.splitext(name)[1].lower() in extensions
        )
        if not files:
            raise TransferKitError(f"{option}: the folder {spec} holds no {', '.join(extensions)} files.")
    else:
        files = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        if not files or not all(os.path.isfile(path) for path in files):
            raise TransferKitError(f"{option}: no such file, folder or glob match: {spec}. Check the path.")
    unknown = sorted({os.path.splitext(path)[1].lower() for path in files} - set(extensions))
    if unknown:
        raise TransferKitError(
            f"{option}: unknown file format {unknown[0] or '(no extension)'} in {spec}. "
            f"Use one of: {', '.join(ext.lstrip('.') for ext in extensions)}."
        )
    if len({FORMATS[os.path.splitext(path)[1].lower()] for path in files}) > 1:
        raise TransferKitError(f"{option}: {spec} mixes file formats; give one format per split.")
    return files


def load_raw_datasets(
    data_args: DataArguments,
    model_args: ModelArguments,
    extensions: tuple[str, ...] = TABLE_FORMATS,
    streaming: bool = False,
) -> DatasetDict | IterableDatasetDict:
    """Load every split the user named, from the Hub (`dataset_name`) or local files."""
    if data_args.dataset_name is not None:
        return load_hub_dataset(data_args, model_args.cache_dir, streaming)
    splits = {
        "train": data_args.train_file,
        "validation": data_args.validation_file,
        "test": data_args.test_file,
    }
    loaded = {
        split: load_local_split(
            spec,
            f"{split}_file" if split != "validation" else "validation_file",
            extensions,
            model_args.cache_dir,
            streaming,
        )
        for split, spec in splits.items()
        if spec is not None
    }
    return IterableDatasetDict(loaded) if streaming else DatasetDict(loaded)


def load_hub_dataset(data_args: DataArguments, cache_dir: str | None, streaming: bool) -> DatasetDict:
    """`load_dataset` by Hub id; a dataset that is neither reachable nor cached gets one error naming it."""
    from datasets.exceptions import DatasetNotFoundError

    name, revision = data_args.dataset_name, data_args.dataset_revision
    try:
        return load_dataset(
            name, data_args.dataset_config_name, revision=revision, cache_dir=cache_dir, streaming=streaming
        )
    except (ConnectionError, DatasetNotFoundError, FileNotFoundError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or isinstance(
            err, ConnectionError
        )
        where = "is not in the local cache and the Hub cannot be reached" if offline else "was not found on the Hub"
        pinned = f" at revision {revision}" if revision else ""
        raise TransferKitError(
            f"dataset_name: '{name}'{pinned} {where} ({type(err).__name__}). Check the id (and dataset_revision, "
            "dataset_config_name, HF_TOKEN for a private dataset); offline, load it once online into the cache "
            "(HF_DATASETS_CACHE), or point train_file at local files."
        ) from None


def load_local_split(spec: str, option: str, extensions: tuple[str, ...], cache_dir: str | None, streaming: bool):
    files = resolve_data_files(spec, option, extensions)
    extension = os.path.splitext(files[0])[1].lower()
    kwargs = {"delimiter": "\t"} if extension == ".tsv" else {}
    file_format = FORMATS[extension]
    # pandas reads a row with an unclosed quote without complaint (it swallows the rows after it), pyarrow loads
    # bytes that are not UTF-8 and fails only when a row is read, and a stream fails only once training reaches
    # the bad row: so files are checked first (csv rows always; everything in the head of a stream).
    head = STREAM_CHECK_LINES if streaming else None
    for path in files:
        check_data_file_once(path, option, file_format, head, file_format == "csv" or streaming, cache_dir)
    try:
        return load_dataset(
            file_format,
            data_files={"data": files},
            split="data",
            cache_dir=cache_dir,
            streaming=streaming,
            **kwargs,
        )
    except Exception as err:  # datasets raises many types for unreadable files; find the file and the line
        for path in files:
            check_data_file(path, option, file_format)
        raise TransferKitError(f"{option}: could not read {spec} as {extension.lstrip('.')}: {err}") from err


def check_data_file(
    path: str, option: str, file_format: str, max_lines: int | None = None, structure: bool = True
) -> None:
    """Raise a TransferKitError naming the line, what is wrong there and the fix, if `path` is not well-formed.

    datasets reports a bad file deep inside pyarrow or pandas, often without the file or the line. This checks
    the encoding (UTF-8) and, with `structure`, reads the file with the standard library (the csv module
    strictly, json per line), up to `max_lines` lines.
    """
    problem = None if file_format == "parquet" else _utf8_problem(path, max_lines)
    if problem is None and structure and file_format in ("csv", "json"):
        problem = (_csv_problem if file_format == "csv" else _json_problem)(path, max_lines)
    if problem is not None:
        raise TransferKitError(f"{option}: {path} {problem}")


def check_data_file_once(
    path: str, option: str, file_format: str, max_lines: int | None, structure: bool, cache_dir: str | None
) -> None:
    """`check_data_file`, skipped when this file (same path, size and modification time) passed the same check
    before: the main process checks, records the pass in the datasets cache, and the other processes of a launch
    (which prepare the data after it, in `preprocess.main_process_first`) and later runs skip the pass over the
    whole file. A file that fails is never recorded, so every process raises the same error and none is left
    waiting at a barrier."""
    marker = _check_marker(path, file_format, max_lines, structure, cache_dir)
    if marker is not None and os.path.exists(marker):
        return
    check_data_file(path, option, file_format, max_lines, structure)
    if marker is not None:
        _write_marker(marker)


def _check_marker(
    path: str, file_format: str, max_lines: int | None, structure: bool, cache_dir: str | None
) -> str | None:
    """The file recording that `path` as it is now passed this check (the checker's source is in the key, so a
    changed check runs again), or None when the file cannot be stat'ed."""
    from datasets import config

    from transferkit.preprocess import _module_source_hash

    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = [os.path.realpath(path), stat.st_size, stat.st_mtime_ns, file_format, max_lines, structure]
    digest = hashlib.sha256(json.dumps([*key, _module_source_hash(__name__)]).encode()).hexdigest()
    return os.path.join(cache_dir or str(config.HF_DATASETS_CACHE), "transferkit_checked_files", digest)


def _write_marker(marker: str) -> None:
    """Best effort: a read-only cache only means the next process checks the file again."""
    try:
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "w", encoding="utf-8"):
            pass
    except OSError as err:
        logger.debug("Could not record a checked data file at %s: %s", marker, err)


def _excerpt(line: str | bytes) -> str:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.rstrip("\r\n")
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _is_utf8(path: str, chunk_size: int = 1 << 24) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as handle:
        try:
            while chunk := handle.read(chunk_size):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def _utf8_problem(path: str, max_lines: int | None) -> str | None:
    if max_lines is None and _is_utf8(path):  # the fast path, at the speed of a disk read
        return None
    with open(path, "rb") as handle:
        offset = 0
        for number, line in enumerate(itertools.islice(handle, max_lines), 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                source = "utf-16" if line.startswith((b"\xff\xfe", b"\xfe\xff")) else "latin1"
                return (
                    f"line {number} (byte {offset + err.start}) is not UTF-8: {line[err.start : err.start + 4]!r} "
                    f"in {_excerpt(line)}. Re-encode the file as UTF-8, e.g. iconv -f {source} -t utf-8 "
                    f"{os.path.basename(path)} > fixed{os.path.splitext(path)[1]} (with the file's real encoding "
                    f"in place of {source})."
                )
            offset += len(line)
    return None


def _csv_problem(path: str, max_lines: int | None) -> str | None:
    """Rows whose field count differs from the header's, and quotes the csv module refuses (strict mode)."""
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    separator = "a tab" if delimiter == "\t" else "a comma"
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(itertools.islice(handle, max_lines), delimiter=delimiter, strict=True)
        header, start = None, 1
        try:
            for row in reader:
                if header is None:
                    header = row
                elif row and len(row) != len(header):  # blank lines are skipped, as pandas does
                    return (
                        f"line {start} has {len(row)} fields where the header has {len(header)} "
                        f"({', '.join(header)}): {_excerpt(delimiter.join(row))}. Put double quotes around a field "
                        f"that holds {separator}, or fix the row."
                    )
                start = reader.line_num + 1
        except csv.Error as err:
            if max_lines is not None and reader.line_num >= max_lines:
                return None  # the head ended inside a quoted field that spans lines
            return (
                f"line {start}: a quote that is never closed, or text after a closing quote ({err}; read up to line "
                f'{reader.line_num}). Close the quote, and double every quote inside a quoted field ("").'
            )
    return None


def _json_problem(path: str, max_lines: int | None) -> str | None:
    """JSON lines (one object a line) are checked line by line; a file starting with '[' as one document."""
    with open(path, encoding="utf-8") as handle:
        lines = [(number, line) for number, line in enumerate(itertools.islice(handle, max_lines), 1) if line.strip()]
    if not lines:
        return None
    if lines[0][1].lstrip().startswith("["):
        return _json_document_problem(path)
    fix = 'Each line must hold one JSON object, e.g. {"text": "a good film", "label": "pos"}.'
    for number, line in lines:
        try:
            value = json.loads(line.rstrip("\r\n"))  # columns then count on the line itself
        except json.JSONDecodeError as err:
            if number == lines[0][0] and _json_document_problem(path) is None:
                return None  # one pretty-printed document, not JSON lines: the problem is elsewhere
            return f"line {number}, column {err.colno}: {err.msg}: {_excerpt(line)}. {fix}"
        if not isinstance(value, dict):
            return f"line {number} holds a JSON {type(value).__name__}, not an object: {_excerpt(line)}. {fix}"
    return None


def _json_document_problem(path: str) -> str | None:
    with open(path, encoding="utf-8") as handle:
        try:
            document = json.load(handle)
        except json.JSONDecodeError as err:
            return f"line {err.lineno}, column {err.colno}: {err.msg}. Fix the JSON there (a missing comma or quote?)."
    if isinstance(document, list):
        for index, item in enumerate(document):
            if not isinstance(item, dict):
                return f"item {index} of the list is a {type(item).__name__}, not an object: {item!r:.80}."
    return None


def resolve_text_columns(columns: list[str], requested: list[str] | None, split: str = "train") -> list[str]:
    """The text column(s) to use among `columns`: the requested ones (checked), else the usual names."""
    if requested:
        missing = [column for column in requested if column not in columns]
        if missing:
            raise TransferKitError(
                f"text_column_names: column '{missing[0]}' is not in the {split} split. "
                f"Columns there: {', '.join(columns)}."
            )
        return list(requested)
    for candidate in DEFAULT_TEXT_COLUMNS:
        if all(column in columns for column in candidate):
            return list(candidate)
    raise TransferKitError(
        f"No text column found in the {split} split (columns: {', '.join(columns)}). "
        "Set text_column_names to the column holding the text (or two columns for a text pair)."
    )


def check_columns(dataset: Dataset, columns: list[str], split: str, option: str) -> None:
    missing = [column for column in columns if column not in (dataset.column_names or [])]
    if missing:
        raise TransferKitError(
            f"{option}: column '{missing[0]}' is not in the {split} split. "
            f"Columns there: {', '.join(dataset.column_names or [])}."
        )


def drop_duplicate_texts(dataset: Dataset, text_columns: list[str]) -> Dataset:
    """Keep the first row of each distinct text, so that no text can land in two splits carved from one file."""
    seen: set[tuple] = set()
    keep = []
    columns = [dataset[column][:] for column in text_columns]  # whole lists: iterating a Column reads row by row
    for index, row in enumerate(zip(*columns)):
        if row not in seen:
            seen.add(row)
            keep.append(index)
    dropped = len(dataset) - len(keep)
    if dropped:
        logger.info("drop_duplicates: removed %d repeated texts, %d rows left.", dropped, len(keep))
    return dataset.select(keep)


def data_split_seed(data_args: DataArguments, training_args: TrainingArguments) -> int:
    """The seed of the validation/test split carved from train: split_seed, else the run's seed."""
    return training_args.seed if data_args.split_seed is None else data_args.split_seed


def carve_splits(raw: DatasetDict, data_args: DataArguments, seed: int, stratify_column: str | None) -> DatasetDict:
    """Hold out validation and test splits from train where the data has none (seeded; stratified if asked)."""
    splits = dict(raw)
    remaining = 100  # percentages are of the original train split, so 10 + 10 gives an 80/10/10 split
    for name, percentage in (
        ("test", data_args.test_split_percentage),
        ("validation", data_args.validation_split_percentage),
    ):
        if name in splits or percentage == 0:
            continue
        stratify = stratify_column if isinstance(splits["train"].features.get(stratify_column), ClassLabel) else None
        parts = splits["train"].train_test_split(
            test_size=percentage / remaining, seed=seed, stratify_by_column=stratify
        )
        splits["train"], splits[name] = parts["train"], parts["test"]
        remaining -= percentage
    return DatasetDict(splits)


def limit_samples(splits: DatasetDict, data_args: DataArguments) -> DatasetDict:
    """Keep the first max_*_samples rows of each split; `shuffle_train_dataset` shuffles train first (a random
    subset, as run_classification.py takes it)."""
    if data_args.shuffle_train_dataset and "train" in splits:
        splits["train"] = splits["train"].shuffle(seed=data_args.shuffle_seed)
    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_test_samples,
    }
    for name, limit in limits.items():
        if name in splits and limit is not None:
            splits[name] = splits[name].select(range(min(limit, len(splits[name]))))
    return splits


def check_not_empty(splits: DatasetDict) -> None:
    for name, split in splits.items():
        if len(split) == 0:
            raise TransferKitError(
                f"The {name} split is empty after loading and filtering. Check the file and the filters "
                "(max_*_samples, drop_duplicates, label filtering)."
            )


def drop_empty_texts(splits: DatasetDict, text_columns: list[str], predicted: tuple[str, ...] = ()) -> DatasetDict:
    """Drop the rows with no text at all (every text column missing or blank), with a count naming the split.

    Such a row teaches nothing, and scoring a guess made from no text would only blur the validation metrics (it
    measures the class prior, not the model's reading), so train and validation lose it. A row with one empty side
    of a text pair is kept: an empty side is valid input (a review without its `condition`), encoded as "".
    The `predicted` splits (test) keep every row in its place, since predictions.csv lines up with the input row by
    row: a predicted split with no text in any row is an error instead (nothing to predict: a wrong column?).
    """
    cleaned = {}
    for name, split in splits.items():
        if name in predicted:
            _check_some_text(split, text_columns, name)
            cleaned[name] = split
            continue
        kept = split.filter(has_text, batched=True, fn_kwargs={"columns": text_columns}, desc=f"Checking {name} texts")
        if len(kept) < len(split):
            logger.warning(
                "Dropped %d rows of the %s split with an empty text (no text in %s).",
                len(split) - len(kept),
                name,
                " or ".join(text_columns),
            )
        cleaned[name] = kept
    return DatasetDict(cleaned)


def rows_with_text(dataset: Dataset, columns: list[str]) -> list[int]:
    """The indices of the rows that hold some text, in order (whole columns read at once, as in
    `drop_duplicate_texts`)."""
    flags = has_text({column: dataset[column][:] for column in columns}, columns)
    return [index for index, flag in enumerate(flags) if flag]


def _check_some_text(split: Dataset, columns: list[str], name: str) -> None:
    if len(split) and not rows_with_text(split, columns):
        raise TransferKitError(
            f"The {name} split has no text in any row ({', '.join(columns)} are empty): nothing to predict. "
            "Check the file, text_column_names and max_test_samples."
        )


def set_aside_unlabelled_blank_rows(
    split: Dataset, label_column: str, text_columns: list[str]
) -> tuple[Dataset, Dataset, list[int]]:
    """Split off the rows with neither text nor label (a spreadsheet export's trailing ",,"): (the other rows, the
    rows set aside, their positions).

    The label rules (labels.py) need a label in every row of a labelled split; these rows are neither predicted nor
    scored, so they skip those rules and come back, label None, with `restore_rows`.
    """
    with_text = set(rows_with_text(split, text_columns))
    aside = [
        index for index, label in enumerate(split[label_column][:]) if index not in with_text and label in (None, "")
    ]
    if not aside:
        return split, split.select([]), []
    aside_set = set(aside)
    kept = [index for index in range(len(split)) if index not in aside_set]
    return split.select(kept), split.select(aside), aside


def restore_rows(encoded: Dataset, aside: Dataset, positions: list[int], label_column: str) -> Dataset:
    """`encoded` (labels encoded) with the rows of `set_aside_unlabelled_blank_rows` back at `positions`, label
    None (a null in Arrow, whatever the label feature)."""
    if not positions:
        return encoded
    blank = aside.remove_columns(label_column).add_column("label", [None] * len(aside))
    blank = blank.select_columns(encoded.column_names).cast(encoded.features)
    total = len(encoded) + len(blank)
    placed = set(positions)
    # Row i of the concatenation sits at order[i] in the input; select by the inverse to put every row back.
    order = [index for index in range(total) if index not in placed] + list(positions)
    return concatenate_datasets([encoded, blank]).select(sorted(range(total), key=order.__getitem__))


def encode_every_test_row(
    raw: DatasetDict, label_column: str, text_columns: list[str], problem_type: str | None
) -> tuple[DatasetDict, LabelSpec]:
    """`infer_label_spec` and `encode_labels`, with a labelled test split's rows that have neither text nor label
    kept in place (label None): they are not predicted, and no label rule applies to them."""
    aside, positions = None, []
    if "test" in raw and label_column in raw["test"].column_names:
        raw = DatasetDict(raw)
        raw["test"], aside, positions = set_aside_unlabelled_blank_rows(raw["test"], label_column, text_columns)
    spec = infer_label_spec(raw, label_column, problem_type)
    encoded = encode_labels(raw, spec, label_column)
    if positions:
        encoded["test"] = restore_rows(encoded["test"], aside, positions, label_column)
    return encoded, spec


def load_classification_splits(
    data_args: DataArguments,
    model_args: ModelArguments,
    problem_type: str | None,
    seed: int,
    skip: tuple[str, ...] = (),
) -> tuple[DatasetDict, list[str], LabelSpec]:
    """Load, check and encode the data: train / validation (/ test) splits with a 'label' column, and its spec.
    The `skip` splits (those of a phase that is off: do_eval, do_predict) are not read, so they cannot stop a run.

    Train and validation lose the rows with no text at all (`drop_empty_texts`); a test split keeps every row, in
    input order, up to max_test_samples (counted in input rows), so its predictions line up with the input file.
    """
    raw = load_raw_datasets(data_args, model_args)
    raw = used_splits(without_removed_splits(raw, data_args.remove_splits), skip)
    raw = drop_missing_class_labels(raw, data_args.label_column_name)
    text_columns = resolve_text_columns(raw["train"].column_names, data_args.text_column_names)
    for name, split in raw.items():
        check_columns(split, text_columns, name, "text_column_names")
        if data_args.label_column_name in split.column_names:  # before rows are dropped, so row numbers are the file's
            source = data_args.dataset_name or getattr(data_args, f"{name}_file", None) or ""
            check_labels_present(split, data_args.label_column_name, name, text_columns, source)
    raw = drop_empty_texts(raw, text_columns, predicted=("test",))
    check_not_empty(raw)
    if data_args.drop_duplicates:
        raw["train"] = drop_duplicate_texts(raw["train"], text_columns)
    encoded, spec = encode_every_test_row(raw, data_args.label_column_name, text_columns, problem_type)
    splits = carve_splits(encoded, data_args, seed, "label")
    splits = limit_samples(splits, data_args)
    check_not_empty(splits)
    if "test" in splits:  # again after max_test_samples, which may keep only blank rows
        _check_some_text(splits["test"], text_columns, "test")
    if "validation" in splits and "label" not in splits["validation"].column_names:
        raise TransferKitError(f"The validation split has no '{data_args.label_column_name}' column to score against.")
    return splits, text_columns, spec


def without_removed_splits(raw: DatasetDict, names: list[str] | None) -> DatasetDict:
    """The dataset without the splits named in `remove_splits` (a name that is no split is an error: a typo)."""
    unknown = [name for name in names or [] if name not in raw]
    if unknown:
        raise TransferKitError(f"remove_splits: the dataset has no split '{unknown[0]}' (splits: {', '.join(raw)}).")
    return type(raw)({name: split for name, split in raw.items() if name not in (names or [])})


def used_splits(raw: DatasetDict, skip: tuple[str, ...] = ()) -> DatasetDict:
    """Train, validation and test, less `skip`; the other splits are never checked, cleaned or tokenized."""
    if "train" not in raw:
        raise TransferKitError(f"The dataset has no train split (splits: {', '.join(raw)}). Give train_file.")
    unused = [name for name in raw if name not in SPLITS or name in skip]
    if unused:
        logger.info("Not used by this run: the %s split(s) of the dataset.", ", ".join(unused))
    return DatasetDict({name: split for name, split in raw.items() if name in SPLITS and name not in skip})


def streamed_splits(splits: dict, text_columns: list[str], data_args: DataArguments, seed: int) -> IterableDatasetDict:
    """A streamed corpus for training until max_steps, and up to `max_eval_samples` rows (default 1000) held in
    memory for evaluation: the validation stream's first, else the train stream's held-out rows.

    A row is held out when a hash of its text falls in the first `validation_split_percentage` of 100 buckets: the
    same rows in every process and however the stream is split (skipping the stream's first rows would be undone
    where a stream is cut into files). Training reads the rest over and over (`repeat`), each pass shuffled through a
    buffer. Under N processes the MLM recipe turns off accelerate's dispatching of every batch from rank 0
    (`accelerator_config: {dispatch_batches: false}`), so each rank reads its own part: whole files when there are
    at least N, else its share of each global batch. Files hold unequal rows, and a rank whose files ran out first
    would leave the others waiting in an all-reduce until the DDP timeout: repeated, no rank runs out.
    """
    train, validation = splits["train"], splits.get("validation")
    held = {"columns": text_columns, "percentage": data_args.validation_split_percentage}
    if validation is None and data_args.validation_split_percentage:
        validation = train.filter(_held_out, fn_kwargs=held)
        train = train.filter(lambda row, **kwargs: not _held_out(row, **kwargs), fn_kwargs=held)
    streamed = {"train": train.shuffle(seed=seed, buffer_size=STREAM_SHUFFLE_BUFFER).repeat(None)}
    if validation is not None:
        streamed["validation"] = Dataset.from_list(list(validation.take(data_args.max_eval_samples or 1000)))
    return IterableDatasetDict(streamed)


def _held_out(row: dict, columns: list[str], percentage: int) -> bool:
    text = "\x1f".join(str(row[column]) for column in columns).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") % 100 < percentage


def load_corpus_splits(
    data_args: DataArguments, model_args: ModelArguments, streaming: bool, seed: int, skip: tuple[str, ...] = ()
) -> tuple[DatasetDict | IterableDatasetDict, list[str]]:
    """Unlabelled text for MLM: train and validation splits (carved, or streamed off the head of train); a
    validation split in `skip` (do_eval off) is not read.

    Rows with no text at all are dropped with a count (nothing is predicted per row here); a row with one empty
    column keeps its other one (mlm_data reads each column's text as a document). A stream is not filtered: the
    tokenizing step skips its empty texts.
    """
    raw = load_raw_datasets(data_args, model_args, extensions=tuple(FORMATS), streaming=streaming)
    raw = without_removed_splits(raw, data_args.remove_splits)
    if "train" not in raw:
        raise TransferKitError(f"The dataset has no train split (splits: {', '.join(raw)}). Give train_file.")
    train = raw["train"]
    columns = train.column_names or list(next(iter(train), {}))  # a streamed csv knows its columns at row 1
    if not columns:
        raise TransferKitError("The training corpus is empty. Check train_file / dataset_name.")
    text_columns = resolve_text_columns(columns, data_args.text_column_names)
    splits = {name: split for name, split in raw.items() if name in ("train", "validation") and name not in skip}
    if streaming:
        return streamed_splits(splits, text_columns, data_args, seed), text_columns
    splits = DatasetDict(splits)
    splits = drop_empty_texts(splits, text_columns)
    check_not_empty(splits)
    if data_args.drop_duplicates:
        splits["train"] = drop_duplicate_texts(splits["train"], text_columns)
    splits = limit_samples(carve_splits(splits, data_args, seed, stratify_column=None), data_args)
    check_not_empty(splits)
    return splits, text_columns
