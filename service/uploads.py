"""Uploaded datasets: the record kept for each, its file format, and streaming it to disk.

The API process streams an upload into the dataset's folder while hashing and counting it;
whether the file is a readable table is checked in a separate process (service.checks).
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from service.locations import UPLOAD_STEM, upload_dir

# File suffix -> the `datasets` loader that reads it.
UPLOAD_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Content types that name a format when the file name has no known suffix.
CONTENT_TYPE_SUFFIXES = {"text/csv": ".csv", "application/csv": ".csv", "application/json": ".json",
                         "application/x-ndjson": ".jsonl", "application/jsonl": ".jsonl",
                         "application/vnd.apache.parquet": ".parquet", "application/x-parquet": ".parquet"}
PARQUET_MAGIC = b"PAR1"
CHUNK_BYTES = 1 << 20
MAX_FILENAME = 255


@dataclass(frozen=True)
class UploadedDataset:
    """An uploaded dataset as the store keeps it."""

    id: str
    filename: str
    format: str  # the file suffix without the dot: csv, json, jsonl, parquet
    size_bytes: int
    sha256: str
    rows: int
    columns: list[str]
    created_at: datetime
    seq: int = 0
    tenant: str = "default"


class UploadRefused(ValueError):
    """The upload cannot be stored; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def new_dataset_id() -> str:
    """A fresh, unguessable dataset id."""
    return f"ds_{uuid.uuid4().hex}"


def clean_filename(name: str | None) -> str:
    """The last component of a client-given file name, without control characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:MAX_FILENAME]


def upload_suffix(filename: str, content_type: str | None) -> str:
    """The file suffix that fixes how an upload is read: from its name, else from its content type."""
    suffix = Path(filename).suffix.lower()
    if suffix in UPLOAD_FORMATS:
        return suffix
    by_type = CONTENT_TYPE_SUFFIXES.get((content_type or "").split(";")[0].strip().lower())
    if by_type and not suffix:
        return by_type
    named = f"{filename!r} has the type {suffix!r}" if suffix else f"{filename!r} has no file type"
    raise UploadRefused(415, f"{named}; upload a .csv, .json, .jsonl or .parquet file "
                             "(or name the type with a matching file name)")


def store_upload(stream: IO[bytes], uploads_dir: Path, dataset_id: str, suffix: str,
                 limit: int) -> tuple[Path, int, str]:
    """Copy ``stream`` into the dataset's folder in chunks; returns (path, size, sha256 hex).

    Holds at most one chunk in memory. Refuses (413) a stream longer than ``limit`` bytes and
    (422) an empty one or a Parquet file without Parquet's magic bytes; nothing is left
    behind on refusal.
    """
    folder = upload_dir(uploads_dir, dataset_id)
    folder.mkdir(parents=True)
    target = folder / f"{UPLOAD_STEM}{suffix}"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(target, "wb") as out:
            while chunk := stream.read(CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise UploadRefused(413, f"The upload is larger than the limit of {limit} bytes "
                                             "(FITJOBS_MAX_UPLOAD_BYTES).")
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise UploadRefused(422, "The uploaded file is empty (0 bytes).")
        if suffix == ".parquet":
            with open(target, "rb") as handle:
                if handle.read(4) != PARQUET_MAGIC:
                    raise UploadRefused(422, "The uploaded file is not Parquet: it does not start with "
                                             "Parquet's magic bytes 'PAR1'.")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return target, size, digest.hexdigest()


def remove_upload(uploads_dir: Path, dataset_id: str) -> None:
    """Delete an uploaded dataset's folder (its file and the table cache built from it)."""
    shutil.rmtree(upload_dir(uploads_dir, dataset_id), ignore_errors=True)
