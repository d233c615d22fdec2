"""FITJOBS_STORAGE_URL=s3://... end to end, against a real S3-compatible server (moto's server mode).

An API process and `fitjobs worker --once` processes share only the database and the bucket,
each with its own FITJOBS_HOME as scratch space: a dataset is uploaded to the bucket through the
API, a tiny BERT trains on it, and its model.tar.gz is downloaded and loaded. A worker killed
with SIGKILL mid-fit leaves its checkpoint in the bucket, and a second worker with another
scratch folder resumes from it.
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

import numpy as np
import pytest

from service.storage import Storage
from tests.support.s3 import S3Server, s3_server
from tests.support.sentiment_data import sentiment_rows, write_table
from tests.support.service import REPO_ROOT, RunningService, descendants, service_env, start_service, trainer_pids
from tests.support.tensorboard_events import PUBLISHED, download_logdir, read_run

LOAD_AND_PREDICT = (
    "import os, json, sys; os.environ['TF_USE_LEGACY_KERAS'] = '1'\n"
    "import tensorflow as tf\n"
    "from transformers import AutoTokenizer, TFAutoModelForSequenceClassification\n"
    "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
    "model = TFAutoModelForSequenceClassification.from_pretrained(sys.argv[1])\n"
    "ids = tf.argmax(model(**tok(['a fine film', 'dull'], padding=True, return_tensors='tf')).logits, -1).numpy()\n"
    "print(json.dumps({'labels': sorted(model.config.id2label.values()),"
    " 'predicted': [model.config.id2label[int(i)] for i in ids]}))\n")


class Cluster:
    """An API process and the settings `--once` workers share with it: database and bucket only."""

    def __init__(self, root: Path, s3: S3Server) -> None:
        self.root = root
        self.bucket = s3.new_bucket()
        self.storage_url = f"s3://{self.bucket}/fitjobs"
        self.shared = {"FITJOBS_STORAGE_URL": self.storage_url,
                       "FITJOBS_DATABASE_URL": f"sqlite:///{root / 'shared.db'}",
                       "FITJOBS_LEASE_SECONDS": "4", **s3.environ}
        self.api: RunningService = start_service(root / "api-home", role="api", extra_env=self.shared)
        self.storage = Storage(self.storage_url)

    def start_worker(self, name: str, **extra: str) -> tuple[subprocess.Popen[str], Path]:
        home = self.root / name
        env = service_env(home, None, {**self.shared, "FITJOBS_WARM_TRAINERS": "0", **extra})
        log = open(self.root / f"{name}.log", "w")
        process = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--once", "--wait", "60"],
                                   env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        return process, home

    def log_of(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-4000:]

    def events(self, job_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        events = self.api.get(f"/v1/jobs/{job_id}/events").json()["events"]
        return [e for e in events if kind is None or e["kind"] == kind]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    with s3_server() as s3:
        running = Cluster(tmp_path_factory.mktemp("object-storage"), s3)
        try:
            yield running
        finally:
            assert running.api.stop() == 0, running.api.output()[-3000:]


def upload(cluster: Cluster, rows: list[dict[str, Any]], tmp_path: Path) -> str:
    path = tmp_path / "train.csv"
    write_table(rows, path)
    with path.open("rb") as handle:
        response = cluster.api.post("/v1/datasets", files={"file": ("train.csv", handle, "text/csv")})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def spec_of(model_dir: Path, dataset_id: str, **hyper: Any) -> dict[str, Any]:
    return {"model": str(model_dir),
            "data": {"train": {"upload": dataset_id}, "validation": {"split_fraction": 0.2}},
            "hyperparameters": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "max_length": 32, "seed": 1,
                                **hyper}}


def submit(cluster: Cluster, spec: dict[str, Any]) -> str:
    response = cluster.api.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_upload_train_and_download_through_the_bucket(cluster: Cluster, tiny_model_dir: Path,
                                                      tmp_path: Path) -> None:
    dataset_id = upload(cluster, sentiment_rows(200, seed=3), tmp_path)
    assert cluster.storage.exists(f"uploads/{dataset_id}/data.csv")
    job_id = submit(cluster, spec_of(tiny_model_dir, dataset_id))
    worker, scratch = cluster.start_worker("worker-train")
    assert worker.wait(timeout=240) == 0, cluster.log_of("worker-train")
    job = cluster.api.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded", (job, cluster.log_of("worker-train"))

    listed = {a["name"] for a in cluster.api.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]}
    assert {"metrics.json", "spec.json", "evaluation.json", "model/config.json", "model/tf_model.h5"} <= listed
    assert cluster.api.get(f"/v1/jobs/{job_id}/evaluation").json() == job["result"]["evaluation"]
    tarball = cluster.api.get(f"/v1/jobs/{job_id}/model.tar.gz")
    assert tarball.status_code == 200 and tarball.headers["Content-Type"] == "application/gzip"
    assert int(tarball.headers["Content-Length"]) == len(tarball.content)
    downloaded = tmp_path / "downloaded"
    with tarfile.open(fileobj=io.BytesIO(tarball.content)) as tar:
        tar.extractall(downloaded, filter="data")
    out = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, str(downloaded)], capture_output=True,
                         text=True, timeout=300, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["labels"] == ["negative", "positive"] and len(loaded["predicted"]) == 2

    assert "Epoch 2/2" in cluster.api.get(f"/v1/jobs/{job_id}/logs").text, "the worker's log, from the bucket"
    # Nothing lives on a shared disk: the API's home holds no artifacts or uploads, the worker's
    # scratch no published model, and the bucket no leftover checkpoint.
    api_home = cluster.api.home
    assert not (api_home / "artifacts" / job_id).exists() and not (api_home / "uploads" / dataset_id).exists()
    assert not (scratch / "artifacts" / job_id).exists()
    assert (scratch / "uploads" / dataset_id / "data.csv").is_file(), "the worker fetched the upload to scratch"
    assert cluster.storage.published(f"artifacts/{job_id}") is not None
    assert cluster.storage.list_files(f"checkpoints/{job_id}") == [], "the checkpoint is removed once published"


def test_a_killed_worker_is_resumed_from_the_bucket_by_another(cluster: Cluster, tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    dataset_id = upload(cluster, sentiment_rows(400, seed=5), tmp_path)
    job_id = submit(cluster, spec_of(tiny_model_dir, dataset_id, batch_size=8))
    first, scratch_a = cluster.start_worker("worker-a", FITJOBS_CHECKPOINT_STEPS="3")
    deadline = time.monotonic() + 180
    while cluster.storage.published(f"checkpoints/{job_id}/state") is None:
        assert first.poll() is None and time.monotonic() < deadline, cluster.log_of("worker-a")
        time.sleep(0.1)
    # kill -9 of the worker pod's processes: the worker and its trainer, no chance to drain.
    doomed = [first.pid, *descendants(first.pid)]
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    first.wait(timeout=30)
    gone_by = time.monotonic() + 10
    while trainer_pids(home=scratch_a) and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert trainer_pids(home=scratch_a) == []
    stored = cluster.storage.published(f"checkpoints/{job_id}/state")
    assert stored is not None and {"epochs.json", "chief/checkpoint"} & {f.name for f in stored.files}
    # The steps trained before the checkpoint travel with it, as event files.
    assert any(f.name.startswith("tensorboard/train/") for f in stored.files)
    assert cluster.api.get(f"/v1/jobs/{job_id}").json()["state"] == "running", "killed before it ended"

    second, scratch_b = cluster.start_worker("worker-b")
    assert scratch_b != scratch_a
    assert second.wait(timeout=240) == 0, cluster.log_of("worker-b")
    job = cluster.api.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded", (job, cluster.log_of("worker-b"))
    assert job["attempt"] == 2
    assert [e["data"]["storage"].startswith(cluster.storage_url) for e in cluster.events(job_id, "checkpoint_fetched")
            ] == [True]
    [resumed] = cluster.events(job_id, "resumed")
    print(f"\nresumed on a second worker from the bucket's checkpoint: {resumed['data']}")
    steps_per_epoch = 40  # 320 training rows in batches of 8
    done = resumed["data"]["steps_done"]
    assert resumed["data"]["epoch"] in (1, 2) and 0 < done <= steps_per_epoch
    assert done % 3 == 0 or done == steps_per_epoch, "it resumed at a step the first worker checkpointed"
    metrics = cluster.api.get(f"/v1/jobs/{job_id}/metrics").json()
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2], "every epoch once, across both workers"
    # The event files hold every step once, across both workers, as the metrics series does.
    assert download_logdir(cluster.api, job_id, tmp_path / "logs") == PUBLISHED
    train = read_run(tmp_path / "logs" / "tensorboard" / "train")
    assert train.series("batch_loss") == {row["step"]: float(np.float32(row["loss"])) for row in metrics["steps"]}
    assert sorted(train.series("batch_loss")) == list(range(1, 2 * steps_per_epoch + 1))
    assert not (scratch_b / "jobs" / job_id / "attempt-1").exists(), "the second worker never saw attempt 1"
    assert cluster.api.get(f"/v1/jobs/{job_id}/model.tar.gz").status_code == 200
    assert cluster.storage.list_files(f"checkpoints/{job_id}") == []
