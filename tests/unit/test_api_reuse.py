"""POST /v1/jobs with `reuse` over a real SQLite store and real files: reused, queued, idempotent, unreadable."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.config import Settings
from service.jobs import JobState, MetricPoint, Progress
from service.store import JobStore

SPEC: dict[str, Any] = {"model": "bert-base-uncased", "data": {"train": {"path": "reviews/train.csv"}},
                        "hyperparameters": {"epochs": 1}}
RESULT = {"loss": 0.3, "accuracy": 0.9, "val_loss": 0.4, "val_accuracy": 0.85}


def store_of(app: Flask) -> JobStore:
    return app.extensions["fitjobs.store"]


@pytest.fixture
def data_file(settings: Settings) -> Path:
    path = settings.data_root / "reviews" / "train.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("text,label\ngood film,pos\nbad film,neg\n")
    return path


def finish_as_a_worker_would(app: Flask, settings: Settings, job_id: str) -> None:
    """Stands in for the supervisor and trainer (tested in tests/integration): claim, record, publish, succeed."""
    store = store_of(app)
    claimed = store.claim_next_job("test-node")
    assert claimed is not None and claimed.id == job_id
    store.record_progress(job_id, 1, Progress(epoch=1, epochs=1, step=2, steps_per_epoch=2),
                          [MetricPoint("loss", 0.5, 1, 1), MetricPoint("loss", 0.3, 1, 2),
                           *(MetricPoint(name, value, 1) for name, value in RESULT.items())])
    model = settings.artifacts_dir / job_id / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "bert"}')
    (model / "tf_model.h5").write_bytes(b"weights" * 100)
    (settings.artifacts_dir / job_id / "metrics.json").write_text("{}")
    store.transition(job_id, JobState.SUCCEEDED, "Training finished.", attempt=1, result=RESULT)


def submit(client: FlaskClient, spec: dict[str, Any], **headers: str) -> tuple[int, dict[str, Any]]:
    response = client.post("/v1/jobs", json=spec, headers=headers)
    return response.status_code, response.get_json()


@pytest.fixture
def trained(app: Flask, client: FlaskClient, settings: Settings, data_file: Path) -> str:
    """The id of a succeeded job on SPEC."""
    status, job = submit(client, SPEC)
    assert status == 201 and job["state"] == "queued" and job["reused_from"] is None
    finish_as_a_worker_would(app, settings, job["id"])
    return job["id"]


def test_identical_spec_with_reuse_succeeds_at_once_with_the_sources_files(
        client: FlaskClient, trained: str) -> None:
    status, job = submit(client, {**SPEC, "reuse": True, "priority": 5, "max_attempts": 1})
    assert status == 201, job
    assert job["state"] == "succeeded" and job["reused_from"] == trained and job["id"] != trained
    assert job["result"] == RESULT and job["attempt"] == 0 and job["spec"]["reuse"] is True
    assert client.get(f"/v1/jobs/{job['id']}").get_json()["reused_from"] == trained
    listed = {j["id"]: j["reused_from"] for j in client.get("/v1/jobs").get_json()["jobs"]}
    assert listed == {job["id"]: trained, trained: None}

    events = client.get(f"/v1/jobs/{job['id']}/events").get_json()["events"]
    assert [(e["kind"], e["state"]) for e in events] == [("reused", None), ("state", "succeeded")]
    assert events[0]["data"] == {"source_job": trained}

    source_files = client.get(f"/v1/jobs/{trained}/artifacts").get_json()
    assert client.get(f"/v1/jobs/{job['id']}/artifacts").get_json() == source_files
    assert {a["name"] for a in source_files["artifacts"]} == {"metrics.json", "model/config.json",
                                                              "model/tf_model.h5"}
    weights = client.get(f"/v1/jobs/{job['id']}/artifacts/model/tf_model.h5")
    assert weights.status_code == 200 and weights.data == b"weights" * 100
    assert client.get(f"/v1/jobs/{job['id']}/artifacts/nope.txt").status_code == 404
    tarball = client.get(f"/v1/jobs/{job['id']}/model.tar.gz")
    assert tarball.status_code == 200 and job["id"] in tarball.headers["Content-Disposition"]
    with tarfile.open(fileobj=io.BytesIO(tarball.data)) as tar:
        assert sorted(tar.getnames()) == ["config.json", "tf_model.h5"]

    metrics = client.get(f"/v1/jobs/{job['id']}/metrics").get_json()
    assert metrics == client.get(f"/v1/jobs/{trained}/metrics").get_json()
    assert metrics["epochs"][0]["val_accuracy"] == RESULT["val_accuracy"]


def test_a_reused_job_cannot_be_cancelled(client: FlaskClient, trained: str) -> None:
    _, job = submit(client, {**SPEC, "reuse": True})
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409 and "succeeded" in response.get_json()["detail"]


def test_without_reuse_an_identical_spec_trains_again(client: FlaskClient, trained: str) -> None:
    status, job = submit(client, SPEC)
    assert status == 201 and job["state"] == "queued" and job["reused_from"] is None
    assert job["spec"]["reuse"] is False, "reuse is off unless asked for"
    status, job = submit(client, {**SPEC, "reuse": False})
    assert status == 201 and job["state"] == "queued"


def test_a_changed_byte_in_the_data_file_trains(client: FlaskClient, trained: str, data_file: Path) -> None:
    data_file.write_text(data_file.read_text().replace("good film", "good filn"))
    status, job = submit(client, {**SPEC, "reuse": True})
    assert status == 201 and job["state"] == "queued" and job["reused_from"] is None


def test_other_hyperparameters_train(client: FlaskClient, trained: str) -> None:
    status, job = submit(client, {**SPEC, "reuse": True, "hyperparameters": {"epochs": 2}})
    assert status == 201 and job["state"] == "queued"


def test_a_source_without_published_files_is_not_reused(client: FlaskClient, settings: Settings,
                                                        trained: str) -> None:
    (settings.artifacts_dir / trained).rename(settings.artifacts_dir / "moved-away")
    status, job = submit(client, {**SPEC, "reuse": True})
    assert status == 201 and job["state"] == "queued" and job["reused_from"] is None


def test_idempotency_key_returns_the_same_reused_job(client: FlaskClient, trained: str) -> None:
    spec = {**SPEC, "reuse": True}
    first = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "reuse-1"})
    again = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "reuse-1"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"] and again.get_json()["reused_from"] == trained
    other = client.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "reuse-1"})
    assert other.status_code == 409, "the same key without reuse is another spec"


def test_reuse_must_be_a_json_boolean(client: FlaskClient, data_file: Path) -> None:
    response = client.post("/v1/jobs", json={**SPEC, "reuse": "yes"})
    assert response.status_code == 422 and "reuse" in response.get_json()["errors"]


def test_unreadable_data_is_answered_as_before(app: Flask, client: FlaskClient, trained: str) -> None:
    # A missing file is the trainer's invalid_data to report, as it was before fingerprints.
    status, job = submit(client, {**SPEC, "reuse": True, "data": {"train": {"path": "reviews/missing.csv"}}})
    assert status == 201 and job["state"] == "queued"
    assert store_of(app).get_job(job["id"]).fingerprint is None
    response = client.post("/v1/jobs", json={**SPEC, "reuse": True, "data": {"train": {"path": "/etc/passwd"}}})
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    assert "data.train.path" in response.get_json()["errors"]


def test_every_job_is_fingerprinted_so_a_later_reuse_finds_it(app: Flask, client: FlaskClient,
                                                              trained: str) -> None:
    store = store_of(app)
    source = store.get_job(trained)
    assert source.fingerprint is not None and len(source.fingerprint) == 64
    _, job = submit(client, {**SPEC, "priority": 3})
    assert store.get_job(job["id"]).fingerprint == source.fingerprint


def test_continuing_from_a_reused_job_names_the_job_that_trained(client: FlaskClient, trained: str) -> None:
    _, reused = submit(client, {**SPEC, "reuse": True})
    response = client.post("/v1/jobs", json={**SPEC, "model": {"job": reused["id"]}})
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    [message] = response.get_json()["errors"]["model.job"]
    assert f'{{"job": "{trained}"}}' in message
    assert client.post("/v1/jobs", json={**SPEC, "model": {"job": trained}}).status_code == 201
