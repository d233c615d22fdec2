"""The API with FITJOBS_STORAGE_URL=s3://...: artifacts, the model tarball, the evaluation and uploads.

Against a real S3-compatible server (moto's server mode): files are published the way the
trainer publishes them and served by streaming from the bucket; the API's own disk holds no
copy of them.
"""

from __future__ import annotations

import io
import json
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.api import create_app
from service.artifacts import artifacts_key, publish_artifacts, tarball_key
from service.config import Settings
from service.jobs import JobState
from service.store import JobStore
from service.uploads import UPLOADS
from tests.support.s3 import S3Server, s3_server

SPEC = {"model": "bert-base-uncased", "data": {"train": {"records": [{"text": "a", "label": "x"}]}}}


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def bucket_settings(tmp_path: Path, s3: S3Server) -> Settings:
    return Settings.from_env({"FITJOBS_HOME": str(tmp_path / "home"), "FITJOBS_GPUS": "none",
                              "FITJOBS_STORAGE_URL": f"s3://{s3.new_bucket()}/fitjobs", **s3.environ})


@pytest.fixture
def bucket_app(bucket_settings: Settings) -> Iterator[Flask]:
    application = create_app(bucket_settings, test_config={"TESTING": True})
    yield application
    application.extensions["fitjobs.store"].engine.dispose()


@pytest.fixture
def bucket_client(bucket_app: Flask) -> FlaskClient:
    return bucket_app.test_client()


def succeeded_job(app: Flask, client: FlaskClient) -> str:
    store: JobStore = app.extensions["fitjobs.store"]
    job_id = client.post("/v1/jobs", json=SPEC).get_json()["id"]
    store.claim_next_job("node")
    store.transition(job_id, JobState.SUCCEEDED, "done", attempt=1, result={})
    return job_id


def publish_like_the_trainer(settings: Settings, job_id: str, tmp_path: Path, weights: bytes) -> None:
    staging = tmp_path / f"staging-{job_id}"
    (staging / "model").mkdir(parents=True)
    (staging / "model" / "config.json").write_text('{"model_type": "bert"}')
    (staging / "model" / "tf_model.h5").write_bytes(weights)
    (staging / "metrics.json").write_text('{"final": {}}')
    (staging / "evaluation.json").write_text(json.dumps({"epoch": 2, "accuracy": 0.75}))
    publish_artifacts(settings.storage, staging, job_id)
    assert not staging.exists(), "the staging folder is used up"


def test_artifacts_are_listed_and_streamed_from_the_bucket(bucket_app: Flask, bucket_client: FlaskClient,
                                                           bucket_settings: Settings, tmp_path: Path) -> None:
    job_id = succeeded_job(bucket_app, bucket_client)
    assert bucket_client.get(f"/v1/jobs/{job_id}/artifacts").get_json() == {"artifacts": []}
    weights = bytes(range(256)) * 40
    publish_like_the_trainer(bucket_settings, job_id, tmp_path, weights)
    listed = bucket_client.get(f"/v1/jobs/{job_id}/artifacts").get_json()["artifacts"]
    assert {a["name"]: a["size"] for a in listed} == {
        "evaluation.json": len(json.dumps({"epoch": 2, "accuracy": 0.75})), "metrics.json": 13,
        "model/config.json": 22, "model/tf_model.h5": len(weights)}
    one = bucket_client.get(f"/v1/jobs/{job_id}/artifacts/model/tf_model.h5")
    assert one.status_code == 200 and one.data == weights and one.content_length == len(weights)
    assert 'filename=tf_model.h5' in one.headers["Content-Disposition"]
    assert bucket_client.get(f"/v1/jobs/{job_id}/evaluation").get_json() == {"epoch": 2, "accuracy": 0.75}
    for missing in ("model/nope.bin", "../../etc/passwd", "model", f"{job_id}/metrics.json"):
        refused = bucket_client.get(f"/v1/jobs/{job_id}/artifacts/{missing}")
        assert refused.status_code == 404 and refused.mimetype == "application/problem+json", missing
    tarball = bucket_client.get(f"/v1/jobs/{job_id}/model.tar.gz")
    assert tarball.status_code == 200 and tarball.mimetype == "application/gzip"
    assert tarball.content_length == len(tarball.data)
    with tarfile.open(fileobj=io.BytesIO(tarball.data)) as tar:
        assert sorted(tar.getnames()) == ["config.json", "tf_model.h5"]
        extracted = tar.extractfile("tf_model.h5")
        assert extracted is not None and extracted.read() == weights
    assert not (bucket_settings.artifacts_dir / job_id).exists(), "the API keeps no copy of the artifacts"


