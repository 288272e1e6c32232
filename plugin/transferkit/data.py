"""Loading a dataset from the Hub or from local files, and shaping it into train / validation / test splits.

Everything here fails early with a message naming the file, split or column and the fix, so a bad path or a
misspelt column never costs a tokenization pass or a model download.
"""

from __future__ import annotations

import glob
import logging
import os

from datasets import ClassLabel, Dataset, DatasetDict, IterableDatasetDict, load_dataset

from transferkit.arguments import DataArguments, ModelArguments
from transferkit.errors import TransferKitError
from transferkit.labels import LabelSpec, encode_labels, infer_label_spec

logger = logging.getLogger(__name__)

FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
}
TABLE_FORMATS = tuple(ext for ext in FORMATS if ext != ".txt")
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
        return load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            revision=data_args.dataset_revision,
            cache_dir=model_args.cache_dir,
            streaming=streaming,
        )
    splits = {
        "train": data_args.train_file,
        "validation": data_args.validation_file,
        "test": data_args.test_file,
    }
    loaded = {
        split: _load_local_split(
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


def _load_local_split(spec: str, option: str, extensions: tuple[str, ...], cache_dir: str | None, streaming: bool):
    files = resolve_data_files(spec, option, extensions)
    extension = os.path.splitext(files[0])[1].lower()
    kwargs = {"delimiter": "\t"} if extension == ".tsv" else {}
    try:
        return load_dataset(
            FORMATS[extension],
            data_files={"data": files},
            split="data",
            cache_dir=cache_dir,
            streaming=streaming,
            **kwargs,
        )
    except Exception as err:  # datasets raises many types for unreadable files; name the file instead
        raise TransferKitError(f"{option}: could not read {spec} as {extension.lstrip('.')}: {err}") from err


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
    for index, row in enumerate(zip(*(dataset[column] for column in text_columns))):
        if row not in seen:
            seen.add(row)
            keep.append(index)
    dropped = len(dataset) - len(keep)
    if dropped:
        logger.info("drop_duplicates: removed %d repeated texts, %d rows left.", dropped, len(keep))
    return dataset.select(keep)


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


def drop_empty_texts(splits: DatasetDict, text_columns: list[str]) -> DatasetDict:
    """Drop rows whose text is missing or blank: they carry nothing to learn and break pair encoding."""
    cleaned = {}
    for name, split in splits.items():
        kept = split.filter(_has_text, batched=True, fn_kwargs={"columns": text_columns}, desc=f"Checking {name} texts")
        if len(kept) < len(split):
            logger.warning("Dropped %d rows of the %s split with an empty text.", len(split) - len(kept), name)
        cleaned[name] = kept
    return DatasetDict(cleaned)


def _has_text(batch: dict, columns: list[str]) -> list[bool]:
    rows = zip(*(batch[column] for column in columns))
    return [all(text is not None and str(text).strip() for text in row) for row in rows]


def load_classification_splits(
    data_args: DataArguments, model_args: ModelArguments, problem_type: str | None, seed: int
) -> tuple[DatasetDict, list[str], LabelSpec]:
    """Load, check and encode the data: train / validation (/ test) splits with a 'label' column, and its spec."""
    raw = load_raw_datasets(data_args, model_args)
    if "train" not in raw:
        raise TransferKitError(f"The dataset has no train split (splits: {', '.join(raw)}). Give train_file.")
    text_columns = resolve_text_columns(raw["train"].column_names, data_args.text_column_names)
    for name, split in raw.items():
        check_columns(split, text_columns, name, "text_column_names")
    raw = drop_empty_texts(raw, text_columns)
    check_not_empty(raw)
    if data_args.drop_duplicates:
        raw["train"] = drop_duplicate_texts(raw["train"], text_columns)
    spec = infer_label_spec(raw, data_args.label_column_name, problem_type)
    splits = carve_splits(encode_labels(raw, spec, data_args.label_column_name), data_args, seed, "label")
    splits = limit_samples(splits, data_args)
    check_not_empty(splits)
    if "validation" in splits and "label" not in splits["validation"].column_names:
        raise TransferKitError(f"The validation split has no '{data_args.label_column_name}' column to score against.")
    return splits, text_columns, spec


def load_corpus_splits(
    data_args: DataArguments, model_args: ModelArguments, streaming: bool, seed: int
) -> tuple[DatasetDict | IterableDatasetDict, list[str]]:
    """Unlabelled text for MLM: train and validation splits (carved, or streamed off the head of train)."""
    raw = load_raw_datasets(data_args, model_args, extensions=tuple(FORMATS), streaming=streaming)
    if "train" not in raw:
        raise TransferKitError(f"The dataset has no train split (splits: {', '.join(raw)}). Give train_file.")
    train = raw["train"]
    columns = train.column_names or list(next(iter(train), {}))  # a streamed csv knows its columns at row 1
    if not columns:
        raise TransferKitError("The training corpus is empty. Check train_file / dataset_name.")
    text_columns = resolve_text_columns(columns, data_args.text_column_names)
    splits = {name: split for name, split in raw.items() if name in ("train", "validation")}
    if streaming:
        if "validation" not in splits:
            held_out = data_args.max_eval_samples or 1000
            splits = {"train": train.skip(held_out), "validation": train.take(held_out)}
        return IterableDatasetDict(splits), text_columns
    splits = DatasetDict(splits)
    splits = drop_empty_texts(splits, text_columns)
    check_not_empty(splits)
    if data_args.drop_duplicates:
        splits["train"] = drop_duplicate_texts(splits["train"], text_columns)
    splits = limit_samples(carve_splits(splits, data_args, seed, stratify_column=None), data_args)
    check_not_empty(splits)
    return splits, text_columns
