"""What the finished-job statements of the store count, on SQLite and PostgreSQL, with exact timestamps."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from service.jobs import JobError, JobState
from service.store import JobStore
from service.store.job_store import utcnow
from service.store.tables import job_events, jobs

SPEC = {"model": "bert-base-uncased", "data": {"train": {"records": [{"text": "a", "label": "x"}]}}}
BOUNDS: dict[str, tuple[float, ...]] = {"queue_wait": (10.0, 100.0), "startup": (1.0, 5.0), "run": (60.0, 600.0)}


def finished_job(store: JobStore, target: JobState, *, waited: float, ran: float, startup: float | None,
                 error: JobError | None = None, priority: int = 0) -> str:
    """A job claimed ``waited`` s after its creation that ended ``ran`` s after the claim."""
    job = store.create_job(SPEC, priority=priority)[0]
    claimed = store.claim_next_job("node")
    assert claimed is not None and claimed.id == job.id
    if startup is not None:
        store.append_event(job.id, "trainer_started", "ready", data={"startup_seconds": startup})
    store.transition(job.id, target, "ended", attempt=1, error=error)
    created = utcnow() - timedelta(days=1)
    with store.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job.id).values(
            created_at=created, started_at=created + timedelta(seconds=waited),
            finished_at=created + timedelta(seconds=waited + ran)))
        conn.execute(update(job_events).where(job_events.c.job_id == job.id).values(
            created_at=created + timedelta(seconds=waited + 1)))
    return job.id


def by_outcome(store: JobStore) -> dict[str, dict[str, tuple[tuple[int, ...], int, float]]]:
    durations = store.finished_job_durations(BOUNDS)
    return {name: {b.outcome: (b.cumulative, b.count, round(b.total, 3)) for b in buckets}
            for name, buckets in durations.items()}


def test_durations_of_finished_jobs_fall_in_buckets_by_outcome(store: JobStore) -> None:
    finished_job(store, JobState.SUCCEEDED, waited=5, ran=30, startup=0.5)
    finished_job(store, JobState.SUCCEEDED, waited=50, ran=300, startup=2.5)
    finished_job(store, JobState.FAILED, waited=500, ran=3000, startup=None,
                 error=JobError("invalid_data", "bad"))
    finished_job(store, JobState.CANCELLED, waited=7, ran=90, startup=8.0)
    never_claimed = store.create_job(SPEC)[0]
    store.request_cancel(never_claimed.id)  # no claim: no wait, start-up or run time to count

    stats = by_outcome(store)
    assert stats["queue_wait"] == {"succeeded": ((1, 2), 2, 55.0), "failed": ((0, 0), 1, 500.0),
                                   "cancelled": ((1, 1), 1, 7.0)}
    assert stats["run"] == {"succeeded": ((1, 2), 2, 330.0), "failed": ((0, 0), 1, 3000.0),
                            "cancelled": ((0, 1), 1, 90.0)}
    # The failed job's trainer never started: it has no start-up time.
    assert stats["startup"] == {"succeeded": ((1, 2), 2, 3.0), "failed": ((0, 0), 0, 0.0),
                                "cancelled": ((0, 0), 1, 8.0)}


def test_startup_is_the_last_attempts_trainer(store: JobStore) -> None:
    job_id = finished_job(store, JobState.SUCCEEDED, waited=5, ran=30, startup=3.0)
    # An event of an earlier attempt, from before the last claim, is not the last attempt's.
    with store.engine.begin() as conn:
        started = conn.execute(jobs.select().where(jobs.c.id == job_id)).one().started_at
    store.append_event(job_id, "trainer_started", "earlier", data={"startup_seconds": 99.0})
    with store.engine.begin() as conn:
        conn.execute(update(job_events).where(job_events.c.message == "earlier").values(
            created_at=started - timedelta(seconds=1)))
    assert by_outcome(store)["startup"]["succeeded"] == ((0, 1), 1, 3.0)


def test_failures_by_code_jobs_by_priority_and_the_oldest_queued(store: JobStore) -> None:
    assert store.oldest_queued_since() is None
    finished_job(store, JobState.FAILED, waited=1, ran=1, startup=None, error=JobError("invalid_data", "x"))
    finished_job(store, JobState.FAILED, waited=1, ran=1, startup=None, error=JobError("invalid_data", "y"))
    finished_job(store, JobState.FAILED, waited=1, ran=1, startup=None, error=JobError("out_of_memory", "z"))
    finished_job(store, JobState.SUCCEEDED, waited=1, ran=1, startup=None)
    assert store.count_failures_by_code() == {"invalid_data": 2, "out_of_memory": 1}
    before = utcnow()
    store.create_job(SPEC, priority=5)
    store.create_job(SPEC, priority=5)
    store.create_job(SPEC, priority=-1)
    after = utcnow()
    assert store.count_jobs_by_priority() == {("failed", 0): 3, ("succeeded", 0): 1, ("queued", 5): 2,
                                              ("queued", -1): 1}
    oldest = store.oldest_queued_since()
    assert oldest is not None and before <= oldest <= after
