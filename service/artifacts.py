"""Published artifacts of succeeded jobs: publishing, listing, safe lookup and the model tarball.

A job's artifacts are the published folder ``artifacts/<job id>`` of the storage
(service.storage): renamed into place in a local folder, or behind a manifest written last in
an object store, so a reader sees a job's whole model or none of it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from service.storage import Published, Storage

log = logging.getLogger(__name__)

ARTIFACTS = "artifacts"
MODEL_FOLDER = "model"
MODEL_TARBALL = f"{MODEL_FOLDER}.tar.gz"
# Model tarballs built from an object store's artifacts, one per published version.
TARBALL_CACHE = "cache"
# The evaluation report of the published model, beside it (GET /v1/jobs/{id}/evaluation).
EVALUATION_FILE = "evaluation.json"
# TensorBoard event files (service.trainer.summaries): one folder per run, as in a TensorBoard logdir.
TENSORBOARD_FOLDER = "tensorboard"
# The SavedModel for TF Serving (service.trainer.serving), in the version folder TF Serving reads: saved_model/1/.
SAVED_MODEL_FOLDER = "saved_model"
# The same model with serving_ids alone, for TensorFlow builds without tensorflow-text's ops.
SAVED_MODEL_IDS_FOLDER = "saved_model_ids"
# The folders served as a tar.gz of their own (GET /v1/jobs/{id}/<folder>.tar.gz).
TARBALL_FOLDERS = (MODEL_FOLDER, SAVED_MODEL_FOLDER, SAVED_MODEL_IDS_FOLDER)


@dataclass(frozen=True)
class Artifact:
    """One published file, named by its path relative to the job's artifact folder."""

    name: str
    size: int


class ArtifactNotFound(LookupError):
    """The job has no published artifact of this name."""


def job_artifacts_dir(artifacts_root: Path, job_id: str) -> Path:
    """Folder that holds a job's published artifacts (exists only after success)."""
    return artifacts_root / job_id


def artifacts_key(job_id: str) -> str:
    """The storage key of a job's published artifacts."""
    return f"{ARTIFACTS}/{job_id}"


def published_artifacts(storage: Storage, job_id: str) -> Published | None:
    """The job's published artifacts (version and files), or None before it publishes."""
    return storage.published(artifacts_key(job_id))


def list_artifacts(storage: Storage, job_id: str) -> list[Artifact]:
    """Every published file of a job, sorted by name; empty when nothing is published."""
    published = published_artifacts(storage, job_id)
    if published is None:
        return []
    return [Artifact(f.name, f.size) for f in published.files]


def has_model(storage: Storage, job_id: str) -> bool:
    """Whether the job has published a model folder."""
    published = published_artifacts(storage, job_id)
    return published is not None and any(f.name.startswith(f"{MODEL_FOLDER}/") for f in published.files)


def publish_artifacts(storage: Storage, staging: Path, job_id: str) -> None:
    """Publish the job's files written to ``staging`` (which is used up), replacing earlier ones whole.

    With an object store the model's tar.gz is built here too, from the local files, so the
    first download streams it at once.
    """
    try:
        if storage.is_local:
            storage.publish_folder(staging, artifacts_key(job_id), move=True)
            return
        version = storage.publish_folder(staging, artifacts_key(job_id))
        storage.remove(f"{TARBALL_CACHE}/{job_id}")  # tarballs of replaced versions
        if (staging / MODEL_FOLDER).is_dir():
            tarball = staging.with_name(f".{staging.name}.{MODEL_TARBALL}")
            try:
                write_tarball(tarball, [(path.relative_to(staging / MODEL_FOLDER).as_posix(), path)
                                        for path in sorted((staging / MODEL_FOLDER).rglob("*")) if path.is_file()])
                storage.put_file(tarball, tarball_key(job_id, version))
            except OSError as exc:
                # The model is published; the API builds the tarball on the first download instead.
                log.warning("could not store the model tarball of job %s: %s", job_id, exc)
            finally:
                tarball.unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def open_artifact(storage: Storage, job_id: str, name: str) -> tuple[IO[bytes], int]:
    """A published file of a job, open for a streamed read, and its size."""
    published = published_artifacts(storage, job_id)
    key = published.object_key(name) if published is not None else None
    if published is None or key is None:
        raise ArtifactNotFound(name)
    size = next(f.size for f in published.files if f.name == name)
    return storage.open(key), size


