"""Checks that an uploaded table stays within its UploadLimits, made before its data is read and after.

Before: a CSV's header line is counted (a file with 100,000 columns is refused before the CSV
reader sees it), a JSON Lines file's first record likewise, and a Parquet file's footer gives
its rows, columns and uncompressed size; its columns are then decoded batch by batch, with
string columns read as dictionaries, so the size it expands to is measured without holding it.
After: the table `datasets` built is measured (rows, columns, longest value, bytes). Each
breach is an InvalidData naming the limit and its setting.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Dataset

from service.trainer.data import InvalidData, invalid, root_cause, without_path
from service.uploads import UploadLimits

# The header line (CSV) or first record (JSON Lines) is read up to this many bytes.
MAX_HEAD_BYTES = 4 * 1024 * 1024
PARQUET_BATCH_ROWS = 65_536
PARQUET_MAGIC = b"PAR1"
# A Parquet footer (schema and row-group metadata) is read whole; ordinary files have kilobytes to a few MiB.
MAX_FOOTER_BYTES = 64 * 1024 * 1024
MIB = 1024 * 1024


def size_text(count: int) -> str:
    """A byte count for messages: MiB when it is one or more."""
    return f"{count / MIB:,.1f} MiB" if count >= MIB else f"{count:,} bytes"


def over(check: str, message: str) -> InvalidData:
    """The invalid_data failure of a breached limit."""
    return invalid(check, message, split="upload")


def first_line(path: Path, limit: int) -> bytes | None:
    """The file's first line without its line end, or None when it is longer than ``limit`` bytes."""
    with open(path, "rb") as handle:
        head = handle.read(limit + 1)
    # A line ends at "\n", "\r\n" or a lone "\r" (as the CSV readers allow).
    ends = [index for index in (head.find(b"\n"), head.find(b"\r")) if index >= 0]
    if not ends:
        return None if len(head) > limit else head
    return head[:min(ends)]


def check_columns(count: int, limits: UploadLimits, where: str) -> None:
    """Refuse more columns than the limit."""
    if count > limits.max_columns:
        raise over("too_many_columns", f"the uploaded file has {count:,} columns{where}; the limit is "
                                       f"{limits.max_columns:,} (FITJOBS_UPLOAD_MAX_COLUMNS)")


def check_rows(count: int, limits: UploadLimits, where: str) -> None:
    """Refuse more rows than the limit."""
    if count > limits.max_rows:
        raise over("too_many_rows", f"the uploaded file has {count:,} rows{where}; the limit is "
                                    f"{limits.max_rows:,} (FITJOBS_UPLOAD_MAX_ROWS)")


def check_decoded(size: int, limits: UploadLimits, where: str) -> None:
    """Refuse a table that decodes to more bytes than the limit."""
    if size > limits.max_decoded_bytes:
        raise over("too_large_decoded", f"the uploaded file decodes to at least {size_text(size)}{where}; the "
                                        f"limit is {size_text(limits.max_decoded_bytes)} "
                                        "(FITJOBS_UPLOAD_MAX_DECODED_BYTES)")


def check_cell(size: int, limits: UploadLimits) -> None:
    """Refuse a value longer than the limit."""
    if size > limits.max_cell_bytes:
        raise over("cell_too_large", f"the uploaded file has a value of {size_text(size)}; the limit is "
                                     f"{size_text(limits.max_cell_bytes)} per value (FITJOBS_UPLOAD_MAX_CELL_BYTES)")


def check_before_reading(path: Path, limits: UploadLimits) -> None:
    """Refuse a file whose header, first record or Parquet metadata already breaks a limit."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        check_csv_header(path, limits)
    elif suffix in (".json", ".jsonl"):
        check_first_record(path, limits)
    elif suffix == ".parquet":
        check_parquet(path, limits)


def check_csv_header(path: Path, limits: UploadLimits) -> None:
    """Count the header line's columns before the CSV reader parses anything."""
    line = first_line(path, MAX_HEAD_BYTES)
    if line is None:
        raise over("header_too_long", f"the uploaded file's first line is longer than {size_text(MAX_HEAD_BYTES)}; "
                                      "a CSV header names the columns and is far shorter")
    text = line.decode("utf-8", errors="replace")
    try:
        count = len(next(csv.reader([text]), []))
    except csv.Error:
        count = text.count(",") + 1  # not CSV the csv module can split; the reader reports it once it runs
    check_columns(count, limits, " in its header line")


