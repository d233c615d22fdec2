"""How an attempt ended, and the one move of its job that records it."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from service.jobs import FailureCode, Job, JobError, JobState


class Ending(str, enum.Enum):
    """How an attempt ended, as the supervisor records it."""

    SUCCEEDED = "succeeded"  # with the result
    # With an error (a code): queued again while the error is retryable and attempts remain.
    FAILED = "failed"
    REQUEUED = "requeued"  # interrupted through no fault of the job (a drain): queued again, the attempt free
    CANCELLED = "cancelled"  # stopped because its cancel was requested


@dataclass(frozen=True)
class AttemptEnd:
    """How one attempt of a job ended, and the reason in words for its event."""

    ending: Ending
    message: str
    error: JobError | None = None
    result: dict[str, Any] | None = None

    @classmethod
    def succeeded(cls, message: str, result: dict[str, Any]) -> AttemptEnd:
        """The attempt trained and published its model."""
        return cls(Ending.SUCCEEDED, message, result=result)

    @classmethod
    def failed(cls, error: JobError, result: dict[str, Any] | None = None) -> AttemptEnd:
        """The attempt failed with ``error``, keeping what it measured (``result``) if anything."""
        return cls(Ending.FAILED, error.message, error=error, result=result)

    @classmethod
    def requeued(cls, reason: str) -> AttemptEnd:
        """The attempt was interrupted through no fault of the job; another one does not count."""
        return cls(Ending.REQUEUED, reason)

    @classmethod
    def cancelled(cls, message: str) -> AttemptEnd:
        """The attempt was stopped because the job's cancel was requested."""
        return cls(Ending.CANCELLED, message)

    @classmethod
    def owner_lost(cls, owner: str | None, attempt: int) -> AttemptEnd:
        """The attempt's supervisor stopped heartbeating: a retryable owner_lost failure."""
        who = owner or "an unknown supervisor"
        return cls.failed(error_of(FailureCode.OWNER_LOST,
                                   f"{who} stopped heartbeating during attempt {attempt}; the node running "
                                   "this job stopped responding."))


# The event a supervisor logs for each running attempt when it starts draining (SIGTERM).
DRAIN_STARTED = "drain_started"


def lost_attempt_end(owner: str | None, attempt: int, drain_announced: bool) -> AttemptEnd:
    """How an attempt whose lease lapsed ended: preempted (free) if its supervisor had started draining.

    A node that is being taken away (spot preemption, a scale-down) sends SIGTERM and kills the
    pod after its grace period; when the checkpoint and the requeue did not fit in that period,
    the lapsed lease is the only trace left, and the drain notice says it was no fault of the job.
    """
    if drain_announced:
        who = owner or "its supervisor"
        return AttemptEnd.requeued(f"Preempted: {who} was stopped during attempt {attempt} and did not finish "
                                   "draining in its grace period; queued again without spending an attempt.")
    return AttemptEnd.owner_lost(owner, attempt)


@dataclass(frozen=True)
class Move:
    """The transition that records an attempt's end."""

    target: JobState
    message: str
    error: JobError | None = None
    result: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    free_attempt: bool = False


def move_for(job: Job, attempt: int, end: AttemptEnd) -> Move:
    """The move that records ``end`` of ``attempt``, for the job as read after the attempt ended.

    A requested cancel wins over every end but success; a retryable failure queues the job
    again while attempts remain.
    """
    if end.ending is Ending.SUCCEEDED:
        return Move(JobState.SUCCEEDED, end.message, result=end.result)
    if end.ending is Ending.CANCELLED:
        return Move(JobState.CANCELLED, end.message)
    if job.cancel_requested:
        return Move(JobState.CANCELLED, f"Cancelled while running; attempt {attempt} had ended: {end.message}")
    if end.ending is Ending.REQUEUED:
        return Move(JobState.QUEUED, end.message, free_attempt=True)
    error = end.error or error_of(FailureCode.INTERNAL, end.message)
    if error.retryable and job.attempts_spent < job.max_attempts:
        return Move(JobState.QUEUED, f"Attempt {attempt} failed ({error.code}: {error.message}); queued again "
                                     f"({job.attempts_spent} of {job.max_attempts} attempts used).",
                    data={"code": error.code})
    last = (f" Attempt {attempt} was the last of {job.max_attempts} allowed." if error.retryable else "")
    return Move(JobState.FAILED, error.message + last, error=error, result=end.result)


def error_of(code: FailureCode, message: str) -> JobError:
    """A JobError whose retryable flag follows from its code."""
    return JobError(code.value, message, code.retryable)
