"""Uploaded datasets: the record kept for each, its file format, and streaming it to disk.

The API process streams an upload into the dataset's folder while hashing and counting it,
and refuses compressed files and archives by their first bytes, whatever their name says: a
few kilobytes of gzip or zip can decode to gigabytes. Whether the file is a readable table of
bounded size is checked in a separate process (service.trainer.check_server).
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from service.locations import UPLOAD_STEM, UPLOADS, upload_dir
from service.storage import Storage

# File suffix -> the `datasets` loader that reads it.
UPLOAD_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Content types that name a format when the file name has no known suffix.
CONTENT_TYPE_SUFFIXES = {"text/csv": ".csv", "application/csv": ".csv", "application/json": ".json",
                         "application/x-ndjson": ".jsonl", "application/jsonl": ".jsonl",
                         "application/vnd.apache.parquet": ".parquet", "application/x-parquet": ".parquet"}
PARQUET_MAGIC = b"PAR1"
# Compressed and archive formats by their magic bytes: (offset, bytes, format name).
CONTAINER_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x1f\x8b", "gzip"),
    # bzip2: "BZh", the block size digit, and the magic of the first block (pi) or of the end (sqrt pi).
    *((0, b"BZh" + bytes([level]) + block, "bzip2")
      for level in b"123456789" for block in (b"1AY&SY", b"\x17rE8P\x90")),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"\x5d\x00\x00", "lzma"),
    (0, b"\x28\xb5\x2f\xfd", "zstd"),
    (0, b"\x04\x22\x4d\x18", "lz4"),
    (0, b"\x02\x21\x4c\x18", "lz4"),
    (0, b"\xff\x06\x00\x00sNaPpY", "snappy"),
    (0, b"PK\x03\x04", "zip"),
    (0, b"PK\x05\x06", "zip"),
    (0, b"PK\x07\x08", "zip"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (0, b"Rar!\x1a\x07", "rar"),
    (0, b"\x1f\x9d", "compress (.Z)"),
    (0, b"\x1f\xa0", "compress (.Z)"),
    (0, b"LZIP\x01", "lzip"),
    (0, b"MSCF\x00\x00\x00\x00", "cab"),
    (0, b"!<arch>\n", "ar"),
    # zlib's usual headers; only those with a byte that cannot start a text file.
    (0, b"\x78\x01", "zlib"),
    (0, b"\x78\x9c", "zlib"),
    (0, b"\x78\xda", "zlib"),
    (257, b"ustar", "tar"),
)
# Enough of a file's start to hold every magic above (tar's sits at offset 257).
SNIFF_BYTES = 512
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


def container_format(head: bytes) -> str | None:
    """The compressed or archive format whose magic bytes ``head`` (a file's first bytes) starts with, if any."""
    for offset, magic, name in CONTAINER_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return name
    return None


def refuse_container(head: bytes) -> None:
    """Refuse (422) a file that starts like compressed data or an archive."""
    found = container_format(head)
    if found is not None:
        raise UploadRefused(422, f"The uploaded file is {found} data (whatever its name says); compressed files "
                                 "and archives are not accepted. Upload the uncompressed .csv, .json, .jsonl or "
                                 ".parquet file (Parquet compresses its columns itself).")


def store_upload(stream: IO[bytes], uploads_dir: Path, dataset_id: str, suffix: str,
                 limit: int) -> tuple[Path, int, str]:
    """Copy ``stream`` into the dataset's folder in chunks; returns (path, size, sha256 hex).

    Holds at most one chunk in memory. Refuses (413) a stream longer than ``limit`` bytes and
    (422) an empty one, compressed data or an archive (as soon as its first bytes are in) or a
    Parquet file without Parquet's magic bytes; nothing is left behind on refusal.
    """
    folder = upload_dir(uploads_dir, dataset_id)
    folder.mkdir(parents=True)
    target = folder / f"{UPLOAD_STEM}{suffix}"
    digest = hashlib.sha256()
    size = 0
    head = b""
    try:
        with open(target, "wb") as out:
            while chunk := stream.read(CHUNK_BYTES):
                if len(head) < SNIFF_BYTES:
                    head += chunk[:SNIFF_BYTES - len(head)]
                    if len(head) == SNIFF_BYTES:
                        refuse_container(head)
                size += len(chunk)
                if size > limit:
                    raise UploadRefused(413, f"The upload is larger than the limit of {limit} bytes "
                                             "(FITJOBS_MAX_UPLOAD_BYTES).")
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise UploadRefused(422, "The uploaded file is empty (0 bytes).")
        refuse_container(head)
        if suffix == ".parquet":
            with open(target, "rb") as handle:
                if handle.read(4) != PARQUET_MAGIC:
                    raise UploadRefused(422, "The uploaded file is not Parquet: it does not start with "
                                             "Parquet's magic bytes 'PAR1'.")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return target, size, digest.hexdigest()


def keep_upload(storage: Storage, path: Path, dataset_id: str) -> None:
    """Store a checked upload: with an object store it is copied there and the local file removed.

    With local storage the file already lies in its place (``store_upload`` wrote it there).
    """
    if storage.is_local:
        return
    storage.put_file(path, f"{UPLOADS}/{dataset_id}/{path.name}")
    shutil.rmtree(path.parent, ignore_errors=True)


def remove_upload(uploads_dir: Path, dataset_id: str, storage: Storage | None = None) -> None:
    """Delete an uploaded dataset's folder (its file and the table cache built from it), in storage too."""
    shutil.rmtree(upload_dir(uploads_dir, dataset_id), ignore_errors=True)
    if storage is not None and not storage.is_local:
        storage.remove(f"{UPLOADS}/{upload_dir(Path(UPLOADS), dataset_id).name}")


@dataclass(frozen=True)
class UploadLimits:
    """How large a table an upload may decode to; checked before and after its data is read."""

    max_rows: int
    max_columns: int
    max_cell_bytes: int
    max_decoded_bytes: int

    @classmethod
    def from_settings(cls, settings: Any) -> UploadLimits:
        """The limits a Settings names (FITJOBS_UPLOAD_MAX_*)."""
        return cls(max_rows=settings.upload_max_rows, max_columns=settings.upload_max_columns,
                   max_cell_bytes=settings.upload_max_cell_bytes,
                   max_decoded_bytes=settings.upload_max_decoded_bytes)

    def to_dict(self) -> dict[str, int]:
        """Plain numbers, for handing to the check server."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UploadLimits:
        """The inverse of to_dict."""
        return cls(**{name: int(data[name]) for name in ("max_rows", "max_columns", "max_cell_bytes",
                                                          "max_decoded_bytes")})
