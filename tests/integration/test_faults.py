"""Fault injection with real processes on PostgreSQL: supervisors that die, drain or stall."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from service.store import JobStore, open_store
from tests.support.postgres import temporary_database
from tests.support.sentiment_data import sentiment_rows, write_table
from tests.support.service import RunningService, alive, service_env, spawn, start_service, trainer_pids

LEASE_SECONDS = "3"


@dataclass
class Cluster:
    """An API process and any number of supervisors sharing one PostgreSQL database and home."""

    api: RunningService
    database_url: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(self, **extra_env: str) -> subprocess.Popen[bytes]:
        env = service_env(self.api.home, None, {"FITJOBS_DATABASE_URL": self.database_url,
                                             "FITJOBS_LEASE_SECONDS": LEASE_SECONDS, **extra_env})
        worker = spawn("worker", env, self.api.home / f"worker-{len(self.workers) + 1}.log")
        self.workers.append(worker)
        return worker

    def store(self) -> JobStore:
        return open_store(self.database_url, migrate=False)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with temporary_database() as url:
        api = start_service(tmp_path / "home", role="api",
                            extra_env={"FITJOBS_DATABASE_URL": url, "FITJOBS_LEASE_SECONDS": LEASE_SECONDS})
        running = Cluster(api, url)
        write_table(sentiment_rows(2000, seed=1), api.data_root / "big" / "train.csv")
        write_table(sentiment_rows(100, seed=2), api.data_root / "big" / "val.csv")
        try:
            yield running
        finally:
            for worker in running.workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGCONT)
                    worker.send_signal(signal.SIGTERM)
                    worker.wait(timeout=60)
            assert api.stop() == 0
            assert trainer_pids() == []


def slow_spec(model_dir: Path, **top: Any) -> dict[str, Any]:
    """Three epochs of 1000 steps each: long enough to interrupt in the middle of epoch 2."""
    return {"model": str(model_dir),
            "data": {"train": {"path": "big/train.csv"}, "validation": {"path": "big/val.csv"}},
            "hyperparameters": {"epochs": 3, "batch_size": 2, "learning_rate": 1e-3, "max_length": 16},
            **top}


def wait_for_progress(api: RunningService, job_id: str, epoch: int, step: int, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json()
        progress = job["progress"]
        if job["state"] == "running" and (progress["epoch"], progress["step"]) >= (epoch, step):
            assert progress["epoch"] == epoch, f"epoch {epoch} went by too fast to interrupt: {progress}"
            return job
        assert job["state"] in {"queued", "running"}, job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached epoch {epoch} step {step}")


def events_of(api: RunningService, job_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in api.get(f"/v1/jobs/{job_id}/events").json()["events"] if e["kind"] == kind]


def assert_resumed_cleanly(cluster: Cluster, job: dict[str, Any]) -> None:
    """Exactly 3 epochs of metrics, one published model, and attempt 2 started at epoch 2."""
    api = cluster.api
    metrics = api.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2, 3]
    steps = [row["step"] for row in metrics["steps"]]
    assert steps == sorted(set(steps)), "no step appears twice"
    artifacts_root = api.home / "artifacts"
    assert sorted(p.name for p in artifacts_root.iterdir()) == [job["id"]], "one artifact set, nothing partial"
    assert any(a["name"] == "model/config.json" for a in api.get(f"/v1/jobs/{job['id']}/artifacts").json()["artifacts"])
    second = (api.home / "jobs" / job["id"] / "attempt-2" / "trainer.log").read_text()
    assert "Epoch 2/3" in second and "Epoch 1/3" not in second, "attempt 2 resumed from the epoch-1 checkpoint"


def test_kill_9_supervisor_mid_epoch_then_a_new_one_finishes_the_job(cluster: Cluster, tiny_model_dir: Path) -> None:
    first = cluster.start_worker()
    job = cluster.api.post("/v1/jobs", json=slow_spec(tiny_model_dir)).json()
    wait_for_progress(cluster.api, job["id"], epoch=2, step=50)
    trainers = trainer_pids(job["id"])
    assert trainers
    started = time.monotonic()
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    deadline = time.monotonic() + 10
    while alive(trainers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(trainers) == [], "the trainer dies with its supervisor"

    cluster.start_worker()
    done = cluster.api.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    print(f"\nkill -9 mid-epoch 2: succeeded {time.monotonic() - started:.1f} s after the kill, attempt {done['attempt']}")
    assert done["state"] == "succeeded" and done["attempt"] == 2
    messages = [e["message"] for e in cluster.api.get(f"/v1/jobs/{job['id']}/events").json()["events"]]
    assert any("stopped heartbeating" in message for message in messages)
    # The last checkpoint before the kill is epoch 1's end: at most one epoch of work is redone.
    assert [e["data"] for e in events_of(cluster.api, job["id"], "resumed")] == [{"epoch": 1, "steps_done": 1000}]
    assert_resumed_cleanly(cluster, done)


def test_sigterm_drain_requeues_without_spending_an_attempt(cluster: Cluster, tiny_model_dir: Path) -> None:
    first = cluster.start_worker()
    job = cluster.api.post("/v1/jobs", json=slow_spec(tiny_model_dir, max_attempts=1)).json()
    wait_for_progress(cluster.api, job["id"], epoch=2, step=50)
    started = time.monotonic()
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    drained = time.monotonic() - started
    store = cluster.store()
    requeued = store.get_job(job["id"])
    assert requeued.state.value == "queued" and requeued.attempts_spent == 0

    cluster.start_worker()
    done = cluster.api.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    print(f"\nSIGTERM drain: supervisor exited {drained:.1f} s after SIGTERM; job {done['state']}")
    assert done["state"] == "succeeded" and done["attempt"] == 2
    assert store.get_job(job["id"]).attempts_spent == 1
    store.engine.dispose()
    # The drained trainer checkpointed the step it was at; attempt 2 went on from the next one.
    [checkpointed] = events_of(cluster.api, job["id"], "checkpointed")
    assert checkpointed["data"]["epoch"] == 2 and checkpointed["data"]["steps_done"] >= 50
    [resumed] = events_of(cluster.api, job["id"], "resumed")
    assert resumed["data"] == checkpointed["data"]
    print(f"drain checkpoint at epoch 2 step {checkpointed['data']['steps_done']}; resumed there")
    assert_resumed_cleanly(cluster, done)
