"""JobStore on a real SQLite file: transitions, fencing, claims, cancellation, paging, migrations."""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from service.jobs import TRANSITIONS, Job, JobError, JobState, MetricPoint, Progress
from service.store import InvalidTransition, JobNotFound, JobStore, open_store
from service.store.job_store import IdempotencyConflict, utcnow

SPEC = {"model": "m", "data": {"train": {"records": [{"text": "a", "label": 0}]}}}


def claimed_id(store: JobStore, owner: str, **capacity: Any) -> str | None:
    """The id of the job ``owner`` claims next, or None when it claims none."""
    job = store.claim_next_job(owner, **capacity)
    return job.id if job else None


def test_new_job_is_queued_with_an_event(store: JobStore) -> None:
    job = store.create_job(SPEC)[0]
    assert job.state is JobState.QUEUED and job.attempt == 0 and job.spec == SPEC
    assert job.created_at.tzinfo is not None
    events = store.list_events(job.id)
    assert [(e.kind, e.state) for e in events] == [("state", JobState.QUEUED)]


def test_claim_takes_oldest_first_and_counts_attempts(store: JobStore) -> None:
    first, second = store.create_job(SPEC)[0], store.create_job(SPEC)[0]
    claimed = store.claim_next_job("node-a")
    assert claimed is not None and claimed.id == first.id
    assert claimed.state is JobState.RUNNING and claimed.attempt == 1 and claimed.owner == "node-a"
    assert claimed.started_at is not None and claimed.heartbeat_at is not None
    assert claimed_id(store, "node-a") == second.id
    assert store.claim_next_job("node-a") is None


