"""Batch prediction jobs through a real `fitjobs serve`: 20,000 rows, a kill -9 halfway, cancel, bad input."""

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

import pytest

from service.client import FitjobsClient
from tests.support.sentiment_data import sentiment_rows, tiny_job_spec, write_sentiment_files, write_table
from tests.support.service import RunningService, trainer_pids

ROWS = 20_000
PROBLEM = "application/problem+json"
TERMINAL = {"succeeded", "failed", "cancelled"}
RELOAD = (
    "import os, json, sys; os.environ['TF_USE_LEGACY_KERAS'] = '1'\n"
    "import tensorflow as tf\n"
    "from transformers import AutoTokenizer, TFAutoModelForSequenceClassification\n"
    "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
    "model = TFAutoModelForSequenceClassification.from_pretrained(sys.argv[1])\n"
    "texts = json.loads(sys.argv[2])\n"
    "logits = model(**tok(texts, padding=True, truncation=True, max_length=32, return_tensors='tf')).logits\n"
    "print(json.dumps(tf.nn.softmax(logits, -1).numpy().tolist()))\n")


@pytest.fixture(scope="module")
def trained(service: RunningService, tiny_model_dir: Path) -> str:
    """A succeeded tiny BERT job to predict with."""
    write_sentiment_files(service.data_root / "sentiment", 160, 40, "val.jsonl")
    job = service.post("/v1/jobs", json=tiny_job_spec(tiny_model_dir, "sentiment", "val.jsonl", epochs=1)).json()
    assert service.wait_for_state(job["id"], TERMINAL, timeout=300)["state"] == "succeeded"
    return str(job["id"])


def wait_for(service: RunningService, job_id: str, done: Any, timeout: float) -> dict[str, Any]:
    """Poll GET /v1/predictions/{id} until ``done(prediction)``; fail with the job's log otherwise."""
    deadline = time.monotonic() + timeout
    prediction: dict[str, Any] = {}
    while time.monotonic() < deadline:
        prediction = service.get(f"/v1/predictions/{job_id}").json()
        if done(prediction):
            return prediction
        time.sleep(0.1)
    raise AssertionError(f"{job_id}: {prediction}\n{service.get(f'/v1/jobs/{job_id}/logs').text[-3000:]}")


def submit(service: RunningService, spec: dict[str, Any]) -> dict[str, Any]:
    answer = service.post("/v1/predictions", json=spec)
    assert answer.status_code == 201, answer.text
    assert answer.headers["Location"] == f"/v1/predictions/{answer.json()['id']}"
    return dict(answer.json())


def test_20000_rows_stream_through_and_a_kill_9_halfway_goes_on_without_duplicates(
        service: RunningService, trained: str, tmp_path: Path) -> None:
    rows = sentiment_rows(ROWS, seed=11)
    write_table(rows, service.data_root / "predict" / "rows.csv")
    # Small batches keep each 2,048-row chunk long enough to be caught halfway.
    queued = submit(service, {"job": trained, "data": {"path": "predict/rows.csv"}, "batch_size": 8})
    assert queued["state"] == "queued" and queued["output_url"] is None
    assert queued["spec"]["max_length"] == 32, "the training job's max_length is the default"

    running = wait_for(service, queued["id"], lambda p: p["state"] == "running" and 2 <= p["progress"]["step"] < 8,
                       timeout=300)
    [trainer] = trainer_pids(queued["id"])
    os.kill(trainer, signal.SIGKILL)
    print(f"\nkilled the predicting trainer at chunk {running['progress']['step']} of "
          f"{running['progress']['steps_per_epoch']}")
    done = wait_for(service, queued["id"], lambda p: p["state"] in TERMINAL, timeout=600)
    assert done["state"] == "succeeded", done
    result = done["result"]
    assert done["attempt"] == 2
    assert result["rows"] == ROWS and result["labels"] == ["negative", "positive"]
    assert 2 * 2048 <= result["resumed_from_row"] < ROWS and result["resumed_from_row"] % 2048 == 0
    assert 0 < result["peak_rss_bytes"] < 4 * 2**30
    print(f"20,000 rows: {result['examples_per_second']} rows/s after the restart, "
          f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB, went on from row {result['resumed_from_row']}")
    kinds = [event["kind"] for event in service.get(f"/v1/jobs/{queued['id']}/events").json()["events"]]
    assert "predictions_resumed" in kinds and kinds.count("predictions_published") == 1

    output = service.get(done["output_url"])
    assert output.status_code == 200, output.text
    lines = [json.loads(line) for line in output.text.splitlines()]
    assert [line["row"] for line in lines] == list(range(ROWS)), "every row once, in order"
    for line in lines:
        assert line["label"] in ("negative", "positive")
        assert line["probability"] == max(line["probabilities"].values())
        assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    # The same rows through the downloaded model, in a process of their own.
    tarball = service.get(f"/v1/jobs/{trained}/model.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(tarball.content)) as tar:
        tar.extractall(tmp_path / "model", filter="data")
    sample = list(range(0, ROWS, 97))
    out = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path / "model"),
                          json.dumps([rows[index]["text"] for index in sample])],
                         capture_output=True, text=True, timeout=300, check=True)
    expected = json.loads(out.stdout.strip().splitlines()[-1])
    for index, probabilities in zip(sample, expected, strict=True):
        got = lines[index]["probabilities"]
        assert got["negative"] == pytest.approx(probabilities[0], abs=1e-4)
        assert got["positive"] == pytest.approx(probabilities[1], abs=1e-4)

    listed = service.get("/v1/predictions").json()["predictions"]
    assert queued["id"] in [prediction["id"] for prediction in listed]
    assert queued["id"] not in [job["id"] for job in service.get("/v1/jobs?limit=200").json()["jobs"]]


