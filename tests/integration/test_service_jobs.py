"""The real service end to end: submit, train a tiny BERT, metrics, download, reload; failures; cancel."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.sentiment_data import sentiment_rows, tiny_job_spec, write_sentiment_files, write_table
from tests.support.service import RunningService, alive, descendants, start_service, trainer_pids
from tests.support.tensorboard_events import PUBLISHED, download_logdir, read_run

EPOCH_SERIES = {"loss", "accuracy", "val_loss", "val_accuracy"}


def tiny_spec(model_dir: Path, **hyper: Any) -> dict[str, Any]:
    return tiny_job_spec(model_dir, "sentiment", "val.jsonl", **hyper)


@pytest.fixture(scope="module")
def data_files(service: RunningService) -> Path:
    return write_sentiment_files(service.data_root / "sentiment", 240, 60, "val.jsonl")


def submit(service: RunningService, spec: dict[str, Any]) -> dict[str, Any]:
    response = service.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    return response.json()


def test_tiny_bert_trains_and_its_model_reloads(service: RunningService, tiny_model_dir: Path,
                                                data_files: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    job = submit(service, tiny_spec(tiny_model_dir, epochs=3))
    done = service.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    wall = time.monotonic() - started
    print(f"\ntiny BERT job through the API: {wall:.1f} s wall, result {done['result']}")
    assert done["state"] == "succeeded", done
    assert done["started_at"] and done["finished_at"] and done["error"] is None
    assert set(done["result"]) >= EPOCH_SERIES
    assert done["progress"]["epoch"] == 3 and done["progress"]["epochs"] == 3

    metrics = service.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2, 3]
    for row in metrics["epochs"]:
        assert EPOCH_SERIES <= set(row), row
    assert metrics["steps"] and all("loss" in row for row in metrics["steps"])
    # The result is the published epoch's: the one with the lowest val_loss.
    best = min(metrics["epochs"], key=lambda row: row["val_loss"])
    assert done["result"]["best_epoch"] == best["epoch"]
    assert best["val_loss"] == pytest.approx(done["result"]["val_loss"])
    assert all("learning_rate" in row for row in metrics["steps"])
    evaluation = service.get(f"/v1/jobs/{job['id']}/evaluation")
    assert evaluation.status_code == 200, evaluation.text
    assert evaluation.json() == done["result"]["evaluation"]
    assert evaluation.json()["rows"] == 60 and evaluation.json()["epoch"] == best["epoch"]

    artifacts = {a["name"]: a["size"] for a in service.get(f"/v1/jobs/{job['id']}/artifacts").json()["artifacts"]}
    assert {"metrics.json", "spec.json", "model/config.json"} <= set(artifacts)
    assert all(size > 0 for size in artifacts.values())
    saved_spec = json.loads(service.get(f"/v1/jobs/{job['id']}/artifacts/spec.json").content)
    assert saved_spec["model"] == str(tiny_model_dir)
    assert_tensorboard_logs_match_the_metrics(service, job["id"], metrics, best["epoch"], tmp_path / "logs")

    tarball = service.get(f"/v1/jobs/{job['id']}/model.tar.gz")
    assert tarball.status_code == 200 and tarball.headers["Content-Type"] == "application/gzip"
    model_dir = tmp_path / "downloaded"
    with tarfile.open(fileobj=io.BytesIO(tarball.content)) as tar:
        tar.extractall(model_dir, filter="data")
    script = (
        "import os, json, sys; os.environ['TF_USE_LEGACY_KERAS'] = '1'\n"
        "import tensorflow as tf\n"
        "from transformers import AutoTokenizer, TFAutoModelForSequenceClassification\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "model = TFAutoModelForSequenceClassification.from_pretrained(sys.argv[1])\n"
        "texts = json.loads(sys.argv[2])\n"
        "ids = tf.argmax(model(**tok(texts, padding=True, return_tensors='tf')).logits, -1).numpy()\n"
        "print(json.dumps({'labels': sorted(model.config.id2label.values()),"
        " 'predicted': [model.config.id2label[int(i)] for i in ids]}))\n")
    probe = [row["text"] for row in sentiment_rows(20, seed=99)]
    out = subprocess.run([sys.executable, "-c", script, str(model_dir), json.dumps(probe)],
                         capture_output=True, text=True, timeout=300, check=True)
    reloaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert reloaded["labels"] == ["negative", "positive"]
    assert set(reloaded["predicted"]) <= {"negative", "positive"} and len(reloaded["predicted"]) == 20

    states = [e["state"] for e in service.get(f"/v1/jobs/{job['id']}/events").json()["events"] if e["state"]]
    assert states == ["queued", "running", "succeeded"]
    assert "Epoch 3/3" in service.get(f"/v1/jobs/{job['id']}/logs").text


def assert_tensorboard_logs_match_the_metrics(service: RunningService, job_id: str, metrics: dict[str, Any],
                                              best_epoch: int, folder: Path) -> None:
    """The job's tensorboard/ artifacts, downloaded as a logdir, hold the series GET .../metrics reports."""
    assert download_logdir(service, job_id, folder) == PUBLISHED
    train, validation = read_run(folder / "tensorboard" / "train"), read_run(folder / "tensorboard" / "validation")
    # Event files hold float32 values; the metrics series keeps what the trainer measured.
    assert train.series("batch_loss") == {row["step"]: float(np.float32(row["loss"])) for row in metrics["steps"]}
    assert train.series("batch_learning_rate") == {row["step"]: float(np.float32(row["learning_rate"]))
                                                   for row in metrics["steps"]}
    assert sorted(train.series("batch_examples_per_second")) == [row["step"] for row in metrics["steps"]]
    for name in ("loss", "accuracy", "macro_f1"):
        assert train.series(f"epoch_{name}") == {row["epoch"]: float(np.float32(row[name]))
                                                 for row in metrics["epochs"]}
        assert validation.series(f"epoch_{name}") == {row["epoch"]: float(np.float32(row[f"val_{name}"]))
                                                      for row in metrics["epochs"]}
    assert [step for step, _ in validation.images["evaluation_confusion_matrix"]] == [best_epoch]


