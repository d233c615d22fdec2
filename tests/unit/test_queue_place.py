"""A queued job's place in line and why it waits: waiting_for_gpus, reserved, no_worker_large_enough,
waiting_for_worker."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Flask
from flask.testing import FlaskClient

from service.jobs import Job, JobState, QueuePlace, QueueReason, Worker, place_in_queue
from service.store import JobStore

SPEC = {"model": "bert-base-uncased", "data": {"train": {"records": [{"text": "a", "label": "x"}]}}}
NOW = datetime.now(UTC)


def queued(gpus: int | None) -> Job:
    return Job(id="job_q", state=JobState.QUEUED, spec=SPEC, created_at=NOW, gpus=gpus)


def worker(name: str, gpus: int, slots: int | None = None) -> Worker:
    return Worker(id=name, hostname=name, gpus=gpus, slots=slots if slots is not None else max(1, gpus),
                  started_at=NOW, heartbeat_at=NOW)


def test_no_worker_large_enough_wherever_it_stands() -> None:
    assert place_in_queue(queued(4), 0, [worker("a", 2)], []) == QueuePlace(0, QueueReason.NO_WORKER_LARGE_ENOUGH)
    # With no worker at all, it waits for one to register (or to be scaled up for it).
    assert place_in_queue(queued(4), 3, [], []) == QueuePlace(3, QueueReason.WAITING_FOR_WORKER)
    assert place_in_queue(queued(None), 0, [], []).reason is QueueReason.WAITING_FOR_WORKER
    # A job without a GPU request runs on any worker, with or without GPUs.
    assert place_in_queue(queued(None), 0, [worker("cpu", 0)], []).reason is QueueReason.WAITING_FOR_GPUS


def test_behind_other_jobs_it_waits_for_gpus() -> None:
    assert place_in_queue(queued(2), 3, [worker("a", 2)], []) == QueuePlace(3, QueueReason.WAITING_FOR_GPUS)


def test_first_in_line_it_is_reserved_until_a_worker_has_room() -> None:
    workers = [worker("a", 2), worker("b", 2)]
    # Each worker runs a 1-GPU job: neither has two free, so both hold their GPUs for it.
    busy = [("a", 1), ("b", None)]
    assert place_in_queue(queued(2), 0, workers, busy) == QueuePlace(0, QueueReason.RESERVED)
    # One worker is free: it starts on that worker's next pass.
    assert place_in_queue(queued(2), 0, workers, [("a", 1)]).reason is QueueReason.WAITING_FOR_GPUS
    # GPUs free but every slot taken is no room either.
    assert place_in_queue(queued(1), 0, [worker("a", 2, slots=1)], [("a", 0)]).reason is QueueReason.RESERVED


def store_of(app: Flask) -> JobStore:
    return app.extensions["fitjobs.store"]


def test_get_job_shows_the_queue_of_a_queued_job_only(app: Flask, client: FlaskClient) -> None:
    store = store_of(app)
    store.register_worker("node-a", "host-a", gpus=2, slots=2)
    first = client.post("/v1/jobs", json={**SPEC, "resources": {"gpus": 1}}).get_json()
    big = client.post("/v1/jobs", json={**SPEC, "resources": {"gpus": 2}}).get_json()
    last = client.post("/v1/jobs", json={**SPEC, "resources": {"gpus": 1}}).get_json()
    assert first["queue"] is None, "only GET /v1/jobs/{id} places a job"

    def place(job_id: str) -> dict[str, object] | None:
        return client.get(f"/v1/jobs/{job_id}").get_json()["queue"]

    assert place(first["id"]) == {"position": 0, "reason": "waiting_for_gpus"}
    assert place(big["id"]) == {"position": 1, "reason": "waiting_for_gpus"}
    assert place(last["id"]) == {"position": 2, "reason": "waiting_for_gpus"}

    store.claim_next_job("node-a", free_gpus=2, node_gpus=2)
    assert place(first["id"]) is None, "a running job has left the queue"
    assert place(big["id"]) == {"position": 0, "reason": "reserved"}
    assert place(last["id"]) == {"position": 1, "reason": "waiting_for_gpus"}

    # The worker goes away; a smaller one registers, then a larger one.
    store.deregister_worker("node-a")
    assert place(big["id"]) == {"position": 0, "reason": "waiting_for_worker"}
    store.register_worker("node-c", "host-c", gpus=1, slots=1)
    assert place(big["id"]) == {"position": 0, "reason": "no_worker_large_enough"}
    store.register_worker("node-b", "host-b", gpus=4, slots=4)
    assert place(big["id"]) == {"position": 0, "reason": "waiting_for_gpus"}
    assert "queue" not in client.get("/v1/jobs").get_json()["jobs"][0], "lists show summaries"
