"""Artifact listing, lookup that cannot leave the job's folder, and the model tarball layout."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from service.artifacts import ArtifactNotFound, artifact_path, list_artifacts, model_tarball
from service.storage import Storage


@pytest.fixture
def published(tmp_path: Path) -> Path:
    root = tmp_path / "artifacts"
    model = root / "job_1" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"a": 1}')
    (model / "tf_model.h5").write_bytes(b"\0" * 100)
    (root / "job_1" / "metrics.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("no")
    return root


def test_list_has_names_and_sizes(published: Path) -> None:
    storage = Storage(published.parent.as_uri())
    listed = {a.name: a.size for a in list_artifacts(storage, "job_1")}
    assert listed == {"metrics.json": 2, "model/config.json": 8, "model/tf_model.h5": 100}
    assert list_artifacts(storage, "job_2") == []


@pytest.mark.parametrize("name", ["../../secret.txt", "/etc/passwd", "model", "model/../../job_1/../../secret.txt",
                                  "missing.json"])
def test_lookup_refuses_names_outside_or_missing(published: Path, name: str) -> None:
    with pytest.raises(ArtifactNotFound):
        artifact_path(published, "job_1", name)


def test_lookup_finds_nested_files(published: Path) -> None:
    assert artifact_path(published, "job_1", "model/config.json").read_text() == '{"a": 1}'


def test_tarball_has_model_files_at_top_level_and_is_cached(published: Path, tmp_path: Path) -> None:
    tarball = model_tarball(published, tmp_path / "cache", "job_1")
    with tarfile.open(tarball) as tar:
        assert sorted(tar.getnames()) == ["config.json", "tf_model.h5"]
    mtime = tarball.stat().st_mtime_ns
    assert model_tarball(published, tmp_path / "cache", "job_1").stat().st_mtime_ns == mtime
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".tmp"]
    with pytest.raises(ArtifactNotFound):
        model_tarball(published, tmp_path / "cache", "job_2")