def test_missing_column_fails_as_invalid_data(service: RunningService, tiny_model_dir: Path,
                                             data_files: Path) -> None:
    spec = tiny_spec(tiny_model_dir)
    spec["data"]["text_column"] = "review_body"
    job = submit(service, spec)
    done = service.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=120)
    assert done["state"] == "failed"
    assert done["error"]["code"] == "invalid_data"
    assert "review_body" in done["error"]["message"]
    assert service.get(f"/v1/jobs/{job['id']}/artifacts").json()["artifacts"] == []
    assert service.get(f"/v1/jobs/{job['id']}/model.tar.gz").status_code == 404


def test_missing_model_fails_as_model_not_found(service: RunningService, data_files: Path,
                                                tmp_path: Path) -> None:
    job = submit(service, tiny_spec(tmp_path / "no-such-model"))
    done = service.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=120)
    assert done["state"] == "failed" and done["error"]["code"] == "model_not_found"
    assert "no-such-model" in done["error"]["message"]


def wait_until_fitting(service: RunningService, job_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = service.get(f"/v1/jobs/{job_id}").json()
        if job["state"] == "running" and job["progress"]["step"] > 0:
            return
        assert job["state"] in {"queued", "running"}, job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never started fitting")


def test_cancel_queued_and_running_jobs(service: RunningService, tiny_model_dir: Path,
                                        data_files: Path) -> None:
    long_job = submit(service, tiny_spec(tiny_model_dir, epochs=100, batch_size=2))
    queued = submit(service, tiny_spec(tiny_model_dir))  # waits behind the long job: one slot
    wait_until_fitting(service, long_job["id"])
    assert trainer_pids(long_job["id"]), "the running job has a trainer process"

    started = time.monotonic()
    response = service.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert service.post(f"/v1/jobs/{queued['id']}/cancel").json()["state"] == "cancelled"  # idempotent

    response = service.post(f"/v1/jobs/{long_job['id']}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"] is True
    done = service.wait_for_state(long_job["id"], {"cancelled", "failed", "succeeded"}, timeout=10)
    elapsed = time.monotonic() - started
    assert done["state"] == "cancelled", done
    assert elapsed < 10, elapsed
    assert trainer_pids(long_job["id"]) == []
    never_ran = service.get(f"/v1/jobs/{queued['id']}").json()
    assert never_ran["attempt"] == 0 and never_ran["started_at"] is None

    finished = service.post(f"/v1/jobs/{long_job['id']}/cancel")
    assert finished.status_code == 200 and finished.json()["state"] == "cancelled"


def test_a_killed_trainer_is_recorded_as_killed(service: RunningService, tiny_model_dir: Path,
                                                data_files: Path) -> None:
    spec = {**tiny_spec(tiny_model_dir, epochs=100, batch_size=2), "max_attempts": 1}
    job = submit(service, spec)
    wait_until_fitting(service, job["id"])
    for pid in trainer_pids(job["id"]):
        os.kill(pid, signal.SIGKILL)
    done = service.wait_for_state(job["id"], {"cancelled", "failed", "succeeded"}, timeout=30)
    assert done["state"] == "failed" and done["error"]["code"] == "killed"
    assert done["error"]["retryable"] is True and done["attempt"] == 1
    assert "SIGKILL" in done["error"]["message"]


def test_finished_job_cannot_be_cancelled(service: RunningService, data_files: Path, tmp_path: Path) -> None:
    job = submit(service, tiny_spec(tmp_path / "absent"))
    service.wait_for_state(job["id"], {"failed"}, timeout=120)
    response = service.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "failed" in response.json()["detail"]


def test_sigterm_stops_api_and_supervisor_and_requeues_the_running_job(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    own = start_service(tmp_path / "home")
    try:
        folder = own.data_root / "sentiment"
        folder.mkdir(parents=True)
        write_table(sentiment_rows(240, seed=3), folder / "train.csv")
        write_table(sentiment_rows(60, seed=4), folder / "val.jsonl")
        job = submit(own, tiny_spec(tiny_model_dir, epochs=100, batch_size=2))
        wait_until_fitting(own, job["id"])
        processes = descendants(own.process.pid)
        assert len(processes) >= 3, "serve runs an API, a supervisor and a trainer"
        assert own.stop(timeout=30) == 0
    finally:
        if own.process.poll() is None:
            own.process.kill()
    assert trainer_pids(job["id"]) == []
    assert alive(processes) == []
    from service.store import open_store

    store = open_store(f"sqlite:///{own.home / 'fitjobs.db'}", migrate=False)
    requeued = store.get_job(job["id"])
    assert requeued.state.value == "queued" and requeued.attempt == 1 and requeued.attempts_spent == 0
    assert "queued again" in store.list_events(job["id"])[-1].message
    store.engine.dispose()


MALFORMED = [
    ("missing model", {"json": {"data": {"train": {"records": [{"text": "a", "label": "x"}]}}}}, 422, "model"),
    ("epochs zero", {"json": {"model": "m", "data": {"train": {"path": "a.csv"}}, "hyperparameters": {"epochs": 0}}},
     422, "hyperparameters.epochs"),
    ("batch_size string", {"json": {"model": "m", "data": {"train": {"path": "a.csv"}},
                                    "hyperparameters": {"batch_size": "x"}}}, 422, "hyperparameters.batch_size"),
    ("unknown top-level field", {"json": {"model": "m", "data": {"train": {"path": "a.csv"}}, "gpus": 8}}, 422, "gpus"),
    ("unknown nested field", {"json": {"model": "m", "data": {"train": {"path": "a.csv", "format": "csv"}}}},
     422, "data.train.format"),
    ("non-JSON body", {"data": "{'model': 'm'", "headers": {"Content-Type": "application/json"}}, 400, "JSON"),
    ("empty body", {"data": "", "headers": {"Content-Type": "application/json"}}, 400, "empty"),
    ("wrong content type", {"data": "model=m", "headers": {"Content-Type": "text/plain"}}, 415, "application/json"),
    ("huge max_length", {"json": {"model": "m", "data": {"train": {"path": "a.csv"}},
                                  "hyperparameters": {"max_length": 1_000_000}}}, 422, "hyperparameters.max_length"),
    ("path outside the data root", {"json": {"model": "m", "data": {"train": {"path": "../../../etc/passwd"}}}},
     422, "data.train.path"),
]


@pytest.mark.parametrize("name,request_kwargs,status,named", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_requests_get_problem_json_from_the_live_server(
        service: RunningService, name: str, request_kwargs: dict, status: int, named: str) -> None:
    response = service.post("/v1/jobs", **request_kwargs)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["title"] and problem["type"]
    assert named in problem["detail"] or named in problem.get("errors", {}), problem
    assert "Traceback" not in response.text


def test_a_model_below_its_acceptance_minimum_fails_and_keeps_its_evaluation(
        service: RunningService, tiny_model_dir: Path, data_files: Path) -> None:
    # One epoch at a tiny rate cannot separate the classes perfectly.
    spec = tiny_spec(tiny_model_dir, epochs=1, learning_rate=1e-6)
    spec["acceptance"] = {"metric": "val_macro_f1", "min": 0.99}
    job = submit(service, spec)
    done = service.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    assert done["state"] == "failed", done
    assert done["error"]["code"] == "below_threshold" and done["error"]["retryable"] is False
    assert "val_macro_f1" in done["error"]["message"]
    check = done["result"]["acceptance"]
    assert check["passed"] is False and check["value"] < 0.99 and check["metric"] == "val_macro_f1"
    evaluation = service.get(f"/v1/jobs/{job['id']}/evaluation")
    assert evaluation.status_code == 200
    assert evaluation.json()["macro_f1"] == pytest.approx(check["value"])
    assert set(evaluation.json()["per_class"]) == {"negative", "positive"}
    # The model is kept for inspection.
    names = {a["name"] for a in service.get(f"/v1/jobs/{job['id']}/artifacts").json()["artifacts"]}
    assert {"evaluation.json", "model/config.json", "model/tf_model.h5", *PUBLISHED} <= names
    assert service.get(f"/v1/jobs/{job['id']}/model.tar.gz").status_code == 200
