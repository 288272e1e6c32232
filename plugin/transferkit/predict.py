"""Label new data with a finetuned classifier: the last stage of the data's way, for files, Hub datasets and lists.

The same steps as the classify recipe's test prediction, so a text gets the label it got there: the data is loaded
and checked by transferkit.data, tokenized by `tokenize_for_classification`, and predicted by
`ClassificationTrainer.predict` (length-sorted batches, each padded to its longest text, the input order restored;
under `accelerate launch` Trainer's evaluation loop shards the batches across processes and gathers them in order).
Every check a user can fail (the model, the data, the text columns, the output name) runs before any prediction,
and the output file appears only once it is complete.

    from transferkit.predict import predict
    predict("outputs/classify", ["a great film", "a dull plot"])  # [{'label': 'pos', 'score': 0.98}, ...]
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from datasets import Dataset, DatasetDict, IterableDataset
from transformers import (
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainingArguments,
)

from transferkit.arguments import DataArguments, ModelArguments, comma_separated, with_help
from transferkit.data import (
    FORMATS,
    load_hub_dataset,
    load_local_split,
    resolve_data_files,
    resolve_text_columns,
)
from transferkit.errors import TransferKitError
from transferkit.labels import REGRESSION, SINGLE, LabelSpec, has_text
from transferkit.lora import LABELS_FILE, load_lora_model
from transferkit.models import (
    check_tokenizer_fits,
    ensure_pad_token,
    load_config,
    load_pretrained,
    load_tokenizer,
    resolve_max_seq_length,
)
from transferkit.preprocess import LONG_TEXT_MODES, WINDOW_AGGREGATIONS, LongText, tokenize_for_classification
from transferkit.ranges import COUNT, at_least, between, check_own_ranges
from transferkit.reliability import nearest_folder_above
from transferkit.reports import (
    RESULT_COLUMNS,
    placed,
    predict_rows_with_text,
    result_columns,
    result_features,
    with_predictions,
)
from transferkit.tables import OUTPUT_FORMATS
from transferkit.trainers import ClassificationTrainer, classification_collator

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64  # no gradients or optimizer state at inference: a batch several times training's fits
# Rows predicted at a time: thousands of batches, as length-sorting pads least over many texts (batches are formed
# within a chunk), and a bounded share of memory (tests/benchmarks/README.md, prediction section).
DEFAULT_CHUNK_ROWS = 100_000
TEXT_SCAN_ROWS = 10_000  # rows read at a time when looking for a row with text
# Written by the classify recipe next to its model (and its merged/ model): how it read its texts, so that new data
# is read the same way. An adapter folder has no config.json, hence a file of its own (as lora.LABELS_FILE).
TEXT_SETTINGS_FILE = "transferkit_text.json"


@dataclass
class PredictArguments:
    """What to label and where the labels go (the model is ModelArguments' model_name_or_path)."""

    test_file: str | None = field(
        default=None,
        **with_help(
            "The data to label: a csv, tsv, json, jsonl, parquet or txt file, a folder or a glob.", aliases=["--data"]
        ),
    )
    dataset_name: str | None = field(
        default=None, **with_help("Or a dataset on the Hub to label (instead of test_file).")
    )
    dataset_config_name: str | None = field(default=None, **with_help("Configuration name of the Hub dataset."))
    dataset_revision: str = field(default="main", **with_help("Branch, tag or commit of the Hub dataset."))
    dataset_split: str | None = field(
        default=None, **with_help("The split of the Hub dataset to label. Default: test, or its only split.")
    )
    output_file: str | None = field(
        default=None,
        **with_help(
            "Where to write the input's rows with `predicted` and `score`: a .csv, .jsonl or .parquet file.",
            aliases=["--output"],
        ),
    )
    text_column_names: list[str] | None = field(
        default=None,
        **with_help(
            "The text column, or two for a text pair (sentence1,sentence2). Default: the column(s) the classify run "
            f"read ({TEXT_SETTINGS_FILE} next to the model), else 'text', 'sentence1 sentence2' or 'sentence'."
        ),
    )
    text_column_delimiter: str | None = field(
        default=None,
        **with_help("Join the text columns with this delimiter. Default: the classify run's (its settings file)."),
    )
    max_seq_length: int | None = field(
        default=None,
        **with_help(
            "Tokens per input. Default: the classify run's, else the model's limit, at most 512.", range=at_least(8)
        ),
    )
    long_text: str | None = field(
        default=None,
        **with_help(
            "A text longer than max_seq_length: truncate, head_tail (its first head_tokens and its last tokens) or "
            "windows (overlapping windows, logits aggregated per row). Default: the classify run's, else truncate.",
            choices=list(LONG_TEXT_MODES),
        ),
    )
    head_tokens: int | None = field(
        default=None, **with_help("long_text head_tail: the first tokens kept.", range=at_least(0))
    )
    window_stride: int | None = field(
        default=None,
        **with_help("long_text windows: tokens between two windows' starts. Default: half a window.", range=COUNT),
    )
    window_aggregation: str | None = field(
        default=None,
        **with_help(
            "long_text windows: a row's logits are the mean or the max of its windows'. Default: the classify "
            "run's, else mean.",
            choices=list(WINDOW_AGGREGATIONS),
        ),
    )
    all_probabilities: bool = field(default=False, **with_help("Also write every class's probability (prob_<label>)."))
    multi_label_threshold: float = field(
        default=0.5,
        **with_help("Multi-label models: a label is predicted above this probability.", range=between(0, 1)),
    )
    preprocessing_num_workers: int | None = field(default=None, **with_help("Processes for tokenization.", range=COUNT))
    overwrite_cache: bool = field(default=False, **with_help("Tokenize again instead of reusing the datasets cache."))
    chunk_rows: int = field(
        default=DEFAULT_CHUNK_ROWS,
        **with_help(
            "Rows read, tokenized, predicted and appended to output_file at a time: memory holds one chunk's rows, "
            "tokens and logits, not the input's. Lower it for long texts or little memory, keeping it many batches "
            "(batches are length-sorted within a chunk). Any value gives the same rows, order and labels (a score "
            "may differ in its last float digits, as between batch sizes: a row's batch is chosen in its chunk).",
            range=COUNT,
        ),
    )
    streaming: bool = field(
        default=False,
        **with_help(
            "Read the input (test_file or dataset_name) as a stream (datasets' IterableDataset), chunk_rows rows at "
            "a time, without first building the Arrow cache of the whole input: for inputs larger than that cache's "
            "disk space. The input's checks then run on its first chunk; a parquet output takes its column types "
            "from the first chunk.",
        ),
    )

    def __post_init__(self) -> None:
        check_own_ranges(self)
        if (self.test_file is None) == (self.dataset_name is None):
            raise TransferKitError("Give the data to label: test_file (local files) or dataset_name (a Hub dataset).")
        if self.output_file is None:
            raise TransferKitError("output_file: where to write the predictions (a .csv, .jsonl or .parquet file).")
        check_output_file(self.output_file)
        self.text_column_names = comma_separated(self.text_column_names)
        self.data_arguments()  # DataArguments' own checks (text_column_names count, delimiter escapes)
        if self.long_text not in (None, *LONG_TEXT_MODES):
            raise TransferKitError(f"long_text must be one of {', '.join(LONG_TEXT_MODES)}, got {self.long_text!r}.")
        if self.window_aggregation not in (None, *WINDOW_AGGREGATIONS):
            raise TransferKitError(f"window_aggregation must be mean or max, got {self.window_aggregation!r}.")

    def with_saved(self, saved: TextSettings) -> PredictArguments:
        """These arguments with every option left unset taken from the classify run's settings (the text column
        names stay as given: `choose_text_columns` weighs the saved ones against the data's columns)."""
        unset = {name: getattr(saved, name) for name in SAVED_OPTIONS if getattr(self, name) is None}
        return dataclasses.replace(self, **{name: value for name, value in unset.items() if value is not None})

    def data_arguments(self) -> DataArguments:
        """The options of transferkit.data's loading and tokenizing, which take DataArguments."""
        return DataArguments(
            train_file=self.test_file,
            dataset_name=self.dataset_name,
            dataset_config_name=self.dataset_config_name,
            dataset_revision=self.dataset_revision,
            text_column_names=self.text_column_names,
            text_column_delimiter=self.text_column_delimiter,
            max_seq_length=self.max_seq_length,
            preprocessing_num_workers=self.preprocessing_num_workers,
            overwrite_cache=self.overwrite_cache,
        )


# -- how the classify run read its texts ------------------------------------------------------------------------
@dataclass(frozen=True)
class TextSettings:
    """What TEXT_SETTINGS_FILE records (None: not recorded, so predict's own default applies)."""

    text_column_names: list[str] | None = None
    text_column_delimiter: str | None = None
    max_seq_length: int | None = None
    long_text: str | None = None
    head_tokens: int | None = None
    window_stride: int | None = None
    window_aggregation: str | None = None


SAVED_OPTIONS = tuple(name for name in TextSettings.__dataclass_fields__ if name != "text_column_names")


def save_text_settings(
    output_dir: str, text_columns: list[str], data_args: DataArguments, max_seq_length: int, long_text: LongText
) -> None:
    """Write TEXT_SETTINGS_FILE into output_dir and, when a LoRA run merged its adapter, into output_dir/merged."""
    delimiter = data_args.text_column_delimiter
    settings = TextSettings(
        list(text_columns),
        # as typed (\n for a newline): DataArguments reads escapes again when predict passes it on
        None if delimiter is None else delimiter.encode("unicode_escape").decode("ascii"),
        max_seq_length,
        long_text.mode,
        long_text.head_tokens,
        long_text.window_stride,
        long_text.window_aggregation,
    )
    for folder in (output_dir, os.path.join(output_dir, "merged")):
        if os.path.isdir(folder):
            with open(os.path.join(folder, TEXT_SETTINGS_FILE), "w", encoding="utf-8") as handle:
                json.dump(dataclasses.asdict(settings), handle, indent=2)


def saved_text_settings(model_args: ModelArguments) -> TextSettings:
    """The settings the classify run saved next to the model (a local folder or a Hub repo); empty for a model
    without them (a classifier from elsewhere, or a checkpoint-N folder)."""
    from transformers.utils import cached_file

    hub = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision}
    try:
        path = cached_file(
            model_args.model_name_or_path, TEXT_SETTINGS_FILE, **hub, _raise_exceptions_for_missing_entries=False
        )
    except (OSError, ValueError):
        return TextSettings()
    if path is None:
        return TextSettings()
    with open(path, encoding="utf-8") as handle:
        saved = json.load(handle)
    known = {name: value for name, value in saved.items() if name in TextSettings.__dataclass_fields__}
    logger.info("Reading texts as the classify run did (%s): %s.", TEXT_SETTINGS_FILE, known)
    return TextSettings(**known)