def read_artifact(storage: Storage, job_id: str, name: str) -> bytes:
    """The whole content of a small published file of a job."""
    if storage.local_root is not None:
        return artifact_path(storage.local_root / ARTIFACTS, job_id, name).read_bytes()
    handle, _ = open_artifact(storage, job_id, name)
    with handle:
        return handle.read()


def artifact_path(artifacts_root: Path, job_id: str, name: str) -> Path:
    """The file behind an artifact name; refuses names that leave the job's folder."""
    folder = job_artifacts_dir(artifacts_root, job_id).resolve()
    try:
        candidate = (folder / name).resolve()
        if folder not in candidate.parents or not candidate.is_file():
            raise ArtifactNotFound(name)
    except OSError as exc:  # a name no file can have (a component over 255 bytes, a loop)
        raise ArtifactNotFound(name) from exc
    return candidate


def tarball_key(job_id: str, version: str, folder: str = MODEL_FOLDER) -> str:
    """Where the tar.gz of ``folder`` of one published version of a job's artifacts is kept in an object store."""
    return f"{TARBALL_CACHE}/{job_id}/{version}.{folder}.tar.gz"


def write_tarball(target: Path, files: list[tuple[str, Path]] | list[tuple[str, IO[bytes], int]]) -> None:
    """Write a tar.gz of ``files`` (name and path, or name, open stream and size) to ``target``."""
    with open(target, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for entry in files:
            if len(entry) == 2:
                tar.add(entry[1], arcname=entry[0])
            else:
                name, stream, size = entry
                info = tarfile.TarInfo(name)
                info.size = size
                info.mode = 0o644
                tar.addfile(info, stream)


def stored_model_tarball(storage: Storage, scratch: Path, job_id: str,
                         folder: str = MODEL_FOLDER) -> tuple[str, int]:
    """Key and size of the job's model tar.gz (or ``folder``'s) in an object store, built once from its files.

    The trainer builds the model's when it publishes; one built here (artifacts published without
    it, or another folder) is written to ``scratch`` from the streamed files, then stored for
    every replica.
    """
    published = published_artifacts(storage, job_id)
    model_files = [f for f in published.files if f.name.startswith(f"{folder}/")] if published else []
    if published is None or not model_files:
        raise ArtifactNotFound(f"{folder}.tar.gz")
    key = tarball_key(job_id, published.version, folder)
    try:
        return key, storage.size(key)
    except FileNotFoundError:
        pass
    scratch.mkdir(parents=True, exist_ok=True)
    fd, staged = tempfile.mkstemp(prefix=f".{job_id}.", suffix=".tmp", dir=scratch)
    os.close(fd)
    streams = [(f.name[len(folder) + 1:], storage.open(f"{published.prefix}/{f.name}"), f.size)
               for f in model_files]
    try:
        write_tarball(Path(staged), streams)
        storage.put_file(Path(staged), key)
    finally:
        for _, stream, _ in streams:
            stream.close()
        Path(staged).unlink(missing_ok=True)
    return key, storage.size(key)


def model_tarball(artifacts_root: Path, cache_root: Path, job_id: str, folder: str = MODEL_FOLDER) -> Path:
    """A tar.gz of the job's model folder (or ``folder``), built once and then served from the cache.

    The files sit at the archive's top level, so ``from_pretrained`` loads the folder it is
    unpacked into (and TF Serving the SavedModel's: its version folder ``1/`` at the top). The
    tarball is written under a temporary name and renamed, so a reader never sees half of one.
    """
    model_dir = job_artifacts_dir(artifacts_root, job_id) / folder
    if not model_dir.is_dir():
        raise ArtifactNotFound(f"{folder}.tar.gz")
    target = cache_root / f"{job_id}.{folder}.tar.gz"
    if target.is_file():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{job_id}.", suffix=".tmp", dir=cache_root)
    os.close(fd)
    try:
        write_tarball(Path(tmp_name), [(path.relative_to(model_dir).as_posix(), path)
                                       for path in sorted(model_dir.rglob("*")) if path.is_file()])
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target