def test_a_tarball_missing_from_the_bucket_is_built_once_from_the_files(
        bucket_app: Flask, bucket_client: FlaskClient, bucket_settings: Settings, tmp_path: Path) -> None:
    job_id = succeeded_job(bucket_app, bucket_client)
    publish_like_the_trainer(bucket_settings, job_id, tmp_path, b"w" * 5000)
    storage = bucket_settings.storage
    published = storage.published(artifacts_key(job_id))
    assert published is not None
    key = tarball_key(job_id, published.version)
    assert storage.exists(key), "the trainer stores the tarball when it publishes"
    storage.remove(key)
    first = bucket_client.get(f"/v1/jobs/{job_id}/model.tar.gz")
    assert first.status_code == 200 and storage.exists(key)
    with tarfile.open(fileobj=io.BytesIO(first.data)) as tar:
        assert sorted(tar.getnames()) == ["config.json", "tf_model.h5"]
    assert bucket_client.get(f"/v1/jobs/{job_id}/model.tar.gz").data == first.data
    # A republished job gets a tarball of its new files.
    publish_like_the_trainer(bucket_settings, job_id, tmp_path, b"v" * 10)
    with tarfile.open(fileobj=io.BytesIO(bucket_client.get(f"/v1/jobs/{job_id}/model.tar.gz").data)) as tar:
        extracted = tar.extractfile("tf_model.h5")
        assert extracted is not None and extracted.read() == b"v" * 10


def test_a_job_that_reused_a_result_serves_the_sources_files(bucket_app: Flask, bucket_client: FlaskClient,
                                                             bucket_settings: Settings, tmp_path: Path) -> None:
    store: JobStore = bucket_app.extensions["fitjobs.store"]
    source_id = store.create_job(SPEC, fingerprint="f" * 64)[0].id
    store.claim_next_job("node")
    publish_like_the_trainer(bucket_settings, source_id, tmp_path, b"source weights")
    store.transition(source_id, JobState.SUCCEEDED, "done", attempt=1, result={})
    reused, _ = store.create_job(SPEC, fingerprint="f" * 64, reuse_of=store.get_job(source_id))
    assert reused.reused_from == source_id
    assert bucket_client.get(f"/v1/jobs/{reused.id}/artifacts/model/tf_model.h5").data == b"source weights"
    assert bucket_client.get(f"/v1/jobs/{reused.id}/evaluation").get_json()["epoch"] == 2
    assert bucket_client.get(f"/v1/jobs/{reused.id}/model.tar.gz").status_code == 200
    continued = bucket_client.post("/v1/jobs", json={**SPEC, "model": {"job": source_id}})
    assert continued.status_code == 201, "a job whose model is in the bucket can be continued from"


def test_uploads_are_kept_in_the_bucket_and_deleted_there(bucket_client: FlaskClient,
                                                          bucket_settings: Settings) -> None:
    rows = "text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(20))
    created = bucket_client.post("/v1/datasets", data={"file": (io.BytesIO(rows.encode()), "rows.csv")})
    assert created.status_code == 201, created.get_json()
    dataset = created.get_json()
    assert dataset["rows"] == 20 and dataset["columns"] == ["text", "label"]
    storage = bucket_settings.storage
    key = f"{UPLOADS}/{dataset['id']}/data.csv"
    assert storage.read_bytes(key) == rows.encode()
    assert not (bucket_settings.uploads_dir / dataset["id"]).exists(), "the API's disk keeps no copy"
    assert bucket_client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    assert not storage.exists(key)


def test_an_unreachable_bucket_is_503_not_500(tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    # botocore's own variables: a store nobody listens at, asked once.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path / "home"), "FITJOBS_GPUS": "none",
                                  "FITJOBS_STORAGE_URL": f"s3://unreachable-{closed_port}/fitjobs"})
    app = create_app(settings, test_config={"TESTING": True})
    try:
        client = app.test_client()
        job_id = succeeded_job(app, client)
        for path in ("artifacts", "artifacts/model/config.json", "model.tar.gz", "evaluation"):
            response = client.get(f"/v1/jobs/{job_id}/{path}")
            assert response.status_code == 503 and response.mimetype == "application/problem+json", path
            assert "artifact store cannot be reached" in response.get_json()["detail"]
            assert response.headers["Retry-After"]
    finally:
        app.extensions["fitjobs.store"].engine.dispose()