def check_output_file(path: str) -> None:
    """A known extension and a folder that exists (or can be made) and is writable, before anything loads."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in OUTPUT_FORMATS:
        raise TransferKitError(
            f"output_file: {path} ends in '{extension or '(no extension)'}'; name a "
            f"{', '.join(OUTPUT_FORMATS)} file (the extension picks the format)."
        )
    if os.path.isdir(path):
        raise TransferKitError(f"output_file: {path} is a folder; name a file.")
    existing = nearest_folder_above(path)
    if not os.access(existing, os.W_OK):
        raise TransferKitError(f"output_file: cannot write into {existing}. Choose another path.")


# -- the model --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: LabelSpec


def find_adapter(model_args: ModelArguments) -> str | None:
    """The local folder holding a LoRA adapter's files (a Hub adapter's snapshot), or None for a full model.

    transformers' `find_adapter_config_file` looks for adapter_config.json in a local folder or a Hub repo (cached
    offline); the label file written by `lora.save_lora_outputs` is fetched next to it.
    """
    from transformers.utils import cached_file
    from transformers.utils.peft_utils import find_adapter_config_file

    name = model_args.model_name_or_path
    hub = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision}
    try:
        adapter_config = find_adapter_config_file(name, **hub)
    except (OSError, ValueError):  # neither a folder nor a reachable repo: load_config names the problem
        return None
    if adapter_config is None:
        return None
    folder = os.path.dirname(adapter_config)
    if not os.path.isdir(name):
        # A Hub adapter: peft reads a folder's weights only when they are in it (else it takes the cached snapshot's
        # path for a repo id), so the repo's files come into that snapshot folder first.
        from huggingface_hub import snapshot_download

        folder = snapshot_download(name, revision=model_args.model_revision, cache_dir=model_args.cache_dir)
    from peft import PeftConfig, TaskType

    task = PeftConfig.from_pretrained(folder).task_type
    if task != TaskType.SEQ_CLS:
        raise TransferKitError(
            f"'{name}' is a LoRA adapter for {task or 'a language model'}, not a sequence classifier: give the "
            "output folder of the classify recipe (or its merged/ folder)."
        )
    labels = cached_file(name, LABELS_FILE, **hub, _raise_exceptions_for_missing_entries=False)
    if labels is None or os.path.dirname(labels) != folder:
        raise TransferKitError(
            f"The LoRA adapter '{name}' has no {LABELS_FILE}, so its classifier's labels are unknown. The classify "
            f"recipe writes it next to the adapter: copy it from that run's output_dir, or predict with the merged "
            "model (merge_adapter: true writes output_dir/merged)."
        )
    return folder


def check_classifier_config(name: str, config: PretrainedConfig) -> None:
    """A model saved as anything but a sequence classifier (an MLM run's output) would get a new, random head."""
    architectures = list(getattr(config, "architectures", None) or [])
    if not any(architecture.endswith("ForSequenceClassification") for architecture in architectures):
        raise TransferKitError(
            f"'{name}' is not a sequence classifier: its config.json names {architectures or 'no architecture'} "
            "(an MLM run's output?). Give the output folder of the classify recipe, its merged/ folder, a LoRA "
            "adapter folder with its label_config.json, or a classifier on the Hub."
        )


def check_model_source(model_args: ModelArguments) -> str | None:
    """Everything about the model that can be checked without its weights; returns the adapter folder, if any."""
    adapter = find_adapter(model_args)
    if adapter is None:
        check_classifier_config(model_args.model_name_or_path, load_config(model_args))
    return adapter


def label_spec(config: PretrainedConfig) -> LabelSpec:
    """The labels as classify saved them (problem_type, id2label); a Hub classifier without problem_type is
    single-label, or regression with one output (as transformers' own loss picks)."""
    problem_type = config.problem_type or (REGRESSION if config.num_labels == 1 else SINGLE)
    names = () if problem_type == REGRESSION else tuple(config.id2label[i] for i in range(config.num_labels))
    return LabelSpec(problem_type, names)


def _has_tokenizer(model_args: ModelArguments) -> bool:
    """Whether an adapter's folder or Hub repo holds its tokenizer (classify saves it there), else the base's."""
    from transformers.utils import cached_file

    hub = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision}
    found = cached_file(
        model_args.model_name_or_path, "tokenizer_config.json", **hub, _raise_exceptions_for_missing_entries=False
    )
    return found is not None


