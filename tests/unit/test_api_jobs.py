"""The jobs API over a real SQLite store: listing, paging, idempotency, cancel, metrics, outages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.api import create_app
from service.config import ConfigError, Settings
from service.jobs import PHASE_METRIC, JobError, JobState, MetricPoint, Progress
from service.store import JobStore
from tests.support.service import free_port

SPEC = {"model": "bert-base-uncased", "data": {"train": {"records": [{"text": "a", "label": "x"}]}}}


def store_of(app: Flask) -> JobStore:
    return app.extensions["fitjobs.store"]


def test_list_pages_newest_first_and_filters_by_state(client: FlaskClient) -> None:
    ids = [client.post("/v1/jobs", json=SPEC).get_json()["id"] for _ in range(5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    seen, cursor = [], None
    while True:
        page = client.get("/v1/jobs", query_string={"limit": 2, **({"cursor": cursor} if cursor else {})}).get_json()
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    cancelled = client.get("/v1/jobs?state=cancelled").get_json()["jobs"]
    assert [job["id"] for job in cancelled] == [ids[0]]
    assert client.get("/v1/jobs?limit=0").status_code == 422
    assert client.get("/v1/jobs?limit=500").status_code == 422


def test_idempotency_key(client: FlaskClient) -> None:
    first = client.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "order-17"})
    again = client.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    other = client.post("/v1/jobs", json={**SPEC, "model": "roberta-base"}, headers={"Idempotency-Key": "order-17"})
    assert other.status_code == 409 and other.mimetype == "application/problem+json"
    assert other.get_json()["job_id"] == first.get_json()["id"]
    assert len(client.get("/v1/jobs").get_json()["jobs"]) == 1
    too_long = client.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "k" * 300})
    assert too_long.status_code == 422 and "Idempotency-Key" in too_long.get_json()["errors"]


def test_priority_and_max_attempts_are_validated_and_shown(client: FlaskClient) -> None:
    job = client.post("/v1/jobs", json={**SPEC, "priority": 7, "max_attempts": 2}).get_json()
    assert (job["priority"], job["max_attempts"]) == (7, 2)
    assert client.post("/v1/jobs", json={**SPEC, "priority": 1000}).status_code == 422
    assert client.post("/v1/jobs", json={**SPEC, "max_attempts": 0}).status_code == 422


def test_cancel_of_running_job_flags_it_and_finished_job_conflicts(app: Flask, client: FlaskClient) -> None:
    job_id = client.post("/v1/jobs", json=SPEC).get_json()["id"]
    store_of(app).claim_next_job("node")
    flagged = client.post(f"/v1/jobs/{job_id}/cancel").get_json()
    assert flagged["state"] == "running" and flagged["cancel_requested"] is True
    assert client.post("/v1/jobs/job_nope/cancel").status_code == 404


def test_metrics_are_grouped_per_epoch_and_step(app: Flask, client: FlaskClient) -> None:
    job_id = client.post("/v1/jobs", json=SPEC).get_json()["id"]
    store = store_of(app)
    store.claim_next_job("node")
    store.record_progress(job_id, 1, Progress(epoch=1, epochs=2, step=2, steps_per_epoch=2), [
        MetricPoint("loss", 0.9, 1, 1), MetricPoint("loss", 0.7, 1, 2),
        MetricPoint("loss", 0.8, 1), MetricPoint("accuracy", 0.5, 1),
        MetricPoint("val_loss", 0.75, 1), MetricPoint("val_accuracy", 0.6, 1),
        MetricPoint(f"{PHASE_METRIC}data", 1.5, 0), MetricPoint(f"{PHASE_METRIC}tokenize", 0.25, 0)])
    metrics = client.get(f"/v1/jobs/{job_id}/metrics").get_json()
    assert metrics["epochs"] == [{"epoch": 1, "loss": 0.8, "accuracy": 0.5, "val_loss": 0.75, "val_accuracy": 0.6}]
    assert metrics["steps"] == [{"step": 1, "epoch": 1, "loss": 0.9}, {"step": 2, "epoch": 1, "loss": 0.7}]
    assert metrics["phases"] == {"data": 1.5, "tokenize": 0.25}
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["progress"] == {"epoch": 1, "epochs": 2, "step": 2, "steps_per_epoch": 2,
                               "examples_per_second": None, "eta_seconds": None, "step_seconds": None}


def test_unknown_job_is_404_everywhere(client: FlaskClient) -> None:
    for path in ("", "/metrics", "/events", "/logs", "/artifacts", "/artifacts/model/config.json",
                 "/model.tar.gz"):
        response = client.get(f"/v1/jobs/job_missing{path}")
        assert response.status_code == 404, path
        assert response.mimetype == "application/problem+json"


def test_queued_job_has_no_model_yet(client: FlaskClient) -> None:
    job_id = client.post("/v1/jobs", json=SPEC).get_json()["id"]
    response = client.get(f"/v1/jobs/{job_id}/model.tar.gz")
    assert response.status_code == 404 and "queued" in response.get_json()["detail"]
    assert client.get(f"/v1/jobs/{job_id}/artifacts").get_json() == {"artifacts": []}
    assert client.get(f"/v1/jobs/{job_id}/logs").get_data(as_text=True) == ""


def test_database_outage_is_503_problem_and_not_ready(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: the database is "down"
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path),
                                  "FITJOBS_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{port}/x"})
    client = create_app(settings, migrate=False).test_client()
    for response in (client.get("/v1/jobs"), client.post("/v1/jobs", json=SPEC), client.get("/readyz")):
        assert response.status_code == 503, response.get_data(as_text=True)
        assert response.mimetype == "application/problem+json"
        assert "Traceback" not in response.get_data(as_text=True)
    assert client.get("/healthz").status_code == 200


def test_gpu_requests_beyond_every_registered_worker_are_refused(app: Flask, client: FlaskClient) -> None:
    # No worker registered yet: the job waits for one (workers may be scaled from the queue).
    waiting = client.post("/v1/jobs", json={**SPEC, "resources": {"gpus": 8}})
    assert waiting.status_code == 201
    assert client.get(f"/v1/jobs/{waiting.get_json()['id']}").get_json()["queue"] == {
        "position": 0, "reason": "waiting_for_worker"}
    store_of(app).register_worker("node-a", "host-a", gpus=4, slots=4)
    assert client.post("/v1/jobs", json={**SPEC, "resources": {"gpus": 4}}).status_code == 201
    too_many = client.post("/v1/jobs", json={**SPEC, "resources": {"gpus": 8}})
    assert too_many.status_code == 422
    assert "largest has 4" in too_many.get_json()["errors"]["resources.gpus"][0]
    assert client.post("/v1/jobs", json={**SPEC, "resources": {"gpus": 0}}).status_code == 201
    assert client.post("/v1/jobs", json={**SPEC, "resources": {"gpus": 99}}).status_code == 422
    assert client.post("/v1/jobs", json={**SPEC, "resources": {"cpus": 2}}).status_code == 422


def test_declared_gpu_sizes_are_accepted_without_workers_and_others_refused(tmp_path: Path) -> None:
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path), "FITJOBS_GPUS": "none",
                                  "FITJOBS_GPU_SIZES": "4,1,2"})
    assert settings.gpu_sizes == (1, 2, 4)
    app = create_app(settings, test_config={"TESTING": True})
    client = app.test_client()
    try:
        accepted = client.post("/v1/jobs", json={**SPEC, "resources": {"gpus": 4}})
        assert accepted.status_code == 201
        assert client.get(f"/v1/jobs/{accepted.get_json()['id']}").get_json()["queue"]["reason"] == \
            "waiting_for_worker"
        store_of(app).register_worker("node-a", "host-a", gpus=1, slots=1)
        # A declared size is accepted even though the only live worker is smaller.
        assert client.post("/v1/jobs", json={**SPEC, "resources": {"gpus": 2}}).status_code == 201
        refused = client.post("/v1/jobs", json={**SPEC, "resources": {"gpus": 3}})
        assert refused.status_code == 422 and refused.mimetype == "application/problem+json"
        assert "1, 2, 4 GPU(s), not 3" in refused.get_json()["errors"]["resources.gpus"][0]
        assert client.post("/v1/jobs:validate", json={**SPEC, "resources": {"gpus": 8}}).status_code == 422
    finally:
        store_of(app).engine.dispose()


def test_gpu_types_are_checked_against_the_pattern_the_offer_and_the_gpu_count(tmp_path: Path) -> None:
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path), "FITJOBS_GPUS": "none",
                                  "FITJOBS_GPU_TYPES": "h100, a100-80gb"})
    assert settings.gpu_types == ("a100-80gb", "h100")
    app = create_app(settings, test_config={"TESTING": True})
    client = app.test_client()
    try:
        made = client.post("/v1/jobs", json={**SPEC, "resources": {"gpus": 2, "gpu_type": "h100"}})
        assert made.status_code == 201
        job = client.get(f"/v1/jobs/{made.get_json()['id']}").get_json()
        assert job["spec"]["resources"] == {"gpus": 2, "gpu_type": "h100"}
        assert store_of(app).get_job(job["id"]).gpu_type == "h100"
        # Only a worker of its type counts as able to run it.
        store_of(app).register_worker("plain", "host", gpus=8, slots=8)
        assert job_queue(client, job["id"]) == {"position": 0, "reason": "no_worker_large_enough"}
        store_of(app).register_worker("typed", "host", gpus=2, slots=2, gpu_type="h100")
        assert job_queue(client, job["id"]) == {"position": 0, "reason": "waiting_for_gpus"}
        for resources, field in (({"gpus": 1, "gpu_type": "v100"}, "resources.gpu_type"),
                                 ({"gpus": 1, "gpu_type": "h100'; --"}, "resources"),
                                 ({"gpus": 0, "gpu_type": "h100"}, "resources")):
            refused = client.post("/v1/jobs", json={**SPEC, "resources": resources})
            assert refused.status_code == 422 and refused.mimetype == "application/problem+json", resources
            assert any(name.startswith(field) for name in refused.get_json()["errors"]), refused.get_json()
    finally:
        store_of(app).engine.dispose()


@pytest.mark.parametrize("value", ["1,x", "32", "-1", "1.5"])
def test_gpu_sizes_setting_rejects_what_is_not_a_list_of_counts(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="FITJOBS_GPU_SIZES"):
        Settings.from_env({"FITJOBS_HOME": str(tmp_path), "FITJOBS_GPU_SIZES": value})


def job_queue(client: FlaskClient, job_id: str) -> dict[str, Any] | None:
    queue: dict[str, Any] | None = client.get(f"/v1/jobs/{job_id}").get_json()["queue"]
    return queue


def test_prometheus_metrics_count_jobs_by_state_and_workers(app: Flask, client: FlaskClient) -> None:
    for _ in range(3):
        client.post("/v1/jobs", json=SPEC)
    store_of(app).claim_next_job("n")
    store_of(app).register_worker("n", "host", gpus=2, slots=2)
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert 'fitjobs_jobs{priority="0",state="queued"} 2.0' in text
    assert 'fitjobs_jobs{priority="0",state="running"} 1.0' in text
    assert 'fitjobs_jobs{priority="0",state="failed"} 0.0' in text
    assert "fitjobs_workers 1.0" in text and "fitjobs_worker_gpus 2.0" in text
    # Two queued jobs without a GPU request count as one GPU each.
    assert 'fitjobs_queue_depth{gpu_type="",gpus="1"} 2.0' in text
    client.post("/v1/jobs", json={**SPEC, "resources": {"gpus": 2}})
    client.post("/v1/jobs", json={**SPEC, "resources": {"gpus": 2, "gpu_type": "h100"}})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'fitjobs_queue_depth{gpu_type="",gpus="2"} 1.0' in text
    assert 'fitjobs_queue_depth{gpu_type="",gpus="1"} 2.0' in text
    assert 'fitjobs_queue_depth{gpu_type="h100",gpus="2"} 1.0' in text


def test_events_stream_as_server_sent_events_until_the_job_ends(app: Flask, client: FlaskClient) -> None:
    job_id = client.post("/v1/jobs", json=SPEC).get_json()["id"]
    store = store_of(app)
    store.claim_next_job("n")
    store.transition(job_id, JobState.FAILED, "boom", attempt=1, error=JobError("internal", "boom"))
    response = client.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    frames = [frame for frame in response.get_data(as_text=True).split("\n\n") if frame]
    kinds = [line.split(": ", 1)[1] for frame in frames for line in frame.splitlines() if line.startswith("event:")]
    assert kinds == ["state", "state", "state"]
    last = json.loads(frames[-1].split("data: ", 1)[1])
    assert last["state"] == "failed" and last["message"] == "boom"
    resumed = client.get(f"/v1/jobs/{job_id}/events",
                         headers={"Accept": "text/event-stream", "Last-Event-ID": frames[0].split("\n")[0][4:]})
    assert resumed.get_data(as_text=True).count("event: state") == 2
    plain = client.get(f"/v1/jobs/{job_id}/events?after=1").get_json()["events"]
    assert [event["state"] for event in plain] == ["running", "failed"]


def labelled_spec(settings: Settings, labels: list[Any], **extra: Any) -> dict[str, Any]:
    """A spec with inline rows of ``labels`` (in turn) and a model folder under a model root.

    The folder does not exist: the dry run reports that as a problem of its own, which
    POST /v1/jobs leaves for the job, and never goes to the Hub for it.
    """
    rows = [{"text": f"row {index}", "label": labels[index % len(labels)]} for index in range(12)]
    return {"model": str(settings.home / "models" / "not-there"), "data": {"train": {"records": rows}}, **extra}


def test_class_weight_labels_are_checked_against_the_training_labels(client: FlaskClient,
                                                                     settings: Settings) -> None:
    refused = client.post("/v1/jobs", json=labelled_spec(settings, ["pos", "neg"], hyperparameters={
        "class_weight": {"pos": 2, "positive": 1}}))
    assert refused.status_code == 422 and refused.mimetype == "application/problem+json"
    assert refused.get_json()["errors"] == {
        "hyperparameters.class_weight": ["Unknown label 'positive'; the training labels are: neg, pos."]}
    assert client.get("/v1/jobs").get_json()["jobs"] == [], "a refused spec queues nothing"
    numbered = client.post("/v1/jobs", json=labelled_spec(settings, [0, 1], hyperparameters={
        "class_weight": {"0": 1, "1": 3.5}}))
    assert numbered.status_code == 201, numbered.get_json()
    assert numbered.get_json()["spec"]["hyperparameters"]["class_weight"] == {"0": 1.0, "1": 3.5}
    report = client.post("/v1/jobs:validate", json=labelled_spec(settings, [0, 1], hyperparameters={
        "class_weight": {"2": 1}})).get_json()["report"]
    assert ["class_weight", "model_not_found"] == sorted(problem["check"] for problem in report["problems"])


def test_roc_auc_acceptance_for_more_than_two_labels_is_422(client: FlaskClient, settings: Settings) -> None:
    bar = {"metric": "val_roc_auc", "min": 0.9}
    refused = client.post("/v1/jobs", json=labelled_spec(settings, ["a", "b", "c"], acceptance=bar))
    assert refused.status_code == 422 and list(refused.get_json()["errors"]) == ["acceptance.metric"]
    assert "two labels only" in refused.get_json()["errors"]["acceptance.metric"][0]
    assert client.post("/v1/jobs", json=labelled_spec(settings, ["a", "b"], acceptance=bar)).status_code == 201
