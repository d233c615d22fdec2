"""GET /v1/jobs/{id}/evaluation, and the published files of a job that failed its acceptance threshold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask
from flask.testing import FlaskClient

from service.config import Settings
from service.jobs import FailureCode, JobError, JobState
from service.store import JobStore
from service.trainer.evaluation import evaluation_report

SPEC = {"model": "bert-base-uncased", "data": {"train": {"records": [{"text": "a", "label": "x"}]}}}


def store_of(app: Flask) -> JobStore:
    return app.extensions["fitjobs.store"]


def a_report() -> dict[str, Any]:
    """The report the trainer writes, made by the trainer's own code from a few predictions."""
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.95, 0.05]])
    return evaluation_report(np.array([0, 1, 1, 1, 0]), probabilities, {0: "negative", 1: "positive"},
                             ["dull", "great", "fine I guess", "lovely", "boring"],
                             ["q1", "q2", "q3", "q4", "q5"], epoch=2)


def publish(settings: Settings, job_id: str, report: dict[str, Any]) -> Path:
    """Lay out a job's published folder the way the trainer leaves it: model, metrics and report."""
    folder = settings.artifacts_dir / job_id
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text('{"model_type": "bert"}')
    (folder / "metrics.json").write_text("{}")
    (folder / "evaluation.json").write_text(json.dumps(report, indent=2))
    return folder


def test_the_report_is_404_until_published_then_served_whole(app: Flask, client: FlaskClient,
                                                             settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json=SPEC).get_json()["id"]
    queued = client.get(f"/v1/jobs/{job_id}/evaluation")
    assert queued.status_code == 404 and queued.mimetype == "application/problem+json"
    assert queued.get_json()["detail"] == f"Job {job_id} is queued; it has no evaluation yet."
    store = store_of(app)
    store.claim_next_job("node")
    assert client.get(f"/v1/jobs/{job_id}/evaluation").get_json()["detail"] == \
        f"Job {job_id} is running; it has no evaluation yet."
    report = a_report()
    publish(settings, job_id, report)
    store.transition(job_id, JobState.SUCCEEDED, "done", attempt=1, result={"val_macro_f1": report["macro_f1"]})
    response = client.get(f"/v1/jobs/{job_id}/evaluation")
    assert response.status_code == 200 and response.mimetype == "application/json"
    served = response.get_json()
    assert served == json.loads(json.dumps(report)), "every field of the report passes the schema"
    assert served["confusion_matrix"] == {"labels": ["negative", "positive"], "matrix": [[2, 0], [1, 2]]}
    assert served["most_confident_errors"] == [{"row": 3, "text": "fine I guess", "text_pair": "q3",
                                                "true_label": "positive", "predicted_label": "negative",
                                                "probability": 0.7}]
    assert served["metrics"]["val_accuracy"] == 0.8 and served["epoch"] == 2
    assert served["per_class"]["positive"]["support"] == 3


def test_a_job_below_its_threshold_keeps_its_result_report_and_model(app: Flask, client: FlaskClient,
                                                                     settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json={**SPEC, "acceptance": {"metric": "val_macro_f1", "min": 0.95}}).get_json()[
        "id"]
    store = store_of(app)
    store.claim_next_job("node")
    report = a_report()
    publish(settings, job_id, report)
    acceptance = {"metric": "val_macro_f1", "min": 0.95, "value": report["macro_f1"], "passed": False}
    code = FailureCode.BELOW_THRESHOLD
    store.transition(job_id, JobState.FAILED, "below", attempt=1,
                     error=JobError(code.value, "val_macro_f1 is below 0.95.", code.retryable),
                     result={"best_epoch": 2, "evaluation": report, "acceptance": acceptance})
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["state"] == "failed" and job["error"]["code"] == "below_threshold" and not job["error"]["retryable"]
    assert job["result"]["acceptance"] == acceptance and job["result"]["best_epoch"] == 2
    assert client.get(f"/v1/jobs/{job_id}/evaluation").get_json()["macro_f1"] == report["macro_f1"]
    listed = {a["name"] for a in client.get(f"/v1/jobs/{job_id}/artifacts").get_json()["artifacts"]}
    assert listed == {"evaluation.json", "metrics.json", "model/config.json"}
    assert client.get(f"/v1/jobs/{job_id}/artifacts/model/config.json").status_code == 200
    assert client.get(f"/v1/jobs/{job_id}/model.tar.gz").status_code == 200


def test_a_failed_job_without_a_report_and_a_reused_job(app: Flask, client: FlaskClient,
                                                        settings: Settings) -> None:
    store = store_of(app)
    failed_id = client.post("/v1/jobs", json=SPEC).get_json()["id"]
    store.claim_next_job("node")
    store.transition(failed_id, JobState.FAILED, "bad", attempt=1, error=JobError("invalid_data", "bad"))
    assert client.get(f"/v1/jobs/{failed_id}/evaluation").get_json()["detail"] == \
        f"Job {failed_id} is failed; it has no evaluation."
    fingerprint = "f" * 64
    source_id = store.create_job(SPEC, fingerprint=fingerprint)[0].id
    store.claim_next_job("node")
    publish(settings, source_id, a_report())
    store.transition(source_id, JobState.SUCCEEDED, "done", attempt=1, result={})
    reused, _ = store.create_job(SPEC, fingerprint=fingerprint, reuse_of=store.get_job(source_id))
    assert reused.reused_from == source_id
    assert client.get(f"/v1/jobs/{reused.id}/evaluation").get_json()["epoch"] == 2