def test_concurrent_claims_never_hand_out_a_job_twice(database_url: str, store: JobStore) -> None:
    for _ in range(20):
        store.create_job(SPEC)[0]
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all(owner: str) -> None:
        other = open_store(database_url, migrate=False)
        while (job := other.claim_next_job(owner)) is not None:
            with lock:
                claimed.append(job.id)
        other.engine.dispose()

    threads = [threading.Thread(target=claim_all, args=(f"n{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 20 and len(set(claimed)) == 20


def test_transition_table_is_enforced(store: JobStore) -> None:
    job = store.create_job(SPEC)[0]
    with pytest.raises(InvalidTransition):
        store.transition(job.id, JobState.SUCCEEDED, "too early")
    running = store.claim_next_job("n")
    assert running is not None
    done = store.transition(job.id, JobState.SUCCEEDED, "ok", attempt=1, result={"val_accuracy": 0.9})
    assert done.state is JobState.SUCCEEDED and done.finished_at is not None
    assert done.result == {"val_accuracy": 0.9}
    for target in JobState:
        with pytest.raises(InvalidTransition):
            store.transition(job.id, target, "terminal states never change")
    assert all(not TRANSITIONS[state] for state in JobState if state.is_terminal)


def test_stale_attempt_writes_are_refused(store: JobStore) -> None:
    job = store.create_job(SPEC)[0]
    store.claim_next_job("old")
    store.transition(job.id, JobState.QUEUED, "owner lost", attempt=1)
    store.claim_next_job("new")
    assert not store.record_progress(job.id, 1, Progress(epoch=1, epochs=2, step=3), [MetricPoint("loss", 1.0, 1, 3)])
    assert not store.heartbeat(job.id, 1)
    assert not store.append_event(job.id, "note", "from the past", attempt=1)
    with pytest.raises(InvalidTransition):
        store.transition(job.id, JobState.FAILED, "stale", attempt=1, error=JobError("internal", "x"))
    assert store.record_progress(job.id, 2, Progress(epoch=1, epochs=2, step=3), [MetricPoint("loss", 0.5, 1, 3)])
    current = store.get_job(job.id)
    assert current.state is JobState.RUNNING and current.attempt == 2
    assert current.progress == Progress(epoch=1, epochs=2, step=3)
    assert store.list_metrics(job.id) == [MetricPoint("loss", 0.5, 1, 3)]


def test_metrics_of_a_resumed_job_have_each_epoch_and_step_once(store: JobStore) -> None:
    job, _ = store.create_job(SPEC)
    store.claim_next_job("n")
    store.record_progress(job.id, 1, Progress(epoch=2, epochs=3, step=1), [
        MetricPoint("loss", 0.9, 1, 1), MetricPoint("loss", 0.8, 1, 2), MetricPoint("loss", 0.85, 1),
        MetricPoint("loss", 0.7, 2, 3)])  # epoch 2 was cut short after one step
    store.transition(job.id, JobState.QUEUED, "owner lost", attempt=1)
    store.claim_next_job("m")
    store.record_progress(job.id, 2, Progress(epoch=3, epochs=3, step=2), [
        MetricPoint("loss", 0.6, 2, 3), MetricPoint("loss", 0.5, 2, 4), MetricPoint("loss", 0.55, 2),
        MetricPoint("loss", 0.4, 3, 5), MetricPoint("loss", 0.3, 3, 6), MetricPoint("loss", 0.35, 3)])
    series = store.list_metrics(job.id)
    epochs = [(p.epoch, p.value) for p in series if p.step is None]
    steps = [(p.step, p.value) for p in series if p.step is not None]
    assert epochs == [(1, 0.85), (2, 0.55), (3, 0.35)]
    assert steps == [(1, 0.9), (2, 0.8), (3, 0.6), (4, 0.5), (5, 0.4), (6, 0.3)]


def test_failure_is_recorded_with_code_and_event(store: JobStore) -> None:
    job = store.create_job(SPEC)[0]
    store.claim_next_job("n")
    failed = store.transition(job.id, JobState.FAILED, "bad column", attempt=1,
                              error=JobError("invalid_data", "column 'txt' is missing"))
    assert failed.error == JobError("invalid_data", "column 'txt' is missing")
    last = store.list_events(job.id)[-1]
    assert last.state is JobState.FAILED and last.data == {"code": "invalid_data", "retryable": False}


def test_cancel_queued_running_and_finished(store: JobStore) -> None:
    queued = store.create_job(SPEC)[0]
    assert store.request_cancel(queued.id).state is JobState.CANCELLED
    assert store.request_cancel(queued.id).state is JobState.CANCELLED  # idempotent
    assert store.claim_next_job("n") is None, "a cancelled job never starts"

    running = store.create_job(SPEC)[0]
    store.claim_next_job("n")
    flagged = store.request_cancel(running.id)
    assert flagged.state is JobState.RUNNING and flagged.cancel_requested
    assert store.request_cancel(running.id).cancel_requested
    assert [e.kind for e in store.list_events(running.id)].count("cancel_requested") == 1

    store.transition(running.id, JobState.CANCELLED, "stopped", attempt=1)
    done = store.create_job(SPEC)[0]
    store.claim_next_job("n")
    store.transition(done.id, JobState.SUCCEEDED, "ok", attempt=1, result={})
    with pytest.raises(InvalidTransition):
        store.request_cancel(done.id)


def test_list_is_newest_first_with_cursor_and_state_filter(store: JobStore) -> None:
    ids = [store.create_job(SPEC)[0].id for _ in range(5)]
    store.request_cancel(ids[1])
    page, cursor = store.list_jobs(limit=2)
    assert [j.id for j in page] == [ids[4], ids[3]] and cursor is not None
    page2, cursor2 = store.list_jobs(limit=2, before_seq=cursor)
    assert [j.id for j in page2] == [ids[2], ids[1]]
    page3, cursor3 = store.list_jobs(limit=2, before_seq=cursor2)
    assert [j.id for j in page3] == [ids[0]] and cursor3 is None
    cancelled, _ = store.list_jobs(state=JobState.CANCELLED)
    assert [j.id for j in cancelled] == [ids[1]]


def test_expired_leases_are_found_and_heartbeats_renew_them(store: JobStore) -> None:
    job, _ = store.create_job(SPEC)
    claimed = store.claim_next_job("n", lease_seconds=30)
    assert claimed is not None and claimed.lease_expires_at is not None
    assert store.expired_jobs() == []
    assert [j.id for j in store.expired_jobs(utcnow() + timedelta(seconds=31))] == [job.id]
    assert store.heartbeat(job.id, 1, lease_seconds=120)
    assert store.expired_jobs(utcnow() + timedelta(seconds=31)) == []


def test_a_drained_attempt_is_free(store: JobStore) -> None:
    job, _ = store.create_job(SPEC, max_attempts=2)
    store.claim_next_job("n")
    store.transition(job.id, JobState.QUEUED, "drained", attempt=1, free_attempt=True)
    store.claim_next_job("n")
    store.transition(job.id, JobState.QUEUED, "owner lost", attempt=2)
    again = store.claim_next_job("n")
    assert again is not None and again.attempt == 3 and again.attempts_spent == 2


def test_higher_priority_is_claimed_first_then_oldest(store: JobStore) -> None:
    low, _ = store.create_job(SPEC)
    high, _ = store.create_job(SPEC, priority=5)
    low2, _ = store.create_job(SPEC)
    order = [claimed_id(store, "n") for _ in range(3)]
    assert order == [high.id, low.id, low2.id]


def test_idempotency_key_returns_the_same_job_or_conflicts(store: JobStore) -> None:
    first, created = store.create_job(SPEC, idempotency_key="k1")
    again, created_again = store.create_job(dict(SPEC), idempotency_key="k1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflict):
        store.create_job({**SPEC, "model": "other"}, idempotency_key="k1")
    other, created_other = store.create_job(SPEC, idempotency_key="k2")
    assert created_other and other.id != first.id


def test_concurrent_submissions_with_one_key_make_one_job(database_url: str, store: JobStore) -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def submit() -> None:
        other = open_store(database_url, migrate=False)
        job, _ = other.create_job(SPEC, idempotency_key="same")
        with lock:
            ids.append(job.id)
        other.engine.dispose()

    threads = [threading.Thread(target=submit) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 10 and len(set(ids)) == 1
    assert len(store.list_jobs(limit=50)[0]) == 1


def test_migrated_schema_matches_the_table_definitions(store: JobStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from service.store.tables import metadata

    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_upgrade_keeps_jobs_of_an_older_schema(database_url: str) -> None:
    from service.store.engine import make_engine, upgrade_schema

    engine = make_engine(database_url)
    upgrade_schema(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO jobs (id, state, spec, created_at, updated_at, attempt, "
                          "cancel_requested, progress) VALUES ('job_old', 'queued', '{}', "
                          "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0, false, '{}')"))
    engine.dispose()
    upgraded = open_store(database_url)
    old = upgraded.get_job("job_old")
    assert old.state is JobState.QUEUED and old.priority == 0 and old.max_attempts == 3
    upgraded.engine.dispose()


def test_unknown_job_raises(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.get_job("job_missing")


def test_migrations_create_tables_and_are_idempotent(database_url: str) -> None:
    first = open_store(database_url)
    second = open_store(database_url)  # already current: a no-op, not an error
    tables = set(inspect(second.engine).get_table_names())
    assert {"jobs", "job_events", "metrics", "alembic_version"} <= tables
    first.engine.dispose()
    second.engine.dispose()


def test_replicas_starting_together_migrate_a_new_postgresql_database_once(tmp_path: Path) -> None:
    """Six `fitjobs migrate` processes at once (pods of a new deployment): all succeed, one schema."""
    import subprocess
    import sys

    from tests.support.postgres import temporary_database

    with temporary_database() as url:
        env = {**os.environ, "FITJOBS_DATABASE_URL": url, "FITJOBS_HOME": str(tmp_path)}
        processes = [subprocess.Popen([sys.executable, "-m", "service.cli", "migrate"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(6)]
        outputs = [process.communicate(timeout=120)[0].decode() for process in processes]
        assert [process.returncode for process in processes] == [0] * 6, outputs
        store = open_store(url, migrate=False)
        with store.engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        store.engine.dispose()
        assert len(versions) == 1


def test_a_cancel_that_loses_to_a_claim_flags_the_running_attempt(store: JobStore) -> None:
    """The claim commits while the cancel waits for the row: the job is not cancelled under its trainer."""
    job, _ = store.create_job(SPEC)
    answers: list[object] = []

    def cancel() -> None:
        try:
            answers.append(store.request_cancel(job.id))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            answers.append(exc)

    with store._write() as conn:  # a claim's transaction, still open when the cancel arrives
        assert store._move(conn, job.id, JobState.RUNNING, "Attempt 1 started on n.",
                           attempt=0, values={"attempt": 1, "owner": "n"}) is not None
        canceller = threading.Thread(target=cancel)
        canceller.start()
        canceller.join(timeout=0.5)
        assert canceller.is_alive(), "the cancel waits for the claim's row"
    canceller.join(timeout=30)
    [answer] = answers
    assert isinstance(answer, Job) and answer.state is JobState.RUNNING and answer.cancel_requested, answer
    assert [(e.kind, e.state) for e in store.list_events(job.id)] == [
        ("state", JobState.QUEUED), ("state", JobState.RUNNING), ("cancel_requested", None)]
    assert store.list_events(job.id)[-1].data == {"attempt": 1}


def test_every_move_is_guarded_by_the_transition_table(store: JobStore) -> None:
    job, _ = store.create_job(SPEC)
    with store._write() as conn:
        with pytest.raises(ValueError):
            store._move(conn, job.id, JobState.CANCELLED, "no such transition", sources={JobState.SUCCEEDED})
        assert store._move(conn, job.id, JobState.FAILED, "queued jobs never fail") is None
    with pytest.raises(ValueError):
        with store._write() as conn:
            store._insert_job(conn, JobState.RUNNING, "never created running", {"id": "job_x"})
    assert store.get_job(job.id).state is JobState.QUEUED
    assert [e.state for e in store.list_events(job.id)] == [JobState.QUEUED], "a refused move logs nothing"


def test_a_job_whose_cancel_was_requested_is_never_queued_again(store: JobStore) -> None:
    job, _ = store.create_job(SPEC)
    store.claim_next_job("n")
    store.request_cancel(job.id)
    with pytest.raises(InvalidTransition) as refused:
        store.transition(job.id, JobState.QUEUED, "drained", attempt=1, free_attempt=True)
    assert refused.value.job.state is JobState.RUNNING and refused.value.job.cancel_requested
    assert store.transition(job.id, JobState.CANCELLED, "stopped", attempt=1).state is JobState.CANCELLED
