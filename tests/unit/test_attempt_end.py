"""How the supervisor records an attempt's end: one move per end, a requested cancel first, retries bounded."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from service.config import Settings
from service.jobs import FailureCode, Job, JobState
from service.store import JobStore
from service.supervisor.ending import AttemptEnd, Ending, error_of, move_for
from service.supervisor.worker import Supervisor
from service.trainer.outcome import TrainerExit, failure_exit_status

SPEC = {"model": "m"}


def running(*, attempt: int = 1, cancel_requested: bool = False) -> Job:
    """A job in ``attempt`` (of 2 allowed) as the supervisor reads it after the attempt ended."""
    return Job(id="job_1", state=JobState.RUNNING, spec=SPEC, created_at=datetime.now(UTC), attempt=attempt,
               owner="n", max_attempts=2, cancel_requested=cancel_requested)


def test_each_end_is_one_move() -> None:
    job = running()
    assert move_for(job, 1, AttemptEnd.succeeded("done", {"loss": 0.1})).target is JobState.SUCCEEDED
    assert move_for(job, 1, AttemptEnd.cancelled("stopped")).target is JobState.CANCELLED
    drained = move_for(job, 1, AttemptEnd.requeued("drain"))
    assert (drained.target, drained.free_attempt) == (JobState.QUEUED, True)
    invalid = move_for(job, 1, AttemptEnd.failed(error_of(FailureCode.INVALID_DATA, "no text column")))
    assert invalid.error is not None and (invalid.target, invalid.error.code) == (JobState.FAILED, "invalid_data")


def test_retryable_failures_and_lost_owners_are_queued_again_while_attempts_remain() -> None:
    oom = AttemptEnd.failed(error_of(FailureCode.OUT_OF_MEMORY, "too big"))
    retry = move_for(running(attempt=1), 1, oom)
    assert (retry.target, retry.data) == (JobState.QUEUED, {"code": "out_of_memory"})
    assert "Attempt 1 failed (out_of_memory: too big); queued again (1 of 2 attempts used)" in retry.message
    last = move_for(running(attempt=2), 2, oom)
    assert last.target is JobState.FAILED and "last of 2 allowed" in last.message

    lost = AttemptEnd.owner_lost("node-a", 1)
    assert lost.error is not None
    assert (lost.ending, lost.error.code, lost.error.retryable) == (Ending.FAILED, "owner_lost", True)
    assert move_for(running(attempt=1), 1, lost).target is JobState.QUEUED
    assert "node-a stopped heartbeating" in move_for(running(attempt=1), 1, lost).message
    last_lost = move_for(running(attempt=2), 2, lost)
    assert last_lost.error is not None and last_lost.error.code == "owner_lost"


def test_a_requested_cancel_wins_over_every_end_but_success() -> None:
    flagged = running(cancel_requested=True)
    for end in (AttemptEnd.requeued("drain"), AttemptEnd.owner_lost("node-a", 1),
                AttemptEnd.failed(error_of(FailureCode.KILLED, "SIGKILL"))):
        move = move_for(flagged, 1, end)
        assert move.target is JobState.CANCELLED and end.message in move.message
    assert move_for(flagged, 1, AttemptEnd.succeeded("done", {})).target is JobState.SUCCEEDED


def test_exit_statuses_are_named_on_both_sides() -> None:
    assert [int(s) for s in (TrainerExit.SUCCEEDED, TrainerExit.FAILED, TrainerExit.NOT_CURRENT_ATTEMPT,
                             TrainerExit.FENCED, TrainerExit.STOPPED,
                             TrainerExit.SUCCEEDED_UNRECORDED)] == [0, 1, 2, 3, 4, 5]
    assert failure_exit_status(FailureCode.INVALID_DATA) == TrainerExit.FAILURE_BASE == 64


@pytest.fixture
def supervisor(settings: Settings, store: JobStore) -> Iterator[Supervisor]:
    yield Supervisor(settings, store, owner="n")


def test_a_requeue_that_a_cancel_overtakes_is_recorded_as_cancelled(supervisor: Supervisor, store: JobStore) -> None:
    """The supervisor read the job before the cancel came; the store refuses the requeue, and it cancels."""
    store.create_job(SPEC)
    claimed = store.claim_next_job("n")
    assert claimed is not None
    store.request_cancel(claimed.id)
    supervisor.record_attempt_end(claimed, 1, AttemptEnd.requeued("Interrupted: supervisor n stopped."))
    ended = store.get_job(claimed.id)
    assert ended.state is JobState.CANCELLED
    states = [e for e in store.list_events(claimed.id) if e.kind == "state"]
    assert [e.state for e in states] == [JobState.QUEUED, JobState.RUNNING, JobState.CANCELLED]
    assert "Interrupted: supervisor n stopped." in states[-1].message


def test_a_stale_owner_records_nothing(supervisor: Supervisor, store: JobStore) -> None:
    job, _ = store.create_job(SPEC)
    first = store.claim_next_job("old")
    assert first is not None
    supervisor.record_attempt_end(first, 1, AttemptEnd.owner_lost("old", 1))
    store.claim_next_job("n")
    supervisor.record_attempt_end(first, 1, AttemptEnd.succeeded("late", {"loss": 1.0}))
    current = store.get_job(job.id)
    assert (current.state, current.attempt, current.result) == (JobState.RUNNING, 2, None)