def check_first_record(path: Path, limits: UploadLimits) -> None:
    """Count the keys of a JSON Lines file's first record, when its first line is one."""
    line = first_line(path, MAX_HEAD_BYTES)
    if not line:
        return  # a long first line may be a JSON array; the table is measured once read
    try:
        record = json.loads(line)
    except ValueError:
        return
    if isinstance(record, dict):
        check_columns(len(record), limits, " in its first record")


def check_parquet(path: Path, limits: UploadLimits) -> None:
    """Rows, columns and sizes from the footer, then each column decoded batch by batch and measured."""
    with open(path, "rb") as handle:
        handle.seek(max(path.stat().st_size - 8, 0))
        tail = handle.read(8)
    footer = int.from_bytes(tail[:4], "little") if len(tail) == 8 and tail[4:] == PARQUET_MAGIC else 0
    if footer > MAX_FOOTER_BYTES:
        raise over("metadata_too_large", f"the uploaded file's Parquet metadata takes {size_text(footer)}; the limit "
                                         f"is {size_text(MAX_FOOTER_BYTES)}")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and OSError for a broken footer
        cause = without_path(root_cause(exc), path)
        raise over("unreadable_file", f"the uploaded file could not be read as parquet: {cause}") from exc
    meta = parquet.metadata
    check_columns(meta.num_columns, limits, " in its Parquet metadata")
    check_rows(meta.num_rows, limits, " in its Parquet metadata")
    groups = [meta.row_group(index) for index in range(meta.num_row_groups)]
    check_decoded(sum(group.total_byte_size for group in groups), limits, " in its Parquet metadata")
    texts = [field.name for field in parquet.schema_arrow if is_text(field.type)]
    # Dictionary-encoded columns stay dictionaries, so a repeated value is measured, not copied.
    measured = pq.ParquetFile(path, read_dictionary=texts)
    decoded = 0
    for batch in measured.iter_batches(batch_size=PARQUET_BATCH_ROWS, use_threads=False):
        for column in batch.columns:
            size, longest = column_bytes(column)
            check_cell(longest, limits)
            decoded += size
        check_decoded(decoded, limits, " once its columns are expanded")


def column_bytes(column: Any) -> tuple[int, int]:
    """(bytes the column's values take decoded, the longest text or binary value) of an Arrow array."""
    if pa.types.is_dictionary(column.type) and is_text(column.type.value_type):
        lengths = pc.binary_length(column.dictionary)
        taken = pc.take(lengths, column.indices)
        return int(pc.sum(taken).as_py() or 0) + 4 * len(column), int(pc.max(taken).as_py() or 0)
    if is_text(column.type):
        lengths = pc.binary_length(column)
        return int(pc.sum(lengths).as_py() or 0) + 4 * len(column), int(pc.max(lengths).as_py() or 0)
    return int(column.nbytes), 0


def is_text(kind: Any) -> bool:
    """Whether an Arrow type holds variable-length strings or bytes."""
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
                or pa.types.is_large_binary(kind))


def check_after_reading(table: Dataset, limits: UploadLimits) -> None:
    """Rows, columns, decoded bytes and the longest value of the table as read."""
    check_columns(len(table.column_names), limits, "")
    check_rows(len(table), limits, "")
    check_decoded(int(table.data.nbytes), limits, "")
    for column in table.data.columns:
        if is_text(column.type):
            lengths = pc.binary_length(column)
            check_cell(int(pc.max(lengths).as_py() or 0), limits)