def load_prediction_model(model_args: ModelArguments, adapter: str | None) -> LoadedModel:
    """The classifier and its tokenizer. An adapter is merged into its base in memory: plain linear layers then,
    as peft recommends for inference (`merge_and_unload`), and its trained head (modules_to_save) in place."""
    if adapter is not None:
        loaded = load_lora_model(
            adapter, cache_dir=model_args.cache_dir, trust_remote_code=model_args.trust_remote_code
        )
        base = loaded.peft_config[loaded.active_adapter].base_model_name_or_path
        model = loaded.merge_and_unload()
        name = model_args.tokenizer_name or (model_args.model_name_or_path if _has_tokenizer(model_args) else base)
        tokenizer = load_tokenizer(
            ModelArguments(name, cache_dir=model_args.cache_dir, trust_remote_code=model_args.trust_remote_code)
        )
    else:
        config = load_config(model_args)
        model = load_pretrained(AutoModelForSequenceClassification, model_args, config)
        missing = list(getattr(model, "transferkit_missing_keys", []))
        if missing:
            raise TransferKitError(
                f"'{model_args.model_name_or_path}' lacks trained weights for {', '.join(missing[:4])}: they would be "
                "random. Give a classifier saved whole (the classify recipe's output_dir)."
            )
        tokenizer = load_tokenizer(model_args)
    ensure_pad_token(tokenizer, model)
    check_tokenizer_fits(tokenizer, model, model_args)
    return LoadedModel(model, tokenizer, label_spec(model.config))


