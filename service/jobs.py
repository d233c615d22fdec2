"""The job domain: states, allowed transitions, failure codes and the frozen Job value."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# resources.gpu_type and FITJOBS_GPU_TYPE: a Kubernetes label value's characters (so no quotes).
GPU_TYPE_PATTERN = r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?"

class JobState(str, enum.Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for states a job never leaves."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# The only moves a job can make; running -> queued is an infrastructure interruption
# (the supervisor stopped), after which the job is claimed again.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED,
                                 JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


# States a job is created in: queued, or succeeded at once when it reuses the result of an
# identical job that succeeded (service.fingerprint) and so never waits or runs.
INITIAL_STATES = frozenset({JobState.QUEUED, JobState.SUCCEEDED})


def sources_of(target: JobState) -> frozenset[JobState]:
    """States from which a job may move to ``target``."""
    return frozenset(state for state, targets in TRANSITIONS.items() if target in targets)


class FailureCode(str, enum.Enum):
    """Why a job failed; stable strings other services branch on."""

    INVALID_DATA = "invalid_data"
    MODEL_NOT_FOUND = "model_not_found"
    UNSUPPORTED_MODEL = "unsupported_model"
    MODEL_LOAD_FAILED = "model_load_failed"
    OUT_OF_MEMORY = "out_of_memory"
    KILLED = "killed"
    TIMEOUT = "timeout"
    OWNER_LOST = "owner_lost"
    DISK_FULL = "disk_full"
    INTERNAL = "internal"
    # Appended last: exit statuses stand for codes by their position (service.trainer.outcome).
    BELOW_THRESHOLD = "below_threshold"
    STORAGE_UNAVAILABLE = "storage_unavailable"

    @property
    def retryable(self) -> bool:
        """Whether another attempt of the same spec may succeed (infrastructure, not the spec)."""
        return self in RETRYABLE_CODES


RETRYABLE_CODES = frozenset({FailureCode.OUT_OF_MEMORY, FailureCode.KILLED, FailureCode.OWNER_LOST,
                             FailureCode.DISK_FULL, FailureCode.STORAGE_UNAVAILABLE})


@dataclass(frozen=True)
class JobError:
    """A failed job's reason."""

    code: str
    message: str
    retryable: bool = False


@dataclass(frozen=True)
class Progress:
    """How far a running job has come."""

    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps_per_epoch: int | None = None
    examples_per_second: float | None = None
    eta_seconds: float | None = None
    step_seconds: float | None = None  # mean seconds per training step of this attempt so far


@dataclass(frozen=True)
class Job:
    """A job as read from the store; passed around instead of ORM rows."""

    id: str
    state: JobState
    spec: dict[str, Any]
    created_at: datetime
    attempt: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    heartbeat_at: datetime | None = None
    owner: str | None = None
    cancel_requested: bool = False
    progress: Progress = field(default_factory=Progress)
    error: JobError | None = None
    result: dict[str, Any] | None = None
    priority: int = 0
    max_attempts: int = 3
    free_attempts: int = 0
    max_runtime_seconds: int | None = None
    gpus: int | None = None
    gpu_type: str | None = None  # resources.gpu_type: only workers of this type claim the job
    lease_expires_at: datetime | None = None
    seq: int = 0
    # What the spec trains, hashed (service.fingerprint); None when its inputs were unreadable.
    fingerprint: str | None = None
    # The succeeded job whose result and artifacts this one reused instead of training.
    reused_from: str | None = None
    # The tenant the job belongs to (service.tenants).
    tenant: str = "default"
    # "train": its spec trains a model; "predict": its spec runs a trained job's model over data.
    kind: str = "train"

    @property
    def attempts_spent(self) -> int:
        """Attempts that count against max_attempts (drained ones are free)."""
        return self.attempt - self.free_attempts

    def gpus_needed(self, node_has_gpus: bool) -> int:
        """GPUs this job takes on a node: its request, or one by default where GPUs exist."""
        if self.gpus is not None:
            return self.gpus
        return 1 if node_has_gpus else 0


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event log."""

    id: int
    job_id: str
    kind: str
    message: str
    created_at: datetime
    state: JobState | None = None
    data: dict[str, Any] | None = None


# Metric names of phase durations ("phase_seconds.fit"); the metrics endpoint lists them apart.
PHASE_METRIC = "phase_seconds."


@dataclass(frozen=True)
class MetricPoint:
    """One recorded metric value; ``step`` is set for per-step values, else per-epoch."""

    name: str
    value: float
    epoch: int
    step: int | None = None


@dataclass(frozen=True)
class Worker:
    """A registered supervisor and what it offers."""

    id: str
    hostname: str
    gpus: int
    slots: int
    started_at: datetime
    heartbeat_at: datetime
    gpu_type: str | None = None  # FITJOBS_GPU_TYPE of the worker

    def can_run(self, job: Job) -> bool:
        """Whether this worker can ever run ``job``: enough GPUs, and its GPU type if it names one."""
        if job.gpu_type is not None and job.gpu_type != self.gpu_type:
            return False
        return job.gpus_needed(self.gpus > 0) <= self.gpus


class QueueReason(str, enum.Enum):
    """Why a queued job has not started yet."""

    # Jobs ahead of it go first, or running jobs hold the GPUs (or slots) it needs; first in
    # line with room free, it starts on a worker's next pass.
    WAITING_FOR_GPUS = "waiting_for_gpus"
    # First in line and larger than what any worker has free: workers hold their GPUs for it as
    # they free up and start no smaller job that would delay it.
    RESERVED = "reserved"
    # No live worker has as many GPUs as it needs; it starts once one registers.
    NO_WORKER_LARGE_ENOUGH = "no_worker_large_enough"
    # No worker is registered at all (workers scaled from zero start for queued jobs); it
    # starts once one registers.
    WAITING_FOR_WORKER = "waiting_for_worker"


@dataclass(frozen=True)
class QueuePlace:
    """Where a queued job stands: how many jobs workers take before it, and why it waits."""

    position: int
    reason: QueueReason


def place_in_queue(job: Job, ahead: int, workers: Sequence[Worker],
                   running: Sequence[tuple[str | None, int | None]]) -> QueuePlace:
    """The place of a queued job, given the ``ahead`` jobs workers take before it, the live
    ``workers`` and the (owner, GPU request) of every running job."""
    if not workers:
        return QueuePlace(ahead, QueueReason.WAITING_FOR_WORKER)
    able = [worker for worker in workers if worker.can_run(job)]
    if not able:
        return QueuePlace(ahead, QueueReason.NO_WORKER_LARGE_ENOUGH)
    if ahead:
        return QueuePlace(ahead, QueueReason.WAITING_FOR_GPUS)

    def has_room(worker: Worker) -> bool:
        held = [gpus for owner, gpus in running if owner == worker.id]
        used = sum(gpus if gpus is not None else (1 if worker.gpus else 0) for gpus in held)
        return len(held) < worker.slots and worker.gpus - used >= job.gpus_needed(worker.gpus > 0)

    return QueuePlace(0, QueueReason.WAITING_FOR_GPUS if any(map(has_room, able)) else QueueReason.RESERVED)
