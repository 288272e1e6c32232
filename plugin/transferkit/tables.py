"""Output tables written a chunk at a time, complete or not at all: csv, jsonl and parquet.

`TableWriter` appends chunks of rows to a file under a temporary name in the output's folder and gives it its real
name (`os.replace`, atomic within a filesystem) only when every chunk is in; a failure (or a `with` block left by
an exception) removes the temporary file, so a reader never finds a half-written table under the output's name.

A file written in chunks is the file written at once: csv has one header; csv and jsonl cells are formatted per
value (integers with missing cells stay integers, not pandas' floats, which would depend on whether a chunk happened
to hold a missing cell); parquet has one schema, one row group per chunk, each chunk cast to that schema.
"""

from __future__ import annotations

import contextlib
import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, Features

from transferkit.errors import TransferKitError

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = (".csv", ".jsonl", ".parquet")
CONVERSION_ROWS = 10_000  # rows converted to text at a time (pandas), as datasets' own to_csv / to_json do


class TableWriter:
    """Append tables (a `datasets.Dataset` or a `pyarrow.Table`) to `path` in the format its extension names.

    `features` fixes a parquet file's schema (default: the first chunk's); every chunk must have its columns. The
    temporary file is opened at the first chunk, so an error before any row is written leaves nothing behind.
    """

    def __init__(self, path: str, features: Features | None = None) -> None:
        self.path = path
        self.extension = os.path.splitext(path)[1].lower()
        if self.extension not in OUTPUT_FORMATS:
            raise ValueError(f"TableWriter writes {', '.join(OUTPUT_FORMATS)} files, not {path}")
        folder = os.path.dirname(os.path.abspath(path))
        self.temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.partial")
        self.schema = None if features is None else features.arrow_schema
        self.rows = 0
        self._columns: list[str] | None = None
        self._handle = None  # a text file (csv, jsonl) or a pq.ParquetWriter

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()

    def write(self, table: Dataset | pa.Table) -> None:
        """Append the rows of `table` (a parquet row group of their own)."""
        if isinstance(table, Dataset):
            table = table.with_format("arrow")[:]
        if self._handle is None:
            self._open(table.schema)
        self._check_columns(table)
        if self.extension == ".parquet":
            table = conformed(table, self.schema, self.rows)
            if table.num_rows:
                self._handle.write_table(table, row_group_size=table.num_rows)
        else:
            for start in range(0, table.num_rows, CONVERSION_ROWS):
                self._handle.write(as_text(table.slice(start, CONVERSION_ROWS), self.extension, self.rows + start))
        self.rows += table.num_rows

    def close(self) -> None:
        """Finish the file and give it its name: the only moment `path` appears."""
        try:
            if self._handle is None:
                self._open(self.schema or pa.schema([]))  # nothing written: an empty table still gets its file
            self._handle.close()
            os.replace(self.temporary, self.path)
        except BaseException:
            self.discard()
            raise
        logger.info("Wrote %d rows to %s.", self.rows, self.path)

    def discard(self) -> None:
        """Drop what was written: the temporary file goes, `path` never appears (or keeps what it was)."""
        if self._handle is not None:
            with contextlib.suppress(Exception):
                self._handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.temporary)

    def _check_columns(self, table: pa.Table) -> None:
        """Every chunk has the first one's columns, in its order (a csv has one header, a parquet file one schema)."""
        expected = self.schema.names if self.schema is not None else self._columns
        if expected is None:
            self._columns = table.column_names
        elif table.column_names != expected:
            rows = f"{self.rows + 1}-{self.rows + table.num_rows}"
            raise TransferKitError(
                f"Rows {rows} have the columns {', '.join(table.column_names)}, the rows before them "
                f"{', '.join(expected)}: a table has one set of columns. Make the input's files (or lines) share "
                "their columns."
            )

    def _open(self, schema: pa.Schema) -> None:
        os.makedirs(os.path.dirname(self.temporary), exist_ok=True)
        remove_killed_writers_files(self.path)
        if self.extension == ".parquet":
            self.schema = self.schema or schema
            self._handle = pq.ParquetWriter(self.temporary, self.schema)
        else:
            self._handle = open(self.temporary, "w", newline="", encoding="utf-8")


def remove_killed_writers_files(path: str) -> None:
    """The temporary files (`.<name>.<pid>.partial`) that writers of `path` killed mid-way left: a kill skips
    `discard`. A file whose writer's process still runs on this machine stays."""
    folder, name = os.path.split(os.path.abspath(path))
    for entry in os.listdir(folder):
        pid = entry.removeprefix(f".{name}.").removesuffix(".partial")
        if not (entry.startswith(f".{name}.") and entry.endswith(".partial") and pid.isdigit()) or _running(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, entry))
            logger.info("Removed %s, left by a writer of %s that was killed.", entry, path)


def _running(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a writer on another machine sharing the folder is not seen:
    two machines writing one output at once would overwrite each other's table anyway)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):  # OverflowError: digits no pid can have
        return False
    except PermissionError:
        return True  # another user's process
    return True


def as_text(table: pa.Table, extension: str, first_row: int) -> str:
    """Rows as csv (the header with the file's first row) or JSON lines, formatted as datasets' to_csv / to_json
    format them (pandas), less its float cast of integer columns with missing cells."""
    if extension == ".csv":
        frame = joined_lists(table).to_pandas(integer_object_nulls=True)
        return frame.to_csv(None, index=False, header=first_row == 0)
    frame = table.to_pandas(integer_object_nulls=True)
    text = frame.to_json(None, orient="records", lines=True, force_ascii=False) if len(frame) else ""
    return text if not text or text.endswith("\n") else text + "\n"


def joined_lists(table: pa.Table) -> pa.Table:
    """CSV cells hold no lists: a list (multi-label names and scores) becomes one cell, its items joined with ';',
    numbers with 6 decimals (as classify's predictions.csv writes them)."""
    for index, field in enumerate(table.schema):
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            cells = pa.array([_join(value) for value in table.column(index).to_pylist()], pa.string())
            table = table.set_column(index, pa.field(field.name, pa.string()), cells)
    return table


def _join(value: list | None) -> str | None:
    if value is None:
        return None
    return ";".join(f"{item:.6f}" if isinstance(item, float) else str(item) for item in value)


def conformed(table: pa.Table, schema: pa.Schema, first_row: int) -> pa.Table:
    """`table` in the file's schema: a parquet file holds one type per column. A column typed otherwise in this chunk
    (a streamed csv's types are guessed per block of rows: all-empty cells read as null, numbers as int or float) is
    cast; a cast that would lose values is an error naming the column, the rows and the way out."""
    if table.schema.equals(schema, check_metadata=False):
        return table
    columns = []
    for field, column in zip(schema, table.columns):
        try:
            columns.append(column.cast(field.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
            raise TransferKitError(
                f"Column '{field.name}' holds {column.type} values in rows {first_row + 1}-{first_row + table.num_rows}"
                f" where the rows before hold {field.type} ({err}); a parquet file has one type per column. Write a "
                ".csv or .jsonl file (no types to agree), or read the input without streaming (one type per column "
                "for the whole input), or raise chunk_rows."
            ) from None
    return pa.Table.from_arrays(columns, schema=schema)