# -- the data ---------------------------------------------------------------------------------------------------
def load_prediction_input(
    args: PredictArguments, model_args: ModelArguments, streaming: bool = False
) -> tuple[Dataset | IterableDataset, str]:
    """The rows to label, with all their columns, loaded (or, `streaming`, opened as an IterableDataset), and how a
    message names them; through transferkit.data's loaders and checks (file formats, UTF-8, malformed rows, Hub ids).
    `check_prediction_data` then finds their text columns."""
    if args.test_file is not None:
        files = resolve_data_files(args.test_file, "test_file", tuple(FORMATS))
        check_output_is_not_input(args.output_file, args.test_file, files)
        if all(_holds_no_rows(path) for path in files):
            raise TransferKitError(f"test_file: {args.test_file} holds no rows: nothing to predict. Check the file.")
        dataset = load_local_split(args.test_file, "test_file", tuple(FORMATS), model_args.cache_dir, streaming)
        return dataset, args.test_file
    splits = load_hub_dataset(args.data_arguments(), model_args.cache_dir, streaming=streaming)
    split = pick_split(splits, args.dataset_split, args.dataset_name)
    return splits[split], f"the {split} split of {args.dataset_name}"


def check_output_is_not_input(output_file: str | None, test_file: str, files: list[str]) -> None:
    """The output never replaces an input file, nor lands in an input folder (the next run would read it as data)."""
    if output_file is None:
        return
    output = os.path.realpath(output_file)
    inputs = {os.path.realpath(path) for path in files}
    folder = os.path.realpath(test_file) if os.path.isdir(test_file) else None
    if output in inputs or (folder and os.path.commonpath([output, folder]) == folder):
        where = "one of the input files" if output in inputs else "inside the input folder"
        raise TransferKitError(
            f"output_file {output_file} is {where} ({test_file}): name a file elsewhere; predict never writes over or "
            "beside its input."
        )


