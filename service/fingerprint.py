"""Job fingerprints: what a spec trains, as one hash, so an identical spec can reuse a succeeded job.

Two specs have the same fingerprint when they train the same model files on the same data
with the same settings: the loaded spec (defaults filled in) without the fields that only
say how or where a job runs, with each data source and the model replaced by what they hold
(file hashes, an upload's stored sha256, a Hub name and revision, a job id). Imports nothing
heavy; the API process computes it for every submitted job.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.locations import Locations, PathRefused, contained_path, data_url_storage, model_source
from service.uploads import UploadedDataset

# Bumped whenever what goes into a fingerprint changes, so old fingerprints never match new ones.
FINGERPRINT_VERSION = 1
# Top-level fields that say how, where or when a job runs, not what it learns. `resources` is
# here because the GPU count decides the node and the speed, not the model: the recipe, its
# hyperparameters (precision and compilation included) and the data are the same, and a user
# asking to reuse wants the trained model wherever it was trained. Fields not named here count,
# so a field added to the spec later can only prevent a reuse, never cause a wrong one.
NOT_TRAINED = frozenset({"reuse", "priority", "max_attempts", "max_runtime_seconds", "resources",
                         "labels", "metadata", "webhook"})
CHUNK_BYTES = 1 << 20
# A file modified this recently may change again within the file system's timestamp
# granularity without its (size, mtime) changing, so its hash is not cached (git's "racily
# clean" rule).
RACY_SECONDS = 2.0
MAX_CACHED_FILES = 10_000

UploadLookup = Callable[[str], UploadedDataset | None]


class Unreadable(Exception):
    """A data file or model folder of the spec cannot be read now, so the spec has no fingerprint."""


class FileDigests:
    """sha256 of files, cached by (path, size, mtime_ns, inode) so large models are hashed once."""

    def __init__(self, max_entries: int = MAX_CACHED_FILES) -> None:
        self._cache: dict[tuple[str, int, int, int], str] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.hashed_bytes = 0  # bytes read so far, to show what the cache saved

    def file_sha256(self, path: Path) -> str:
        """The hex sha256 of a file's contents, read in 1 MiB chunks."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
        hexdigest = digest.hexdigest()
        with self._lock:
            self.hashed_bytes += stat.st_size
            if stat.st_mtime_ns < (time.time() - RACY_SECONDS) * 1e9:
                if len(self._cache) >= self.max_entries:
                    self._cache.clear()  # rare; rehashing is correct, only slower
                self._cache[key] = hexdigest
        return hexdigest

    def tree_sha256(self, root: Path) -> str:
        """A hash of a file or of every file under a folder: relative names and contents, in sorted order."""
        if root.is_file():
            return self.file_sha256(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is neither a file nor a folder")
        digest = hashlib.sha256()
        files = sorted((path for path in root.rglob("*") if path.is_file()),
                       key=lambda path: path.relative_to(root).as_posix())
        for path in files:
            # The name and the content hash, separated so that no two listings serialize alike.
            digest.update(f"{path.relative_to(root).as_posix()}\0{self.file_sha256(path)}\n".encode())
        return digest.hexdigest()


DIGESTS = FileDigests()  # one per process: the API hashes a model once, not once per request


def normalized_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The loaded spec without the fields that do not change what is trained."""
    return {key: value for key, value in spec.items() if key not in NOT_TRAINED}


def spec_fingerprint(spec: dict[str, Any], locations: Locations, lookup_upload: UploadLookup,
                     digests: FileDigests = DIGESTS) -> str | None:
    """The fingerprint of a loaded spec, or None when its data or model cannot be read now."""
    try:
        content = trained_content(spec, locations, lookup_upload, digests)
    except Unreadable:
        return None
    canonical = json.dumps({"version": FINGERPRINT_VERSION, "spec": content}, sort_keys=True,
                           separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def trained_content(spec: dict[str, Any], locations: Locations, lookup_upload: UploadLookup,
                    digests: FileDigests = DIGESTS) -> dict[str, Any]:
    """The normalized spec with its model and data sources replaced by what they hold; raises Unreadable."""
    content = normalized_spec(spec)
    content["model"] = model_identity(spec["model"], locations, digests)
    data = dict(spec["data"])
    for role in ("train", "validation"):
        if role in data:
            data[role] = source_identity(data[role], locations, lookup_upload, digests)
    content["data"] = data
    return content


def source_identity(source: dict[str, Any], locations: Locations, lookup_upload: UploadLookup,
                    digests: FileDigests = DIGESTS) -> dict[str, Any]:
    """What a data source holds: file hashes, an upload's sha256, or the source itself (records, Hub, split)."""
    if "path" in source:
        try:
            path = contained_path(source["path"], [locations.data_root], "data")
            sha256 = digests.tree_sha256(path)
        except (OSError, PathRefused) as exc:
            raise Unreadable(f"data path {source['path']!r}: {exc}") from exc
        # The suffix picks the loader (the same bytes read as CSV or JSON are different rows).
        kind = "folder" if path.is_dir() else path.suffix.lower()
        return {**{k: v for k, v in source.items() if k != "path"}, "files": kind, "sha256": sha256}
    if "url" in source:
        try:
            storage, key = data_url_storage(source["url"])
            info = storage.info(key)
        except Exception as exc:
            raise Unreadable(f"data URL {source['url']!r}: {exc}") from exc
        # The object's ETag (S3) or hash (GCS) changes with its content; without one there is no reuse.
        version = info.get("ETag") or info.get("md5Hash") or info.get("etag")
        if not version:
            raise Unreadable(f"data URL {source['url']!r} has no content hash")
        return {"url": source["url"], "version": str(version), "size": info.get("size")}
    if "upload" in source:
        uploaded = lookup_upload(source["upload"])
        if uploaded is None:
            raise Unreadable(f"no uploaded dataset {source['upload']!r}")
        # Two uploads of the same file are the same data: the id is left out, the content hash kept.
        return {"upload_sha256": uploaded.sha256, "format": uploaded.format}
    # Inline records, a Hub dataset (name, config, split, revision) or a split fraction are
    # their own identity. Without a revision a Hub dataset is matched by name alone.
    return dict(source)


def model_identity(model: str | dict[str, Any], locations: Locations,
                   digests: FileDigests = DIGESTS) -> dict[str, Any]:
    """What a model source holds: a local folder's file hash, a Hub name and revision, or a job id."""
    try:
        source = model_source(model, locations)
    except PathRefused as exc:
        raise Unreadable(f"model {model!r}: {exc}") from exc
    if source.kind == "hub":
        return {"hub": source.ref, "revision": source.revision}
    if source.kind == "job":
        return {"job": source.job_id}
    try:
        return {"files_sha256": digests.tree_sha256(Path(source.ref))}
    except OSError as exc:
        raise Unreadable(f"model folder {source.ref}: {exc}") from exc
