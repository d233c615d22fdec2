"""Published artifacts of succeeded jobs: listing, safe lookup and the model tarball."""

from __future__ import annotations

import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

MODEL_FOLDER = "model"
# The evaluation report of the published model, beside it (GET /v1/jobs/{id}/evaluation).
EVALUATION_FILE = "evaluation.json"


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


def list_artifacts(artifacts_root: Path, job_id: str) -> list[Artifact]:
    """Every published file of a job, sorted by name; empty when nothing is published."""
    folder = job_artifacts_dir(artifacts_root, job_id)
    if not folder.is_dir():
        return []
    found = [Artifact(path.relative_to(folder).as_posix(), path.stat().st_size)
             for path in folder.rglob("*") if path.is_file()]
    return sorted(found, key=lambda artifact: artifact.name)


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


def model_tarball(artifacts_root: Path, cache_root: Path, job_id: str) -> Path:
    """A tar.gz of the job's model folder, built once and then served from the cache.

    The files sit at the archive's top level, so ``from_pretrained`` loads the folder it is
    unpacked into. The tarball is written under a temporary name and renamed, so a reader
    never sees half of one.
    """
    model_dir = job_artifacts_dir(artifacts_root, job_id) / MODEL_FOLDER
    if not model_dir.is_dir():
        raise ArtifactNotFound(f"{MODEL_FOLDER}.tar.gz")
    target = cache_root / f"{job_id}.model.tar.gz"
    if target.is_file():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{job_id}.", suffix=".tmp", dir=cache_root)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for path in sorted(model_dir.rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=path.relative_to(model_dir).as_posix())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target
