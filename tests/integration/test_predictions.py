"""Online predictions through a real `fitjobs serve`: two tiny BERT jobs, one model kept warm at a time.

The service keeps one model loaded (FITJOBS_PREDICT_MODELS=1), so predicting with the
second job's model evicts the first's. The answers are checked against the downloaded model
run in a separate process, as a caller would run it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from service.config import Settings
from service.predict_client import PredictClient
from tests.support.s3 import s3_server
from tests.support.sentiment_data import sentiment_rows, tiny_job_spec, write_sentiment_files
from tests.support.service import RunningService, descendants, start_service

PROBE_TEXTS = [row["text"] for row in sentiment_rows(24, seed=99)] + ["", "wonderful " * 60]

REFERENCE_SCRIPT = """
import json, os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
from transformers import AutoTokenizer, TFAutoModelForSequenceClassification
folder, max_length, texts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(folder)
model = TFAutoModelForSequenceClassification.from_pretrained(folder)
encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="tf")
probabilities = tf.nn.softmax(tf.cast(model(**encoded).logits, tf.float32), axis=-1).numpy()
labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
print(json.dumps({"labels": labels, "probabilities": probabilities.tolist()}))
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """`fitjobs serve` whose predict process keeps one model loaded."""
    running = start_service(tmp_path_factory.mktemp("predict"), extra_env={
        "FITJOBS_PREDICT_MODELS": "1", "FITJOBS_PREDICT_TIMEOUT": "180"})
    yield running
    status = running.stop()
    assert status == 0, running.output()[-3000:]


@pytest.fixture(scope="module")
def jobs(service: RunningService, tiny_model_dir: Path) -> dict[str, Any]:
    """Two succeeded tiny jobs (different seeds), and a third that failed; the second was queued at first."""
    write_sentiment_files(service.data_root / "sentiment", 160, 40)
    first = service.post("/v1/jobs", json=tiny_job_spec(tiny_model_dir, "sentiment", epochs=1, seed=1)).json()
    second = service.post("/v1/jobs", json=tiny_job_spec(tiny_model_dir, "sentiment", epochs=1, seed=2)).json()
    # One training slot: the second waits while the first trains.
    waiting = service.get(f"/v1/jobs/{second['id']}").json()["state"]
    early = service.post(f"/v1/jobs/{second['id']}/predictions", json={"texts": ["good"]})
    broken_spec = tiny_job_spec(tiny_model_dir, "sentiment", epochs=1)
    broken_spec["data"]["text_column"] = "review_body"
    broken = service.post("/v1/jobs", json=broken_spec).json()
    for job in (first, second, broken):
        service.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    return {"first": first["id"], "second": second["id"], "failed": broken["id"], "waiting": waiting, "early": early}


def predict(service: RunningService, job_id: str, texts: list[str]) -> dict[str, Any]:
    answer = requests.post(f"{service.url}/v1/jobs/{job_id}/predictions", json={"texts": texts}, timeout=200)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def predict_client(service: RunningService) -> PredictClient:
    return PredictClient(Settings.from_env({"FITJOBS_HOME": str(service.home)}).predict_socket, 180)


