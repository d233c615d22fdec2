"""Where a spec's data and models may come from, and the checks that keep them there.

Used by the API (to refuse a spec at submit time) and by the trainer (to find the files);
imports nothing heavy, so the API process stays free of TensorFlow and transformers.
"""

from __future__ import annotations

import os
import re
import shutil
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.artifacts import (
    ARTIFACTS,
    MODEL_FOLDER,
    TARBALL_CACHE,
    TARBALL_FOLDERS,
    artifacts_key,
    job_artifacts_dir,
)
from service.storage import Storage, open_storage

DATASET_ID = re.compile(r"^ds_[0-9a-f]{32}$")
JOB_ID = re.compile(r"^job_[0-9a-f]{32}$")
UPLOAD_STEM = "data"
UPLOAD_CACHE = "arrow-cache"
# Percent-escapes and their lookalikes are refused outright: a path that only means something
# after a decoding step is not one the caller can have meant literally.
ENCODED = re.compile(r"%[0-9a-fA-F]{2}")
# Never a source of data or models, whatever the roots: reading them reveals or blocks on live system state.
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")


class PathRefused(ValueError):
    """A path in a spec points outside the folders it may use; the message says why."""


@dataclass(frozen=True)
class Locations:
    """The folders a spec's sources resolve against."""

    data_root: Path
    uploads_dir: Path
    artifacts_dir: Path
    model_roots: tuple[Path, ...] = ()
    data_url_prefixes: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any, data_root: Path | None = None) -> Locations:
        """The locations of a Settings (``data_root`` overrides its data root)."""
        return cls(data_root=data_root or settings.data_root, uploads_dir=settings.uploads_dir,
                   artifacts_dir=settings.artifacts_dir, model_roots=tuple(settings.model_roots),
                   data_url_prefixes=tuple(settings.data_url_prefixes))

    def to_dict(self) -> dict[str, Any]:
        """Plain strings, for handing to another process."""
        return {"data_root": str(self.data_root), "uploads_dir": str(self.uploads_dir),
                "artifacts_dir": str(self.artifacts_dir), "model_roots": [str(p) for p in self.model_roots],
                "data_url_prefixes": list(self.data_url_prefixes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Locations:
        """The inverse of to_dict."""
        return cls(data_root=Path(data["data_root"]), uploads_dir=Path(data["uploads_dir"]),
                   artifacts_dir=Path(data["artifacts_dir"]),
                   model_roots=tuple(Path(p) for p in data.get("model_roots", ())),
                   data_url_prefixes=tuple(data.get("data_url_prefixes", ())))


def check_path_text(value: str) -> None:
    """Refuse path spellings that could leave a root before any file system lookup."""
    if "\x00" in value:
        raise PathRefused("contains a NUL character")
    if ENCODED.search(value):
        raise PathRefused("contains a percent-escape; give the path as plain text")
    if "\\" in value:
        raise PathRefused("contains a backslash; separate folders with '/'")
    if value.startswith("~"):
        raise PathRefused("starts with '~'; give a path inside the root")
    # NFKC folds lookalikes such as fullwidth dots and slashes into '.' and '/'.
    for spelling in {value, unicodedata.normalize("NFKC", value)}:
        if ".." in spelling.split("/"):
            raise PathRefused("contains a '..' component")


def contained_path(value: str, roots: Sequence[Path], what: str) -> Path:
    """The real path of ``value`` (relative to the first root, or absolute), which must lie in a root.

    Symlinks are resolved before the check, so a link that points out of a root is refused
    like a path that names the outside directly. The path need not exist. A refusal says which
    rule the path broke, never where it resolves to.
    """
    if not roots:
        raise PathRefused(f"no {what} root is configured")
    check_path_text(value)
    real_roots = [Path(os.path.realpath(root)) for root in roots]
    candidate = Path(value) if os.path.isabs(value) else real_roots[0] / value
    # Messages say which rule was broken, never where the path resolves to: that would disclose
    # the targets of links and of /proc/self entries, and the server's own folders.
    system = PathRefused(f"leads into {', '.join(SYSTEM_FOLDERS[:-1])} or {SYSTEM_FOLDERS[-1]}, which hold no "
                         f"{what} files")
    if passes_through_system_folder(str(candidate)):
        raise system
    try:
        real = Path(os.path.realpath(candidate))
    except OSError as exc:  # a link this process may not read
        raise PathRefused("cannot be resolved: a link on the way cannot be read") from exc
    if in_system_folder(real):
        raise system
    if not any(real == root or real.is_relative_to(root) for root in real_roots):
        # The message names the rule, never where the path leads: that would disclose the
        # target of a symlink or of a /proc/self/... link.
        roots_named = f"the {what} roots" if len(roots) > 1 else f"the {what} root"
        spelled = Path(os.path.normpath(candidate))
        if any(spelled == root or spelled.is_relative_to(root) for root in [*real_roots, *roots]):
            raise PathRefused(f"leads outside {roots_named} through a symbolic link")
        raise PathRefused(f"is outside {roots_named}")
    return real


def in_system_folder(real: Path) -> bool:
    """Whether a resolved path lies in /proc, /sys or /dev (process state, kernel settings, devices)."""
    return any(real == Path(folder) or real.is_relative_to(folder) for folder in SYSTEM_FOLDERS)


def passes_through_system_folder(path: str, max_links: int = 40) -> bool:
    """Whether resolving an absolute path, link by link, steps into /proc, /sys or /dev on the way.

    Catches what the resolved path alone hides: ``/proc/self/cwd/...`` and links to it end in
    an ordinary folder (the reading process's), but only by way of /proc.
    """
    parts = path.split("/")
    resolved = "/"
    links = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            resolved = os.path.dirname(resolved)
            continue
        step = os.path.join(resolved, part)
        if in_system_folder(Path(step)):
            return True
        if os.path.islink(step):
            links += 1
            if links > max_links:
                return False  # a link loop; the caller's realpath check refuses what it resolves to
            try:
                target = os.readlink(step)
            except OSError:
                return False  # unreadable: resolving it fails too, and the caller refuses that
            parts = target.split("/") + parts
            if target.startswith("/"):
                resolved = "/"
            continue
        resolved = step
    return False


DATA_URL_SCHEMES = ("s3", "gs")


def check_data_url_text(value: str) -> tuple[str, list[str]]:
    """(scheme, components) of an s3:// or gs:// file URL; refuses spellings that could leave a prefix."""
    scheme, separator, rest = value.partition("://")
    if not separator or scheme not in DATA_URL_SCHEMES:
        raise PathRefused("is not an s3:// or gs:// URL")
    check_path_text(rest)
    parts = rest.split("/")
    if len(parts) < 2 or any(part in ("", ".") for part in parts):
        raise PathRefused("has an empty or '.' component; name one file as s3://bucket/folder/file.csv")
    return scheme, parts


def check_data_url(value: str, prefixes: Sequence[str]) -> str:
    """The URL, when it names a file under one of the allowed ``prefixes`` (compared component by component).

    The same rules as data paths: no '..', '.' or empty components, no percent-escapes or
    backslashes, and the prefix must match whole components, so ``s3://b/data`` allows
    ``s3://b/data/x.csv`` but not ``s3://b/database.csv``.
    """
    scheme, parts = check_data_url_text(value)
    if not prefixes:
        raise PathRefused("cannot be read: no data URLs are allowed here (FITJOBS_DATA_URL_PREFIXES is empty)")
    for prefix in prefixes:
        prefix_scheme, _, prefix_rest = prefix.partition("://")
        prefix_parts = [part for part in prefix_rest.split("/") if part]
        if prefix_scheme == scheme and len(parts) > len(prefix_parts) and parts[:len(prefix_parts)] == prefix_parts:
            return f"{scheme}://{'/'.join(parts)}"
    raise PathRefused("lies outside the allowed data URL prefixes (FITJOBS_DATA_URL_PREFIXES)")


def data_url_storage(url: str) -> tuple[Storage, str]:
    """The storage of a data URL's bucket, and the URL's key in it."""
    scheme, _, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    return open_storage(f"{scheme}://{bucket}"), key


def upload_dir(uploads_dir: Path, dataset_id: str) -> Path:
    """The folder of an uploaded dataset; refuses ids this service did not issue."""
    if not DATASET_ID.match(dataset_id):
        raise PathRefused(f"{dataset_id!r} is not a dataset id (ds_ and 32 hex digits)")
    return uploads_dir / dataset_id


def upload_file(uploads_dir: Path, dataset_id: str) -> Path | None:
    """The stored file of an uploaded dataset, or None when there is none."""
    folder = upload_dir(uploads_dir, dataset_id)
    found = sorted(folder.glob(f"{UPLOAD_STEM}.*")) if folder.is_dir() else []
    return found[0] if found else None


UPLOADS = "uploads"
LOGS = "logs"
CHECKPOINTS = "checkpoints"
# Storage folders that hold one entry per job, named after it (a model tarball of local storage's
# cache is a file named after it).
JOB_STORAGE_FOLDERS = (ARTIFACTS, CHECKPOINTS, LOGS, TARBALL_CACHE)
JOB_ENTRY = re.compile(rf"^(job_[0-9a-f]{{32}})(?:\.(?:{'|'.join(map(re.escape, TARBALL_FOLDERS))})\.tar\.gz)?$")


def trainer_log_key(job_id: str, attempt: int) -> str:
    """Where the trainer log of one attempt is copied in storage, for API pods that cannot see the worker's disk."""
    return f"{LOGS}/{job_id}/attempt-{attempt}.log"


def remove_job_files(storage: Storage, job_id: str, *, jobs_dir: Path, artifacts_dir: Path, cache_dir: Path) -> None:
    """Delete every file a job left, in storage and on this node; what is already gone is no error.

    In storage: its published artifacts (the manifest first, so readers stop seeing them), its
    checkpoints, the copies of its trainer logs and its model tarballs. On this node: its job
    folder (attempt folders, logs, local checkpoints), a local copy of its artifacts and a cached
    model tarball. Copies other nodes fetched are theirs to remove (see the retention pass).
    Raises OSError (StorageUnavailable) when the object store refuses.
    """
    if not JOB_ID.match(job_id):
        raise PathRefused(f"{job_id!r} is not a job id")
    shutil.rmtree(jobs_dir / job_id, ignore_errors=True)
    shutil.rmtree(job_artifacts_dir(artifacts_dir, job_id), ignore_errors=True)
    for folder in TARBALL_FOLDERS:
        (cache_dir / f"{job_id}.{folder}.tar.gz").unlink(missing_ok=True)
    storage.remove_published(artifacts_key(job_id))
    for folder in (CHECKPOINTS, LOGS, TARBALL_CACHE):
        storage.remove(f"{folder}/{job_id}")


def job_ids_with_files(storage: Storage, *, jobs_dir: Path, artifacts_dir: Path, cache_dir: Path) -> set[str]:
    """The ids of every job that has files in storage or on this node (as remove_job_files finds them)."""
    names: list[str] = []
    for folder in JOB_STORAGE_FOLDERS:
        names += storage.children(folder)
    for local in (jobs_dir, artifacts_dir, cache_dir):
        names += os.listdir(local) if local.is_dir() else []
    return {match.group(1) for name in names if (match := JOB_ENTRY.match(name))}


def upload_key(storage: Storage, dataset_id: str) -> str | None:
    """The storage key of an uploaded dataset's file, or None when there is none."""
    folder = f"{UPLOADS}/{upload_dir(Path(UPLOADS), dataset_id).name}"
    names = [f.name for f in storage.list_files(folder) if "/" not in f.name and f.name.startswith(f"{UPLOAD_STEM}.")]
    return f"{folder}/{sorted(names)[0]}" if names else None


def fetch_upload(storage: Storage, uploads_dir: Path, dataset_id: str) -> None:
    """Copy an uploaded dataset's file from an object store into its local folder, unless it is there already."""
    if storage.is_local:
        return  # the local folder is the stored one
    key = upload_key(storage, dataset_id)
    if key is None:
        return  # deleted: the data loader reports upload_not_found
    local = upload_dir(uploads_dir, dataset_id) / key.rsplit("/", 1)[1]
    if local.is_file() and local.stat().st_size == storage.size(key):
        return
    storage.get_file(key, local)


def fetch_inputs(spec: dict[str, Any], storage: Storage, locations: Locations) -> None:
    """Copy the uploads and the job model a spec (training or prediction) reads from an object store to this
    node's folders.

    They land where local storage keeps them (``locations.uploads_dir``, ``.artifacts_dir``),
    so the data and model loaders read them as always; with local storage nothing is copied.
    """
    if storage.is_local:
        return
    data = spec.get("data") or {}
    # A training spec's train and validation sources, or a prediction spec's one source.
    for source in (data.get("train"), data.get("validation"), data):
        dataset_id = (source or {}).get("upload")
        if isinstance(dataset_id, str) and DATASET_ID.match(dataset_id):
            fetch_upload(storage, locations.uploads_dir, dataset_id)
    model = spec.get("model") or ({"job": spec["job"]} if "job" in spec else None)
    if isinstance(model, dict) and isinstance(model.get("job"), str) and JOB_ID.match(model["job"]):
        local = job_artifacts_dir(locations.artifacts_dir, model["job"])
        if not local.is_dir():
            # Missing in storage too: the model loader then reports model_not_found.
            storage.fetch_published(artifacts_key(model["job"]), local)


def job_model_dir(artifacts_dir: Path, job_id: str) -> Path:
    """The published model folder of a succeeded job."""
    if not JOB_ID.match(job_id):
        raise PathRefused(f"{job_id!r} is not a job id")
    return job_artifacts_dir(artifacts_dir, job_id) / MODEL_FOLDER


@dataclass(frozen=True)
class ModelSource:
    """Where a spec's model comes from: a Hub repository, a local folder, or a finished job."""

    kind: str  # "hub", "local" or "job"
    ref: str  # the Hub id, or the folder
    revision: str | None = None
    job_id: str | None = None
    given: str | None = None  # a local folder as the spec names it; messages use it, never the resolved ``ref``

    @property
    def local_folder(self) -> Path | None:
        """The folder to load from, for local and job models."""
        return None if self.kind == "hub" else Path(self.ref)

    def describe(self) -> str:
        """How messages name this model."""
        if self.kind == "job":
            return f"the model of job {self.job_id}"
        if self.kind == "hub" and self.revision:
            return f"{self.ref!r} at revision {self.revision!r}"
        return repr(self.given if self.given is not None else self.ref)

    def cache_key(self) -> str:
        """A key under which a tokenizer loaded from this source may be reused."""
        return f"{self.kind}:{self.ref}@{self.revision or ''}"


def model_source(model: str | dict[str, Any], locations: Locations, *, enforce_roots: bool = True) -> ModelSource:
    """The ModelSource a spec's ``model`` names.

    A string is a Hub id, or (starting with '/') a local folder; ``{"hub": ..., "revision": ...}``,
    ``{"path": ...}`` (relative to the first model root, or absolute) and ``{"job": ...}`` say it
    explicitly. With ``enforce_roots``, local folders must lie under a model root and a job's
    model under the artifacts folder, symlinks followed (PathRefused otherwise).
    """
    if isinstance(model, str):
        model = {"path": model} if model.startswith("/") else {"hub": model}
    if "hub" in model:
        return ModelSource("hub", model["hub"], revision=model.get("revision"))
    if "job" in model:
        folder = job_model_dir(locations.artifacts_dir, model["job"])
        if enforce_roots:
            real = Path(os.path.realpath(folder))
            if not real.is_relative_to(os.path.realpath(locations.artifacts_dir)):
                raise PathRefused(f"the model of job {model['job']} lies outside the artifacts folder once links "
                                  "are followed")
            folder = real
        return ModelSource("job", str(folder), job_id=model["job"])
    path = model["path"]
    if enforce_roots:
        return ModelSource("local", str(contained_path(path, locations.model_roots, "model")), given=path)
    base = locations.model_roots[0] if locations.model_roots else Path("/")
    return ModelSource("local", os.path.realpath(path if os.path.isabs(path) else base / path), given=path)