def test_cancel_a_running_prediction_and_a_bad_column_fails_it(service: RunningService, trained: str) -> None:
    write_table(sentiment_rows(6000, seed=12), service.data_root / "predict" / "cancel.jsonl")
    with FitjobsClient(service.url) as client:
        started = client.submit_prediction({"job": trained, "data": {"path": "predict/cancel.jsonl"},
                                            "batch_size": 4})
        wait_for(service, started["id"], lambda p: p["state"] == "running" and p["progress"]["step"] >= 1,
                 timeout=300)
        assert client.cancel_prediction(started["id"])["cancel_requested"]
        assert client.wait_prediction(started["id"], timeout=120, interval=0.2)["state"] == "cancelled"
        assert started["id"] in [prediction["id"] for prediction in client.list_predictions(state="cancelled")]

        wrong = client.submit_prediction({"job": trained, "data": {"records": [{"body": "a fine day"}]}})
        failed = client.wait_prediction(wrong["id"], timeout=300, interval=0.2)
    assert failed["state"] == "failed" and failed["error"] and failed["error"]["code"] == "invalid_data"
    assert "no column 'text'" in failed["error"]["message"] and "'body'" in failed["error"]["message"]


def test_bad_prediction_requests_get_422_or_404_naming_the_problem(service: RunningService, trained: str,
                                                                   tiny_model_dir: Path) -> None:
    queued_training = service.post("/v1/jobs", json={**tiny_job_spec(tiny_model_dir, "sentiment", "val.jsonl"),
                                                     "priority": -100}).json()["id"]
    missing = "job_" + "0" * 32
    records = {"records": [{"text": "a fine day"}]}
    cases = [
        ({"job": missing, "data": records}, "job", "No job has the id"),
        ({"job": queued_training, "data": records}, "job", "only a succeeded job's model"),
        ({"job": trained, "data": {"path": "../outside.csv"}}, "data.path", "data root"),
        ({"job": trained, "data": records, "batch_size": 0}, "batch_size", "greater than or equal to 1"),
        ({"job": trained, "data": records, "colour": "red"}, "colour", "Unknown field"),
        ({"job": "job_1", "data": records}, "job", "Must be a job id"),
        ({"data": records}, "job", "Missing data"),
    ]
    try:
        for spec, field, words in cases:
            answer = service.post("/v1/predictions", json=spec)
            assert answer.status_code == 422 and answer.headers["Content-Type"].startswith(PROBLEM), spec
            assert words in json.dumps(answer.json()["errors"][field]), (spec, answer.json())
        assert service.get(f"/v1/predictions/{trained}").status_code == 404
        prediction = submit(service, {"job": trained, "data": records})
        hint = service.get(f"/v1/jobs/{prediction['id']}")
        assert hint.status_code == 404 and f"/v1/predictions/{prediction['id']}" in hint.json()["detail"]
        wait_for(service, prediction["id"], lambda p: p["state"] in TERMINAL, timeout=300)
    finally:
        service.post(f"/v1/jobs/{queued_training}/cancel")
