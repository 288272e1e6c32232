"""Labelling an input a chunk of rows at a time, so that memory holds one chunk's rows, tokens and logits.

The predict recipe reads its input `chunk_rows` rows at a time: slices of the Arrow cache that datasets builds of a
loaded input (memory-mapped), or, with `streaming`, batches of datasets' IterableDataset, which builds no cache of
the whole input. Each chunk is cleaned, tokenized and predicted as a whole input was (`predict.predict_columns`:
length-sorted batches, the input order restored; under `accelerate launch` the chunk's batches are shared by the
processes and gathered by Trainer's loop), then appended by the main process to the output file
(`tables.TableWriter`), which takes its name only once every chunk is in: a failure leaves no output file.

The input's checks run before the first chunk is predicted: on the whole input, or on a stream's first chunk (its
columns); whether a stream holds any text is known only at its end, and is then an error that leaves no file.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from datasets import Dataset, Features, IterableDataset, Value

from transferkit.arguments import ModelArguments
from transferkit.errors import TransferKitError
from transferkit.labels import LabelSpec
from transferkit.predict import (
    PredictArguments,
    check_prediction_data,
    load_prediction_input,
    no_text_error,
    predict_columns,
)
from transferkit.preprocess import LongText, main_process_first
from transferkit.reports import predictions_table, result_features
from transferkit.tables import TableWriter
from transferkit.text import TextCleaningArguments, apply_text_cleaning
from transferkit.trainers import ClassificationTrainer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkedInput:
    """The rows to label, chunk by chunk, with what is known of them before the first chunk is predicted."""

    chunks: Iterator[Dataset]
    text_columns: list[str]
    features: Features  # the input's columns and types: the output's first columns
    total_rows: int | None  # unknown for a stream
    where: str  # the input as messages name it


def open_chunked_input(
    args: PredictArguments, model_args: ModelArguments, saved_columns: list[str] | None = None
) -> ChunkedInput:
    """Load (or open as a stream) and check the input of `args`; nothing is tokenized or predicted yet."""
    data, where = load_prediction_input(args, model_args, streaming=args.streaming)
    if isinstance(data, Dataset):
        text_columns = check_prediction_data(data, args.text_column_names, where, saved_columns)
        return ChunkedInput(slices(data, args.chunk_rows), text_columns, data.features, len(data), where)
    chunks = stream_chunks(data, args.chunk_rows)
    first = next(chunks, None)
    if first is None:
        raise TransferKitError(f"{where} holds no rows: nothing to predict. Check the file.")
    text_columns = check_prediction_data(first, args.text_column_names, where, saved_columns, whole=False)
    features = data.features or typed_nulls(first.features)
    return ChunkedInput(itertools.chain([first], chunks), text_columns, features, stream_rows(data), where)


def slices(dataset: Dataset, rows: int) -> Iterator[Dataset]:
    """Consecutive chunks of `rows` rows: contiguous selections, which datasets serves as slices of its Arrow table
    (no copy, no indices mapping)."""
    for start in range(0, len(dataset), rows):
        yield dataset.select(range(start, min(start + rows, len(dataset))))


def stream_chunks(stream: IterableDataset, rows: int) -> Iterator[Dataset]:
    """A stream's rows, `rows` at a time, each chunk a small in-memory Dataset (typed by the stream's features when
    it has them: a parquet file, a Hub dataset; else by its values, as datasets reads a csv or json block)."""
    for batch in stream.iter(batch_size=rows):
        yield Dataset.from_dict(batch, features=stream.features)


def stream_rows(stream: IterableDataset) -> int | None:
    """The stream's row count where its dataset info records it (a Hub dataset's card), for the progress log."""
    splits = getattr(stream.info, "splits", None) or {}
    recorded = splits.get(str(stream.split)) if stream.split is not None else None
    return getattr(recorded, "num_examples", None) or None


def typed_nulls(features: Features) -> Features:
    """A column that is empty in all of a stream's first chunk is typed null, a type no later value could be written
    as in a parquet file: such a column is taken as text."""
    return Features(
        {name: Value("string") if feature == Value("null") else feature for name, feature in features.items()}
    )


def predict_in_chunks(
    trainer: ClassificationTrainer,
    source: ChunkedInput,
    args: PredictArguments,
    spec: LabelSpec,
    long_text: LongText,
    text_args: TextCleaningArguments | None = None,
) -> dict[str, float]:
    """Label every chunk of `source` and (the main process) append it with its predictions to args.output_file;
    returns the metrics of all chunks together. The file appears only when every chunk is written."""
    results = result_features(spec, args.all_probabilities)
    main = trainer.is_world_process_zero()
    writer = TableWriter(args.output_file, Features({**source.features, **results})) if main else None
    metrics, done = [], 0
    with writer or contextlib.nullcontext():
        for number, chunk in enumerate(source.chunks, 1):
            with releasing_dataloaders(trainer):
                columns, chunk_metrics = label_chunk(
                    trainer, chunk, source.text_columns, args, spec, long_text, text_args
                )
            if writer is not None:
                writer.write(predictions_table(chunk, columns, results))  # the input as read, not as cleaned
            metrics.append(chunk_metrics)
            done += len(chunk)
            if main:
                total = f" of {source.total_rows:,} ({done / source.total_rows:.0%})" if source.total_rows else ""
                logger.info("Chunk %d: %s rows%s labelled.", number, f"{done:,}", total)
        totals = summed_metrics(metrics)
        if not totals["predict_samples"]:  # a stream without any text: known only now; the writer drops its file
            raise no_text_error(source.where, source.text_columns)
    return totals


@contextlib.contextmanager
def releasing_dataloaders(trainer: ClassificationTrainer) -> Iterator[None]:
    """Drop the DataLoaders that the block prepared from the Accelerator's list when it ends.

    accelerate keeps every DataLoader it prepares, and so its dataset (`Accelerator.prepare_data_loader` appends it
    to `Accelerator._dataloaders`, which `save_state` reads), and `Trainer.predict` prepares one per call: every
    chunk's would stay until the run ends. A loaded chunk is memory-mapped, but a streamed one is held in memory:
    measured here, the process grew by about 30 MB per 100,000 streamed short rows, and stayed flat once the list
    was trimmed. accelerate has no public call for the list alone (`free_memory` also drops the prepared model)."""
    prepared = getattr(trainer.accelerator, "_dataloaders", None)
    before = len(prepared) if isinstance(prepared, list) else None
    try:
        yield
    finally:
        if before is not None:
            del prepared[before:]


def label_chunk(
    trainer: ClassificationTrainer,
    chunk: Dataset,
    text_columns: list[str],
    args: PredictArguments,
    spec: LabelSpec,
    long_text: LongText,
    text_args: TextCleaningArguments | None,
) -> tuple[dict[str, list], dict[str, float]]:
    """One chunk cleaned as classify cleaned its texts, tokenized and predicted: its result columns and metrics."""
    if text_args is not None and text_args.clean_text:
        # the main process cleans first; the others read its cache (a loaded input's chunk has one)
        with main_process_first(trainer.args, desc="cleaning the texts"):
            chunk = apply_text_cleaning(as_text(chunk, text_columns), text_columns, text_args)
    options = (args.all_probabilities, args.multi_label_threshold, long_text)
    return predict_columns(trainer, chunk, text_columns, args.data_arguments(), spec, *options)


def as_text(chunk: Dataset, text_columns: list[str]) -> Dataset:
    """A text column that a streamed chunk typed null (no text in any of its rows) typed as text, as cleaning needs."""
    for column in text_columns:
        if chunk.features[column] == Value("null"):
            chunk = chunk.cast_column(column, Value("string"))
    return chunk


def summed_metrics(metrics: list[dict[str, float]]) -> dict[str, float]:
    """The chunks' metrics as one run's: counts and seconds add up; a rate is the total count over the total runtime
    (Trainer's `*_per_second` metrics are counts over `predict_runtime`)."""
    runtime = sum(chunk.get("predict_runtime", 0.0) for chunk in metrics)
    totals: dict[str, float] = {}
    for chunk in metrics:
        for key, value in chunk.items():
            count = value * chunk.get("predict_runtime", 0.0) if key.endswith("_per_second") else value
            totals[key] = totals.get(key, 0) + count
    for key in totals:
        if key.endswith("_per_second"):
            totals[key] = round(totals[key] / runtime, 3) if runtime else 0.0
    return {**totals, "predict_chunks": len(metrics)}