def _holds_no_rows(path: str) -> bool:
    """A file without a data row: datasets fails on a header-only csv with "corresponds to no data", which names
    neither the file nor the problem. Reads up to the first data line."""
    extension = os.path.splitext(path)[1].lower()
    if extension == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows == 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = (line for line in handle if line.strip())
        header = 1 if FORMATS[extension] == "csv" else 0
        return next(itertools.islice(lines, header, None), None) is None


def pick_split(splits: DatasetDict, requested: str | None, name: str) -> str:
    if requested is None and len(splits) == 1:
        return next(iter(splits))
    split = requested or "test"
    if split not in splits:
        raise TransferKitError(f"dataset_split: {name} has no split '{split}' (splits: {', '.join(splits)}).")
    return split


def check_prediction_data(
    dataset: Dataset, requested: list[str] | None, where: str, saved: list[str] | None = None, whole: bool = True
) -> list[str]:
    """The text columns to read (`choose_text_columns`); an empty input, a missing column, no text at all or a
    column that the output would overwrite is an error naming it. `whole=False`: `dataset` is a stream's first
    chunk, whose lack of text says nothing of the rest (transferkit.chunked says it at the end)."""
    if len(dataset) == 0:
        raise TransferKitError(f"{where} holds no rows: nothing to predict. Check the file.")
    text_columns = choose_text_columns(dataset.column_names, requested, saved, where)
    if whole and not holds_text(dataset, text_columns):
        raise no_text_error(where, text_columns)
    taken = [column for column in dataset.column_names if column in RESULT_COLUMNS or column.startswith("prob_")]
    if taken:
        raise TransferKitError(
            f"{where} already has the column(s) {', '.join(taken)}, which the predictions are written to. Rename or "
            "drop them (an earlier prediction's output?)."
        )
    return text_columns


def holds_text(dataset: Dataset, columns: list[str]) -> bool:
    """Whether some row holds text, read TEXT_SCAN_ROWS rows at a time up to the first that does (not the whole
    text columns at once: an input larger than memory)."""
    batches = dataset.select_columns(columns).iter(batch_size=TEXT_SCAN_ROWS)
    return any(any(has_text(batch, columns)) for batch in batches)