def reference(service: RunningService, job_id: str, folder: Path, texts: list[str]) -> dict[str, Any]:
    """The downloaded model's labels and probabilities, computed in a separate process."""
    tarball = service.get(f"/v1/jobs/{job_id}/model.tar.gz")
    assert tarball.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(tarball.content)) as tar:
        tar.extractall(folder, filter="data")
    done = subprocess.run([sys.executable, "-c", REFERENCE_SCRIPT, str(folder), "32", json.dumps(texts)],
                          capture_output=True, text=True, timeout=300, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_predictions_agree_with_the_downloaded_model(service: RunningService, jobs: dict[str, Any],
                                                     tmp_path: Path) -> None:
    job_id = jobs["first"]
    cold = predict(service, job_id, PROBE_TEXTS)
    warm = predict(service, job_id, PROBE_TEXTS)
    print(f"\ncold: model_load_ms {cold['model_load_ms']:.0f}, timing {cold['timing']}; warm: {warm['timing']}")
    assert cold["model_load_ms"] > 0 and warm["model_load_ms"] == 0
    assert cold["timing"]["total_ms"] >= cold["model_load_ms"]
    for first, again in zip(cold["predictions"], warm["predictions"], strict=True):
        assert again["label"] == first["label"]
        assert again["probabilities"] == pytest.approx(first["probabilities"], abs=1e-6)
    expected = reference(service, job_id, tmp_path / "model", PROBE_TEXTS)
    assert cold["labels"] == expected["labels"] == ["negative", "positive"]
    assert len(cold["predictions"]) == len(PROBE_TEXTS)
    worst = 0.0
    for answer, probabilities in zip(cold["predictions"], expected["probabilities"], strict=True):
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        assert answer["label"] == expected["labels"][best]
        assert answer["probability"] == pytest.approx(probabilities[best], abs=1e-4)
        for name, value in zip(expected["labels"], probabilities, strict=True):
            worst = max(worst, abs(answer["probabilities"][name] - value))
    print(f"largest probability difference to the downloaded model: {worst:.2e}")
    assert worst <= 1e-4


def test_bad_requests_are_422_naming_the_field(service: RunningService, jobs: dict[str, Any]) -> None:
    job_id = jobs["first"]
    cases: list[tuple[Any, str]] = [
        ({"texts": []}, "texts"),
        ({"texts": ["a"] * 65}, "texts"),
        ({"texts": ["a", 3]}, "texts"),
        ({"texts": "a text"}, "texts"),
        ({"texts": ["a"], "text_pairs": [["a", "b"]]}, "text_pairs"),
        ({}, "texts"),
        ({"texts": ["a"], "limit": 3}, "limit"),
        ({"text_pairs": [["a", "b"]]}, "text_pairs"),  # this model was trained on single texts
    ]
    for body, field in cases:
        answer = service.post(f"/v1/jobs/{job_id}/predictions", json=body)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert any(key == field or key.startswith(f"{field}.") for key in answer.json()["errors"]), \
            (body, answer.json())
    assert service.post(f"/v1/jobs/{job_id}/predictions", json={"texts": ["a"] * 64}).status_code == 200


def test_jobs_without_a_succeeded_model_are_409_and_unknown_ones_404(service: RunningService,
                                                                     jobs: dict[str, Any]) -> None:
    early = jobs["early"]
    assert jobs["waiting"] in ("queued", "running")
    assert early.status_code == 409, early.text
    assert early.json()["state"] in ("queued", "running") and "only a succeeded job" in early.json()["detail"]
    failed = service.post(f"/v1/jobs/{jobs['failed']}/predictions", json={"texts": ["good"]})
    assert failed.status_code == 409 and failed.json()["state"] == "failed", failed.text
    missing = service.post("/v1/jobs/job_" + "0" * 32 + "/predictions", json={"texts": ["good"]})
    assert missing.status_code == 404


def test_one_warm_model_evicts_the_least_recently_used(service: RunningService, jobs: dict[str, Any]) -> None:
    first, second = jobs["first"], jobs["second"]
    predict(service, first, ["good"])
    assert predict(service, first, ["good"])["model_load_ms"] == 0
    assert predict(service, second, ["good"])["model_load_ms"] > 0
    assert predict_client(service).request("ping", {})["models"] == [second]
    assert predict(service, first, ["good"])["model_load_ms"] > 0, "the first model was dropped for the second"
    assert predict(service, first, ["good"])["model_load_ms"] == 0
    assert predict_client(service).request("ping", {})["models"] == [first]


def test_a_killed_predict_process_is_started_again(service: RunningService, jobs: dict[str, Any]) -> None:
    client = predict_client(service)
    before = client.request("ping", {})["pid"]
    assert before in descendants(service.process.pid)
    os.kill(before, signal.SIGKILL)
    started = time.monotonic()
    answer = predict(service, jobs["first"], ["wonderful film", "awful film"])
    print(f"\nfirst answer after the kill: {time.monotonic() - started:.1f} s")
    assert answer["model_load_ms"] > 0 and len(answer["predictions"]) == 2
    assert {p["label"] for p in answer["predictions"]} <= {"positive", "negative"}
    after = client.request("ping", {})["pid"]
    assert after != before and after in descendants(service.process.pid)


def test_no_api_process_maps_tensorflow(service: RunningService, jobs: dict[str, Any]) -> None:
    predict(service, jobs["first"], ["good"])
    api_processes, predict_processes = [], []
    for pid in descendants(service.process.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        if b"service.trainer.predict_server" in argv:
            predict_processes.append("libtensorflow" in maps)
        elif b"api" in argv:
            api_processes.append("libtensorflow" in maps)
    assert predict_processes == [True]
    assert len(api_processes) >= 2 and not any(api_processes), "the gunicorn master and workers load no TensorFlow"


def test_a_model_in_object_storage_is_fetched_to_the_node_and_predicts(tmp_path: Path, tiny_model_dir: Path) -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    with s3_server() as s3:
        running = start_service(tmp_path / "home", extra_env={
            "FITJOBS_STORAGE_URL": f"s3://{s3.new_bucket()}/fitjobs", "FITJOBS_PREDICT_MODELS": "1", **s3.environ})
        try:
            write_sentiment_files(running.data_root / "sentiment", 120, 30)
            job = running.post("/v1/jobs", json=tiny_job_spec(tiny_model_dir, "sentiment", epochs=1)).json()
            done = running.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
            assert done["state"] == "succeeded", done
            answer = predict(running, job["id"], PROBE_TEXTS[:4])
            assert answer["model_load_ms"] > 0 and len(answer["predictions"]) == 4
            fetched = running.home / "cache" / "predict" / job["id"] / "model"
            assert (fetched / "config.json").is_file()
            expected = reference(running, job["id"], tmp_path / "downloaded", PROBE_TEXTS[:4])
            for given, probabilities in zip(answer["predictions"], expected["probabilities"], strict=True):
                assert [given["probabilities"][name] for name in expected["labels"]] == \
                    pytest.approx(probabilities, abs=1e-4)
        finally:
            assert running.stop() == 0, running.output()[-3000:]
