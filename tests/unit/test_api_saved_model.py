"""Downloading a job's SavedModel: its files one by one and GET /v1/jobs/{id}/saved_model.tar.gz.

The folder is laid out as the trainer publishes it (service.trainer.serving writes it; see
tests/integration/test_saved_model_export.py for the real export), on the local disk and in a
real S3-compatible bucket.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from service.artifacts import artifacts_key, publish_artifacts, tarball_key
from service.config import Settings
from service.jobs import JobState
from service.locations import job_ids_with_files, remove_job_files
from service.store import JobStore
from tests.unit.test_api_object_storage import bucket_app, bucket_client, bucket_settings, s3  # noqa: F401

SPEC = {"model": "bert-base-uncased", "data": {"train": {"records": [{"text": "a", "label": "x"}]}}}
SAVED_MODEL_FILES = {"1/saved_model.pb": b"graph" * 50, "1/fingerprint.pb": b"fp",
                     "1/variables/variables.index": b"index",
                     "1/variables/variables.data-00000-of-00001": bytes(range(256)) * 8,
                     "1/assets/labels.txt": b"negative\npositive\n"}


def succeeded_job(app: Flask, client: FlaskClient) -> str:
    store: JobStore = app.extensions["fitjobs.store"]
    job_id = client.post("/v1/jobs", json=SPEC).get_json()["id"]
    store.claim_next_job("node")
    store.transition(job_id, JobState.SUCCEEDED, "done", attempt=1, result={})
    return job_id


def stage(folder: Path, saved_model: bool = True) -> Path:
    """A staging folder as the trainer leaves it: the model, metrics and (unless told) the SavedModel."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text('{"model_type": "bert"}')
    (folder / "metrics.json").write_text("{}")
    if saved_model:
        for name, content in SAVED_MODEL_FILES.items():
            (folder / "saved_model" / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / "saved_model" / name).write_bytes(content)
    return folder


def members(data: bytes) -> dict[str, bytes]:
    """Every file of a tar.gz and its content."""
    found = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            extracted = tar.extractfile(member)
            if extracted is not None:
                found[member.name] = extracted.read()
    return found


def test_the_saved_model_downloads_file_by_file_and_as_a_tarball(app: Flask, client: FlaskClient,
                                                                 settings: Settings, tmp_path: Path) -> None:
    job_id = succeeded_job(app, client)
    publish_artifacts(settings.storage, stage(tmp_path / "staging"), job_id)
    listed = {a["name"]: a["size"] for a in client.get(f"/v1/jobs/{job_id}/artifacts").get_json()["artifacts"]}
    assert {f"saved_model/{name}": len(content) for name, content in SAVED_MODEL_FILES.items()}.items() \
        <= listed.items()
    for name, content in SAVED_MODEL_FILES.items():
        one = client.get(f"/v1/jobs/{job_id}/artifacts/saved_model/{name}")
        assert one.status_code == 200 and one.data == content, name
    tarball = client.get(f"/v1/jobs/{job_id}/saved_model.tar.gz")
    assert tarball.status_code == 200 and tarball.mimetype == "application/gzip"
    assert f"filename={job_id}.saved_model.tar.gz" in tarball.headers["Content-Disposition"]
    assert tarball.headers["Repr-Digest"].startswith("sha-256=:")
    # The version folder at the top: unpacked into /models/NAME, TF Serving finds /models/NAME/1.
    assert members(tarball.data) == SAVED_MODEL_FILES
    assert sorted(members(client.get(f"/v1/jobs/{job_id}/model.tar.gz").data)) == ["config.json"]
    cached = settings.cache_dir / f"{job_id}.saved_model.tar.gz"
    assert cached.is_file()
    assert job_ids_with_files(settings.storage, jobs_dir=tmp_path / "none", artifacts_dir=tmp_path / "none",
                              cache_dir=settings.cache_dir) == {job_id}, "a cached SavedModel tarball is the job's"
    remove_job_files(settings.storage, job_id, jobs_dir=settings.jobs_dir, artifacts_dir=settings.artifacts_dir,
                     cache_dir=settings.cache_dir)
    assert not cached.exists() and not (settings.cache_dir / f"{job_id}.model.tar.gz").exists()


def test_a_job_without_a_saved_model_answers_404(app: Flask, client: FlaskClient, settings: Settings,
                                                 tmp_path: Path) -> None:
    older = succeeded_job(app, client)
    publish_artifacts(settings.storage, stage(tmp_path / "staging", saved_model=False), older)
    queued = client.post("/v1/jobs", json=SPEC).get_json()["id"]
    missing = client.get(f"/v1/jobs/{queued}/saved_model.tar.gz")
    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
    assert missing.get_json()["detail"] == f"Job {queued} is queued; it has no SavedModel to download."
    assert client.get(f"/v1/jobs/{older}/model.tar.gz").status_code == 200
    answer = client.get(f"/v1/jobs/{older}/saved_model.tar.gz")
    assert answer.status_code == 404, "artifacts published before SavedModels have none"
    assert answer.get_json()["detail"] == f"Job {older} is succeeded; it has no SavedModel to download."


def test_a_bucket_builds_the_saved_model_tarball_once_per_version(
        bucket_app: Flask, bucket_client: FlaskClient, bucket_settings: Settings,  # noqa: F811
        tmp_path: Path) -> None:
    job_id = succeeded_job(bucket_app, bucket_client)
    publish_artifacts(bucket_settings.storage, stage(tmp_path / "staging"), job_id)
    storage = bucket_settings.storage
    published = storage.published(artifacts_key(job_id))
    assert published is not None
    key = tarball_key(job_id, published.version, "saved_model")
    assert not storage.exists(key), "built on the first download, not when published"
    first = bucket_client.get(f"/v1/jobs/{job_id}/saved_model.tar.gz")
    assert first.status_code == 200 and first.content_length == len(first.data)
    assert members(first.data) == SAVED_MODEL_FILES and storage.exists(key)
    assert key != tarball_key(job_id, published.version), "the model's tarball is another object"
    assert members(bucket_client.get(f"/v1/jobs/{job_id}/model.tar.gz").data) == {
        "config.json": b'{"model_type": "bert"}'}
    assert bucket_client.get(f"/v1/jobs/{job_id}/saved_model.tar.gz").data == first.data
    assert not (bucket_settings.cache_dir / f"{job_id}.saved_model.tar.gz").exists(), "no copy on the API's disk"