def no_text_error(where: str, text_columns: list[str]) -> TransferKitError:
    return TransferKitError(
        f"{where} has no text in any row ({', '.join(text_columns)} are empty): nothing to predict. "
        "Check the file and text_column_names."
    )


def choose_text_columns(
    columns: list[str], requested: list[str] | None, saved: list[str] | None, where: str
) -> list[str]:
    """The requested columns; else those the model was trained on, when the data has them; else the names classify
    guesses ('text', ...), if as many as the model read (a warning says so); else an error naming both."""
    if requested or not saved:
        return resolve_text_columns(columns, requested, split="input")
    if all(column in columns for column in saved):
        return list(saved)
    try:
        guessed = resolve_text_columns(columns, None, split="input")
    except TransferKitError:
        guessed = []
    if len(guessed) == len(saved):
        logger.warning(
            "The model was trained on the text column(s) %s, which %s lacks: reading %s instead.",
            ", ".join(saved),
            where,
            ", ".join(guessed),
        )
        return guessed
    raise TransferKitError(
        f"The model was trained on the text column(s) {', '.join(saved)}, which {where} lacks (columns there: "
        f"{', '.join(columns)}). Set text_column_names to the column(s) holding the text."
    )


# -- predicting -------------------------------------------------------------------------------------------------
def prediction_trainer(
    loaded: LoadedModel, args: TrainingArguments, max_seq_length: int | None = None, long_text: LongText | None = None
) -> ClassificationTrainer:
    """classify's Trainer, for its length-sorted prediction; batches padded to their longest text, and with
    long_text windows a long text read in windows whose logits are aggregated (transferkit.trainers)."""
    long_text = long_text or LongText()
    max_length = resolve_max_seq_length(max_seq_length, loaded.tokenizer, loaded.model.config)
    return ClassificationTrainer(
        model=loaded.model,
        args=args,
        processing_class=loaded.tokenizer,
        data_collator=classification_collator(loaded.tokenizer, max_length, long_text),
        window_aggregation=long_text.window_aggregation,
    )


def predict_columns(
    trainer: ClassificationTrainer,
    dataset: Dataset,
    text_columns: list[str],
    data_args: DataArguments,
    spec: LabelSpec,
    all_probabilities: bool = False,
    threshold: float = 0.5,
    long_text: LongText | None = None,
) -> tuple[dict[str, list], dict[str, float]]:
    """Tokenize `dataset` and predict it: (the result columns, one value per row of `dataset`; the metrics). A
    `dataset` without text (a chunk of the input) is not predicted: its result cells are None."""
    if not holds_text(dataset, text_columns):
        empty = {name: [None] * len(dataset) for name in result_features(spec, all_probabilities)}
        return empty, {"predict_samples": 0, "predict_not_predicted": len(dataset)}
    tokenizer = trainer.processing_class
    max_seq_length = resolve_max_seq_length(data_args.max_seq_length, tokenizer, trainer.model.config)
    splits = DatasetDict({"predict": dataset})
    tokenized = tokenize_for_classification(
        splits, tokenizer, text_columns, max_seq_length, data_args, trainer.args, long_text
    )
    tokenized = tokenized["predict"]
    inputs = [column for column in tokenizer.model_input_names if column in tokenized.column_names]
    output, logits, rows = predict_rows_with_text(trainer, tokenized, text_columns, inputs, prefix="predict")
    columns = result_columns(logits, spec, all_probabilities, threshold)
    in_place = {name: placed(values, rows, len(dataset)) for name, values in columns.items()}
    counts = {"predict_samples": len(rows), "predict_not_predicted": len(dataset) - len(rows)}
    return in_place, {**output.metrics, **counts}


