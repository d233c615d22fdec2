"""Webhook deliveries on real SQLite and PostgreSQL: queued with their events, claimed once, retried, given up."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import delete, func, select

from service.jobs import JobError, JobState
from service.store import JobStore, open_store
from service.store.job_store import utcnow
from service.store.tables import job_events, jobs, webhook_deliveries
from service.store.webhook_store import DeliveryState, RetryPolicy, WebhookStore

URL = "https://hooks.example.com/fitjobs"
SPEC = {"model": "m", "data": {"train": {"records": [{"text": "a", "label": 0}]}}, "webhook": {"url": URL}}
PLAIN = {"model": "m", "data": {"train": {"records": [{"text": "a", "label": 0}]}}}
FAST = RetryPolicy(first_seconds=1, max_seconds=4, give_up_seconds=20)


def bodies(hooks: WebhookStore, job_id: str) -> list[dict]:
    return [json.loads(d.body) for d in hooks.list_for_job(job_id)]


def test_every_state_change_and_the_published_evaluation_queue_one_delivery(store: JobStore) -> None:
    hooks = WebhookStore(store.engine)
    job = store.create_job(SPEC)[0]
    store.claim_next_job("node")
    store.append_event(job.id, "evaluated", "Epoch 1: accuracy 1.0.", attempt=1)  # not announced
    store.append_event(job.id, "artifacts_published", "Model and evaluation.json published.", attempt=1)
    store.transition(job.id, JobState.SUCCEEDED, "Training finished.", attempt=1, result={"loss": 0.1})
    deliveries = hooks.list_for_job(job.id)
    assert [d.event_type for d in deliveries] == ["job.queued", "job.running", "job.evaluation_ready",
                                                  "job.succeeded"]
    assert all(d.state is DeliveryState.PENDING and d.attempts == 0 and d.url == URL for d in deliveries)
    assert len({d.id for d in deliveries}) == 4 and all(d.id.startswith("msg_") for d in deliveries)
    events = {e.id: e for e in store.list_events(job.id)}
    for body, delivery in zip(bodies(hooks, job.id), deliveries, strict=True):
        assert body["type"] == delivery.event_type and body["timestamp"].endswith("Z")
        assert body["data"]["job_id"] == job.id and body["data"]["event_id"] in events
        assert body["data"]["message"] == events[body["data"]["event_id"]].message
    assert bodies(hooks, job.id)[3]["data"] == {**bodies(hooks, job.id)[3]["data"], "state": "succeeded",
                                                 "attempt": 1, "error": None}


def test_a_failure_carries_its_error_and_a_job_without_webhook_queues_nothing(store: JobStore) -> None:
    hooks = WebhookStore(store.engine)
    job = store.create_job(SPEC)[0]
    plain = store.create_job(PLAIN)[0]
    for claimed in (store.claim_next_job("n"), store.claim_next_job("n")):
        assert claimed is not None
        store.transition(claimed.id, JobState.FAILED, "Bad data.", attempt=1,
                         error=JobError("invalid_data", "no rows", False))
    assert bodies(hooks, job.id)[-1]["data"]["error"] == {"code": "invalid_data", "message": "no rows",
                                                          "retryable": False}
    assert hooks.list_for_job(plain.id) == []


def test_a_move_that_is_refused_queues_no_delivery(store: JobStore) -> None:
    hooks = WebhookStore(store.engine)
    job = store.create_job(SPEC)[0]
    store.request_cancel(job.id)
    assert store.append_event(job.id, "artifacts_published", "stale", attempt=5) is False
    assert [d.event_type for d in hooks.list_for_job(job.id)] == ["job.queued", "job.cancelled"]


def test_claims_of_concurrent_senders_never_take_a_delivery_twice(database_url: str, store: JobStore) -> None:
    for _ in range(8):
        store.create_job(SPEC)  # one delivery each
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all() -> None:
        other = WebhookStore(open_store(database_url, migrate=False).engine)
        while batch := other.claim_due(60, limit=2):
            with lock:
                claimed.extend(d.id for d in batch)
        other.engine.dispose()

    threads = [threading.Thread(target=claim_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 8 and len(set(claimed)) == 8
    hooks = WebhookStore(store.engine)
    assert hooks.claim_due(60) == []  # all claimed, none due until their claims lapse
    later = utcnow() + timedelta(seconds=61)
    assert len(hooks.claim_due(60, limit=10, now=later)) == 8  # a sender that died is taken over
    with store.engine.connect() as conn:
        assert set(conn.execute(select(webhook_deliveries.c.attempts)).scalars()) == {2}


def test_failed_attempts_back_off_exponentially_and_are_given_up_after_the_window(store: JobStore) -> None:
    hooks = WebhookStore(store.engine)
    job = store.create_job(SPEC)[0]
    created = hooks.list_for_job(job.id)[0].created_at
    now = created
    waits = []
    while True:
        (delivery,) = hooks.claim_due(30, now=now)
        recorded = hooks.record_attempt(delivery, delivered=False, status_code=503, error="answered 503",
                                        retry=FAST, now=now)
        assert recorded is not None and recorded.attempts == delivery.attempts
        if recorded.state is DeliveryState.FAILED:
            break
        assert recorded.next_attempt_at is not None
        waits.append((recorded.next_attempt_at - now).total_seconds())
        assert hooks.claim_due(30, now=recorded.next_attempt_at - timedelta(seconds=0.5)) == []
        now = recorded.next_attempt_at
    # Attempts at 0, 1, 3, 7, 11, 15 and 19 s: doubling up to the cap; one more would pass the 20 s window.
    assert waits == [1, 2, 4, 4, 4, 4]
    assert recorded.next_attempt_at is None and recorded.last_status_code == 503 and recorded.attempts == 7
    assert hooks.claim_due(30, now=now + timedelta(days=2)) == []


def test_a_delivered_attempt_is_recorded_and_a_stale_claim_records_nothing(store: JobStore) -> None:
    hooks = WebhookStore(store.engine)
    store.create_job(SPEC)
    (first,) = hooks.claim_due(1)
    (second,) = hooks.claim_due(1, now=utcnow() + timedelta(seconds=2))  # the first claim lapsed
    assert hooks.record_attempt(first, delivered=True, status_code=200, error=None, retry=FAST) is None
    done = hooks.record_attempt(second, delivered=True, status_code=204, error=None, retry=FAST)
    assert done is not None and done.state is DeliveryState.DELIVERED and done.attempts == 2
    assert done.delivered_at is not None and done.next_attempt_at is None and done.last_status_code == 204


def test_deleting_a_job_deletes_its_deliveries(store: JobStore) -> None:
    hooks = WebhookStore(store.engine)
    job, other = store.create_job(SPEC)[0], store.create_job(SPEC)[0]
    store.request_cancel(job.id)
    assert hooks.delete_for_job(job.id) == 2 and hooks.list_for_job(job.id) == []
    with store.engine.begin() as conn:  # the foreign key cascades, as for events
        conn.execute(delete(job_events).where(job_events.c.job_id == other.id))
        conn.execute(delete(jobs).where(jobs.c.id == other.id))
        assert conn.execute(select(func.count()).select_from(webhook_deliveries)).scalar_one() == 0


def test_a_reused_job_announces_success_and_its_evaluation_at_once(store: JobStore) -> None:
    hooks = WebhookStore(store.engine)
    source = store.create_job(PLAIN, fingerprint="f" * 64)[0]
    store.claim_next_job("n")
    store.transition(source.id, JobState.SUCCEEDED, "done", attempt=1, result={"loss": 0.1})
    reused = store.create_job(SPEC, fingerprint="f" * 64, reuse_of=store.get_job(source.id))[0]
    assert reused.reused_from == source.id
    assert [d.event_type for d in hooks.list_for_job(reused.id)] == ["job.succeeded", "job.evaluation_ready"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_webhook_of_a_spec_with_megabytes_of_rows_is_read_alone(store: JobStore) -> None:
    rows = [{"text": "x" * 1000, "label": i % 2} for i in range(2000)]
    job = store.create_job({**SPEC, "data": {"train": {"records": rows}}})[0]
    store.claim_next_job("n")
    assert store.append_event(job.id, "artifacts_published", "published", attempt=1)
    delivery = WebhookStore(store.engine).list_for_job(job.id)[-1]
    assert delivery.event_type == "job.evaluation_ready" and delivery.url == URL
