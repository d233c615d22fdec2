"""JobStore reuse on real SQLite and PostgreSQL: finding a succeeded job by fingerprint, creating a reused job."""

from __future__ import annotations

from sqlalchemy import inspect, text

from service.jobs import JobState, Progress
from service.store import JobStore, open_store

SPEC = {"model": "m", "data": {"train": {"records": [{"text": "a", "label": 0}]}}}
FINGERPRINT = "f" * 64


def succeeded_job(store: JobStore, fingerprint: str = FINGERPRINT, result: dict | None = None) -> str:
    """A job that was claimed, trained and succeeded with ``result``."""
    job, _ = store.create_job(SPEC, fingerprint=fingerprint)
    claimed = store.claim_next_job("n")
    assert claimed is not None and claimed.id == job.id
    store.record_progress(job.id, 1, Progress(epoch=2, epochs=2, step=8, steps_per_epoch=4))
    store.transition(job.id, JobState.SUCCEEDED, "ok", attempt=1, result=result or {"val_accuracy": 0.9})
    return job.id


def test_every_job_keeps_its_fingerprint(store: JobStore) -> None:
    job, _ = store.create_job(SPEC, fingerprint=FINGERPRINT)
    assert store.get_job(job.id).fingerprint == FINGERPRINT
    assert store.get_job(job.id).reused_from is None
    unreadable, _ = store.create_job(SPEC)
    assert store.get_job(unreadable.id).fingerprint is None


def test_only_succeeded_jobs_that_trained_are_found(store: JobStore) -> None:
    assert store.find_reusable_job(FINGERPRINT) is None
    queued, _ = store.create_job(SPEC, fingerprint=FINGERPRINT)
    assert store.find_reusable_job(FINGERPRINT) is None, "a queued job has nothing to reuse"
    store.request_cancel(queued.id)
    assert store.find_reusable_job(FINGERPRINT) is None, "a cancelled job has nothing to reuse"
    older = succeeded_job(store)
    other = succeeded_job(store, fingerprint="0" * 64)
    newer = succeeded_job(store)
    found = store.find_reusable_job(FINGERPRINT)
    assert found is not None and found.id == newer and found.id not in (older, other)

    reused, _ = store.create_job(SPEC, fingerprint=FINGERPRINT, reuse_of=found)
    # The reused job succeeded too, but the source stays the job whose files are published.
    again = store.find_reusable_job(FINGERPRINT)
    assert again is not None and again.id == newer != reused.id


def test_reused_job_is_created_succeeded_with_the_sources_result_and_events(store: JobStore) -> None:
    source_id = succeeded_job(store, result={"val_accuracy": 0.75, "loss": 0.4})
    source = store.find_reusable_job(FINGERPRINT)
    assert source is not None
    job, created = store.create_job({**SPEC, "reuse": True}, fingerprint=FINGERPRINT, reuse_of=source,
                                    priority=3)
    assert created
    assert job.state is JobState.SUCCEEDED and job.reused_from == source_id
    assert job.result == {"val_accuracy": 0.75, "loss": 0.4}
    assert job.progress == Progress(epoch=2, epochs=2, step=8, steps_per_epoch=4)
    assert job.attempt == 0 and job.started_at is None and job.finished_at is not None
    assert job.fingerprint == FINGERPRINT and job.priority == 3
    events = store.list_events(job.id)
    assert [(e.kind, e.state) for e in events] == [("reused", None), ("state", JobState.SUCCEEDED)]
    assert events[0].data == {"source_job": source_id} and source_id in events[0].message
    assert store.claim_next_job("n") is None, "a reused job never reaches a worker"
    assert store.count_jobs() == {"succeeded": 2}


def test_a_source_with_another_fingerprint_is_not_reused(store: JobStore) -> None:
    source_id = succeeded_job(store)
    source = store.get_job(source_id)
    job, _ = store.create_job(SPEC, fingerprint="1" * 64, reuse_of=source)
    assert job.state is JobState.QUEUED and job.reused_from is None
    assert [e.state for e in store.list_events(job.id)] == [JobState.QUEUED]


def test_idempotency_key_returns_the_reused_job(store: JobStore) -> None:
    succeeded_job(store)
    source = store.find_reusable_job(FINGERPRINT)
    spec = {**SPEC, "reuse": True}
    first, created = store.create_job(spec, idempotency_key="k", fingerprint=FINGERPRINT, reuse_of=source)
    again, created_again = store.create_job(spec, idempotency_key="k", fingerprint=FINGERPRINT, reuse_of=source)
    assert created and not created_again and again.id == first.id
    assert source is not None and again.state is JobState.SUCCEEDED and again.reused_from == source.id


def test_upgrade_from_0004_adds_fingerprints_and_keeps_jobs(database_url: str) -> None:
    from service.store.engine import make_engine, upgrade_schema

    engine = make_engine(database_url)
    upgrade_schema(engine, "0004")
    assert "fingerprint" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO jobs (id, state, spec, created_at, updated_at, attempt, "
                          "cancel_requested, progress, result) VALUES ('job_old', 'succeeded', '{}', "
                          "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1, false, '{}', '{}')"))
    engine.dispose()

    upgraded = open_store(database_url)
    columns = {c["name"] for c in inspect(upgraded.engine).get_columns("jobs")}
    assert {"fingerprint", "reused_from"} <= columns
    indexes = {ix["name"]: ix["column_names"] for ix in inspect(upgraded.engine).get_indexes("jobs")}
    assert indexes["ix_jobs_fingerprint_state"] == ["fingerprint", "state"]
    old = upgraded.get_job("job_old")
    assert old.state is JobState.SUCCEEDED and old.fingerprint is None and old.reused_from is None
    # A job from before the upgrade has no fingerprint, so nothing can reuse it by accident.
    assert upgraded.find_reusable_job(FINGERPRINT) is None
    new, _ = upgraded.create_job(SPEC, fingerprint=FINGERPRINT)
    assert upgraded.get_job(new.id).fingerprint == FINGERPRINT
    upgraded.engine.dispose()