# -- the Python entry point -------------------------------------------------------------------------------------
def predict(
    model: str,
    data: Sequence[str] | Sequence[tuple[str, str]] | Dataset,
    *,
    text_column_names: list[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_seq_length: int | None = None,
    all_probabilities: bool = False,
    multi_label_threshold: float = 0.5,
    bf16: bool = False,
    cache_dir: str | None = None,
    long_text: str | None = None,
    head_tokens: int | None = None,
    window_stride: int | None = None,
    window_aggregation: str | None = None,
) -> list[dict] | Dataset:
    """Label texts with a TransferKit classifier (a classify output folder, its merged/ folder, a LoRA adapter
    folder, or a Hub id), in one process.

    `data`: texts, text pairs, or a datasets.Dataset (text columns as the recipe finds them, or
    `text_column_names`). Texts come back as pipeline-like dicts in input order: {'label', 'score'} (multi-label:
    lists of names and probabilities; regression: {'score': value}), with 'probabilities' per class when asked and
    None for an empty text. A Dataset comes back with `predicted`, `score` (and prob_<label>) columns added.
    Unset text options (max_seq_length, long_text, ...) are the classify run's (TEXT_SETTINGS_FILE).
    """
    import torch

    model_args = ModelArguments(model_name_or_path=model, cache_dir=cache_dir)
    adapter = check_model_source(model_args)
    saved = saved_text_settings(model_args)
    dataset, text_columns = _as_dataset(data, text_column_names, saved.text_column_names)
    loaded = load_prediction_model(model_args, adapter)
    given = dict(max_seq_length=max_seq_length, long_text=long_text, head_tokens=head_tokens)
    given.update(window_stride=window_stride, window_aggregation=window_aggregation)
    options = {name: given.get(name) if given.get(name) is not None else getattr(saved, name) for name in SAVED_OPTIONS}
    long = LongText(
        options["long_text"] or "truncate",
        options["head_tokens"],
        options["window_stride"],
        options["window_aggregation"] or "mean",
    )
    # tokenize_for_classification takes DataArguments; its required data source is not read there.
    data_args = DataArguments(
        train_file="(in memory)",
        max_seq_length=options["max_seq_length"],
        text_column_delimiter=options["text_column_delimiter"],
    )
    with tempfile.TemporaryDirectory() as scratch:  # Trainer wants an output_dir; nothing is saved there
        args = TrainingArguments(
            scratch,
            per_device_eval_batch_size=batch_size,
            bf16_full_eval=bf16,
            use_cpu=bf16 and not torch.cuda.is_available(),  # bf16 on a CPU needs use_cpu (transformers 5)
            report_to="none",
            disable_tqdm=True,
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        trainer = prediction_trainer(loaded, args, data_args.max_seq_length, long)
        columns, _ = predict_columns(
            trainer, dataset, text_columns, data_args, loaded.spec, all_probabilities, multi_label_threshold, long
        )
    if isinstance(data, Dataset):
        return with_predictions(data, columns, result_features(loaded.spec, all_probabilities))
    return _as_dicts(columns, loaded.spec)


def _as_dataset(data, requested: list[str] | None, saved: list[str] | None) -> tuple[Dataset, list[str]]:
    if isinstance(data, Dataset):
        return data, check_prediction_data(data, requested, "The dataset", saved)
    if isinstance(data, str):
        raise TransferKitError("predict takes a list of texts (or of text pairs), not one string: wrap it in [ ].")
    texts = list(data)
    if texts and all(isinstance(text, (tuple, list)) and len(text) == 2 for text in texts):
        dataset = Dataset.from_dict({"sentence1": [a for a, _ in texts], "sentence2": [b for _, b in texts]})
    elif all(text is None or isinstance(text, str) for text in texts):
        dataset = Dataset.from_dict({"text": texts})
    else:
        raise TransferKitError("predict takes texts (str) or text pairs (two str each), not a mix of other values.")
    return dataset, check_prediction_data(dataset, None, "The texts given")


def _as_dicts(columns: dict[str, list], spec: LabelSpec) -> list[dict]:
    """One dict per text, like transformers' text-classification pipeline ({'label', 'score'})."""
    if spec.problem_type == REGRESSION:
        return [None if value is None else {"score": value} for value in columns["predicted"]]
    results = []
    for index, (label, score) in enumerate(zip(columns["predicted"], columns["score"])):
        if label is None:
            results.append(None)
            continue
        result = {"label": label, "score": score}
        if "prob_" + spec.names[0] in columns:
            result["probabilities"] = {name: columns[f"prob_{name}"][index] for name in spec.names}
        results.append(result)
    return results
