"""JobStore: the only code that reads and writes job rows, events and metrics."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any, overload

from sqlalchemy import Connection, Engine, Select, and_, delete, func, insert, or_, select, text, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from service.jobs import (
    INITIAL_STATES,
    TERMINAL_STATES,
    Job,
    JobError,
    JobEvent,
    JobState,
    MetricPoint,
    Progress,
    Worker,
    sources_of,
)
from service.store.dataset_store import DatasetNotFound
from service.store.job_statistics import (
    DurationBuckets,
    duration_buckets_query,
    failures_by_code_query,
    jobs_by_state_and_priority_query,
    oldest_queued_query,
    rows_to_buckets,
)
from service.store.queue_depth import queue_depth_sql
from service.store.tables import datasets, job_events, jobs, metrics, webhook_deliveries, workers
from service.store.tenant_lock import lock_tenant
from service.store.webhook_store import ANNOUNCED_EVENT_KINDS, EVALUATION_READY, queue_delivery, webhook_url
from service.tenants import DEFAULT_TENANT, QuotaReached, Quotas


class JobNotFound(LookupError):
    """No job has this id."""


class IdempotencyConflict(RuntimeError):
    """An Idempotency-Key was reused with a different spec."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(f"idempotency key {key!r} belongs to job {job_id} with a different spec")
        self.key = key
        self.job_id = job_id


class JobInUse(RuntimeError):
    """A job cannot be deleted now: it has not finished, or other jobs still need its files.

    ``job`` is the job as it is now; ``dependents`` are the queued or running jobs that continue
    from its model, and ``reusers`` the jobs that serve its published files as their own.
    """

    def __init__(self, job: Job, dependents: Sequence[str] = (), reusers: Sequence[str] = ()) -> None:
        if not job.state.is_terminal:
            reason = f"it is {job.state.value}"
        elif dependents:
            reason = f"queued or running job(s) continue from its model or predict with it: {', '.join(dependents)}"
        else:
            reason = f"job(s) reused its files: {', '.join(reusers)}"
        super().__init__(f"job {job.id} cannot be deleted: {reason}")
        self.job = job
        self.dependents = list(dependents)
        self.reusers = list(reusers)


class InvalidTransition(RuntimeError):
    """The job is not in a state that allows the requested move, or another writer moved it first.

    ``job`` is the job as it is now, for the caller to decide what that means.
    """

    def __init__(self, job: Job, target: JobState) -> None:
        super().__init__(f"job {job.id} is {job.state.value}; it cannot become {target.value}")
        self.job = job
        self.target = target


# An arbitrary constant that names the retention lock among PostgreSQL advisory locks.
PRUNING_LOCK_KEY = 0x66697402


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


@overload
def _aware(value: datetime) -> datetime: ...
@overload
def _aware(value: None) -> None: ...
def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything stored is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def spec_digest(spec: dict[str, Any]) -> str:
    """A stable hash of a spec, to tell whether two submissions asked for the same job."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_job_id() -> str:
    """A fresh, unguessable job id."""
    return f"job_{uuid.uuid4().hex}"


def _event_from_row(row: Row[Any]) -> JobEvent:
    return JobEvent(id=row.id, job_id=row.job_id, kind=row.kind, message=row.message,
                    created_at=_aware(row.created_at),
                    state=JobState(row.state) if row.state else None, data=row.data)


# A job as lists show it: every column but the spec (only its model) and the result, which can be
# megabytes each (inline records, evaluation reports).
SUMMARY_COLUMNS = [*(column for column in jobs.c if column.name not in ("spec", "result")),
                   jobs.c.spec["model"].label("spec_model")]

# A job as its webhook events need it: every column but the spec (only its webhook) and the result.
WEBHOOK_COLUMNS = [*(column for column in jobs.c if column.name not in ("spec", "result")),
                   jobs.c.spec["webhook"].label("spec_webhook")]


def _job_from_row(row: Row[Any]) -> Job:
    m: dict[str, Any] = dict(row._mapping)
    if "spec_model" in m:  # a summary row (SUMMARY_COLUMNS)
        m.update(spec={"model": m["spec_model"]}, result=None)
    if "spec_webhook" in m:  # a row of WEBHOOK_COLUMNS
        m.update(spec={"webhook": m["spec_webhook"]} if m["spec_webhook"] is not None else {}, result=None)
    error = (JobError(m["error_code"], m["error_message"] or "", bool(m["error_retryable"]))
             if m["error_code"] else None)
    return Job(
        id=m["id"], seq=m["seq"], state=JobState(m["state"]), spec=m["spec"],
        created_at=_aware(m["created_at"]),
        updated_at=_aware(m["updated_at"]), started_at=_aware(m["started_at"]),
        finished_at=_aware(m["finished_at"]), heartbeat_at=_aware(m["heartbeat_at"]),
        attempt=m["attempt"], owner=m["owner"], cancel_requested=bool(m["cancel_requested"]),
        progress=Progress(**(m["progress"] or {})), error=error, result=m["result"],
        priority=m["priority"], max_attempts=m["max_attempts"], free_attempts=m["free_attempts"],
        max_runtime_seconds=m["max_runtime_seconds"], gpus=m["gpus"], gpu_type=m["gpu_type"],
        lease_expires_at=_aware(m["lease_expires_at"]), fingerprint=m["fingerprint"],
        reused_from=m["reused_from"], tenant=m["tenant"], kind=m["kind"],
    )


class JobStore:
    """Creates, claims and moves jobs; records their events and metrics."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            # SQLite: take the write lock at BEGIN so two writers never deadlock on upgrade.
            conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self._read() as conn:
            conn.execute(text("SELECT 1"))

    # -- jobs -----------------------------------------------------------------------------

    def create_job(self, spec: dict[str, Any], *, idempotency_key: str | None = None,
                   priority: int = 0, max_attempts: int = 3,
                   max_runtime_seconds: int | None = None,
                   gpus: int | None = None, gpu_type: str | None = None, fingerprint: str | None = None,
                   reuse_of: Job | None = None, tenant: str = DEFAULT_TENANT,
                   quotas: Quotas | None = None, uploads: Sequence[str] = (),
                   parent: str | None = None, kind: str = "train") -> tuple[Job, bool]:
        """Queue a new job of ``kind`` for ``spec`` in ``tenant``; returns (job, created).

        With ``reuse_of`` (a job find_reusable_job gave for the same ``fingerprint``) the job is
        created succeeded instead, with that job's result and progress, and never trains.
        With an ``idempotency_key`` already used for the same spec, the existing job comes
        back with created=False; used for a different spec, IdempotencyConflict is raised.
        Keys are the tenant's own. A job to queue that would take the tenant past the
        active_jobs or gpus of ``quotas`` raises QuotaReached instead. The uploaded datasets in
        ``uploads`` are locked while the job is inserted (see DatasetStore.remove), and
        DatasetNotFound is raised when one no longer exists. So is the row of ``parent``, the
        succeeded job whose model the spec continues from (see delete_job): JobNotFound is
        raised when it was deleted meanwhile.
        """
        digest = spec_digest(spec)
        if idempotency_key is not None:
            existing = self._find_by_key(idempotency_key, digest, tenant)
            if existing is not None:
                return existing, False
        now = utcnow()
        job_id = new_job_id()
        values = dict(id=job_id, spec=spec, created_at=now, updated_at=now, attempt=0,
                      cancel_requested=False, priority=priority, max_attempts=max_attempts,
                      max_runtime_seconds=max_runtime_seconds, gpus=gpus, gpu_type=gpu_type,
                      idempotency_key=idempotency_key, spec_hash=digest, fingerprint=fingerprint,
                      tenant=tenant, kind=kind)
        try:
            with self._write() as conn:
                self._lock_uploads(conn, uploads)
                if parent is not None:
                    self._lock_job(conn, parent)
                source = (self._reusable(conn, reuse_of.id, fingerprint)
                          if reuse_of is not None and fingerprint is not None else None)
                if source is None:
                    if quotas is not None:
                        self._check_job_quotas(conn, tenant, quotas, gpus)
                    return self._insert_job(conn, JobState.QUEUED, "Job queued.", {**values, "progress": {}}), True
                return self._insert_reused(conn, values, source), True
        except IntegrityError:
            # Another request with the same key won the race; answer with its job.
            if idempotency_key is None:
                raise
            existing = self._find_by_key(idempotency_key, digest, tenant)
            if existing is None:
                raise
            return existing, False

    @staticmethod
    def _lock_uploads(conn: Connection, uploads: Sequence[str]) -> None:
        """Lock the rows of these uploaded datasets until the transaction ends; DatasetNotFound if one is gone.

        A delete of one of them waits for this transaction, and then sees the job it inserted;
        a delete that locked first has removed the row once this lock is granted.
        """
        wanted = sorted(set(uploads))
        if not wanted:
            return
        found = set(conn.execute(select(datasets.c.id).where(datasets.c.id.in_(wanted))
                                 .order_by(datasets.c.id).with_for_update()).scalars())
        for dataset_id in wanted:
            if dataset_id not in found:
                raise DatasetNotFound(dataset_id)

    def _check_job_quotas(self, conn: Connection, tenant: str, quotas: Quotas, gpus: int | None) -> None:
        """Raise QuotaReached when one more job (needing ``gpus``) takes ``tenant`` past its quotas."""
        if not (quotas.active_jobs or quotas.gpus):
            return
        lock_tenant(conn, tenant)
        active, gpus_in_use = self._active_use(conn, tenant)
        if quotas.active_jobs and active + 1 > quotas.active_jobs:
            raise QuotaReached("active_jobs", quotas.active_jobs, active)
        if quotas.gpus and gpus_in_use + (1 if gpus is None else gpus) > quotas.gpus:
            raise QuotaReached("gpus", quotas.gpus, gpus_in_use)

    @staticmethod
    def _active_use(conn: Connection, tenant: str) -> tuple[int, int]:
        row = conn.execute(select(func.count(), func.coalesce(func.sum(func.coalesce(jobs.c.gpus, 1)), 0)).where(
            jobs.c.tenant == tenant,
            jobs.c.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))).one()
        return int(row[0]), int(row[1])

    def active_use(self, tenant: str) -> tuple[int, int]:
        """(queued plus running jobs, GPUs they request) of a tenant; no request counts as one GPU."""
        with self._read() as conn:
            return self._active_use(conn, tenant)

    def find_reusable_job(self, fingerprint: str, tenant: str = DEFAULT_TENANT) -> Job | None:
        """The tenant's newest job that trained this fingerprint itself and succeeded, or None."""
        with self._read() as conn:
            row = conn.execute(self._reusable_query(fingerprint).where(jobs.c.tenant == tenant)
                               .order_by(jobs.c.seq.desc()).limit(1)).first()
        return _job_from_row(row) if row is not None else None

    @staticmethod
    def _reusable_query(fingerprint: str) -> Select[Any]:
        # Only jobs that trained: a reused job's files are its source's, so naming the source
        # keeps every reuse one hop from the published artifacts.
        return select(jobs).where(jobs.c.fingerprint == fingerprint,
                                  jobs.c.state == JobState.SUCCEEDED.value, jobs.c.reused_from.is_(None))

    def _reusable(self, conn: Connection, job_id: str, fingerprint: str) -> Job | None:
        # Locked, like a parent's row: a delete of the source waits for this job, and then sees it.
        row = conn.execute(self._reusable_query(fingerprint).where(jobs.c.id == job_id).with_for_update()).first()
        return _job_from_row(row) if row is not None else None

    def _insert_reused(self, conn: Connection, values: dict[str, Any], source: Job) -> Job:
        # Created in its final state rather than moved there: the job never waits or runs, so
        # no transition applies. The source was read in this transaction and succeeded is
        # terminal, so its result cannot change before this commits.
        reused = (f"The same spec, data and model as job {source.id}, which succeeded: its result "
                  "and artifacts are reused and nothing is trained.")
        return self._insert_job(
            conn, JobState.SUCCEEDED, f"Succeeded at once, reusing job {source.id}.",
            {**values, "finished_at": values["created_at"], "progress": source.progress.__dict__,
             "result": source.result, "reused_from": source.id},
            data={"reused_from": source.id}, preceded_by=[("reused", reused, {"source_job": source.id})])

    def _find_by_key(self, key: str, digest: str, tenant: str) -> Job | None:
        with self._read() as conn:
            row = conn.execute(select(jobs).where(jobs.c.tenant == tenant, jobs.c.idempotency_key == key)).first()
        if row is None:
            return None
        if row._mapping["spec_hash"] != digest:
            raise IdempotencyConflict(key, row._mapping["id"])
        return _job_from_row(row)

    def get_job(self, job_id: str) -> Job:
        """The job with this id; raises JobNotFound."""
        with self._read() as conn:
            return self._get(conn, job_id)

    def list_jobs(self, *, state: JobState | None = None, limit: int = 20,
                  before_seq: int | None = None, tenant: str | None = None,
                  summary: bool = False, kind: str | None = None) -> tuple[list[Job], int | None]:
        """Newest first, of one tenant or (None) all, of one kind or (None) all; returns a page and
        the seq to continue before, or None at the end.

        With ``summary`` the jobs carry only their model as spec, and no result: neither is read.
        """
        query = select(*SUMMARY_COLUMNS) if summary else select(jobs)
        query = query.order_by(jobs.c.seq.desc()).limit(limit + 1)
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        if state is not None:
            query = query.where(jobs.c.state == state.value)
        if kind is not None:
            query = query.where(jobs.c.kind == kind)
        if before_seq is not None:
            query = query.where(jobs.c.seq < before_seq)
        with self._read() as conn:
            page = [_job_from_row(row) for row in conn.execute(query)]
        if len(page) > limit:
            return page[:limit], page[limit - 1].seq
        return page, None

    def claim_next_job(self, owner: str, lease_seconds: float = 60.0, *,
                       free_gpus: int = 0, node_gpus: int = 0, exact: bool = False,
                       gpu_type: str | None = None) -> Job | None:
        """Move the job this node runs next to running, if its GPUs are free; None otherwise.

        The job a node runs next is the first queued job, by priority (highest first) and then
        age, that the node could run at all: one needing at most ``node_gpus`` GPUs (a job
        without a request takes one GPU on a GPU node and none on a node without GPUs). When
        that job needs more than ``free_gpus``, nothing is claimed: the node holds its GPUs for
        it as they free up and takes no smaller job that would delay it. There is no backfill:
        without an estimate of how long a job runs, no smaller job is known to end in time.
        Counts an attempt and gives ``owner`` a lease it must renew by heartbeating.

        A worker of ``gpu_type`` also runs jobs that name its type; one without a type runs only
        jobs that name none. ``exact`` claims only jobs needing exactly ``node_gpus`` GPUs and
        naming exactly the worker's type, or none when it has none (a worker sized to its job:
        the jobs ``queue_depth(node_gpus, gpu_type)`` counts, for a GPU node).
        """
        needed = func.coalesce(jobs.c.gpus, 1 if node_gpus else 0)
        fits = needed == node_gpus if exact else needed <= node_gpus
        typed: ColumnElement[bool]
        if gpu_type is None:
            typed = jobs.c.gpu_type.is_(None)
        elif exact:
            typed = jobs.c.gpu_type == gpu_type
        else:
            typed = or_(jobs.c.gpu_type.is_(None), jobs.c.gpu_type == gpu_type)
        with self._write() as conn:
            # SKIP LOCKED passes over a job another claimer holds at this instant, as every
            # PostgreSQL queue does; the job after it is then this node's next.
            candidate = conn.execute(
                select(jobs.c.id, jobs.c.attempt, needed.label("needed"))
                .where(jobs.c.state == JobState.QUEUED.value, fits, typed)
                .order_by(jobs.c.priority.desc(), jobs.c.seq).limit(1)
                .with_for_update(skip_locked=True)).first()
            if candidate is None or candidate.needed > free_gpus:
                return None
            now = utcnow()
            attempt = candidate.attempt + 1
            # Fenced by the attempt read above as well as by the state: a claim never lands on
            # a job that was claimed, ended and queued again in between.
            return self._move(conn, candidate.id, JobState.RUNNING, f"Attempt {attempt} started on {owner}.",
                              attempt=candidate.attempt,
                              values=dict(attempt=attempt, owner=owner, started_at=now, heartbeat_at=now,
                                          progress={}, lease_expires_at=now + timedelta(seconds=lease_seconds)),
                              data={"attempt": attempt, "owner": owner})

    def transition(self, job_id: str, target: JobState, message: str, *,
                   attempt: int | None = None, error: JobError | None = None,
                   result: dict[str, Any] | None = None,
                   data: dict[str, Any] | None = None, free_attempt: bool = False) -> Job:
        """Move a job and log the move in one transaction.

        With ``attempt`` the move only happens while that attempt is the current one, so a
        stale owner cannot overwrite a newer attempt. ``free_attempt`` stops the ending attempt
        from counting against max_attempts. A job whose cancel was requested is never queued
        again: that move is refused too. Raises InvalidTransition when refused.
        """
        values: dict[str, Any] = {}
        if target is JobState.QUEUED:
            values.update(owner=None, heartbeat_at=None, lease_expires_at=None)
        if error is not None:
            values.update(error_code=error.code, error_message=error.message,
                          error_retryable=error.retryable)
        if result is not None:
            values["result"] = result
        if free_attempt:
            values["free_attempts"] = jobs.c.free_attempts + 1
        event_data = dict(data or {})
        if error is not None:
            event_data.update(code=error.code, retryable=error.retryable)
        with self._write() as conn:
            job = self._move(conn, job_id, target, message, attempt=attempt, values=values,
                             data=event_data or None)
            if job is None:
                raise InvalidTransition(self._get(conn, job_id), target)
            return job

    def request_cancel(self, job_id: str) -> Job:
        """Cancel a queued job now, or flag a running one for its supervisor to stop.

        Idempotent for jobs already cancelled or flagged; raises InvalidTransition for jobs
        that already succeeded or failed. A queued job that a supervisor claims while this
        runs is not cancelled under its trainer: its running attempt is flagged instead.
        """
        with self._write() as conn:
            while True:
                cancelled = self._move(conn, job_id, JobState.CANCELLED, "Cancelled before it started.",
                                       sources={JobState.QUEUED})
                if cancelled is not None:
                    return cancelled
                # Not queued, or no longer: a claim may have just won, so its attempt is flagged for
                # the supervisor, which stops the trainer and records the cancel itself.
                flagged = conn.execute(update(jobs).where(
                    jobs.c.id == job_id, jobs.c.state == JobState.RUNNING.value, jobs.c.cancel_requested.is_(False))
                    .values(cancel_requested=True, updated_at=utcnow()).returning(*jobs.c)).first()
                if flagged is not None:
                    job = _job_from_row(flagged)
                    self._append_event(conn, job_id, "cancel_requested",
                                       "Cancellation requested; stopping the trainer.", data={"attempt": job.attempt})
                    return job
                job = self._get(conn, job_id)
                if job.state is JobState.CANCELLED or (job.state is JobState.RUNNING and job.cancel_requested):
                    return job
                if job.state is not JobState.QUEUED:
                    raise InvalidTransition(job, JobState.CANCELLED)
                # Queued again between the two statements (its attempt was interrupted): once more.

    def heartbeat(self, job_id: str, attempt: int, lease_seconds: float = 60.0) -> bool:
        """Mark the attempt alive and renew its lease; False when it is no longer current."""
        now = utcnow()
        with self._write() as conn:
            beat = conn.execute(update(jobs).where(
                jobs.c.id == job_id, jobs.c.attempt == attempt,
                jobs.c.state == JobState.RUNNING.value).values(
                heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds)))
            return beat.rowcount == 1

    def jobs_owned_by(self, owner: str) -> list[Job]:
        """Running jobs whose current attempt belongs to ``owner``."""
        with self._read() as conn:
            rows = conn.execute(select(jobs).where(jobs.c.owner == owner,
                                                   jobs.c.state == JobState.RUNNING.value))
            return [_job_from_row(row) for row in rows]

    def count_queued_ahead(self, job: Job, max_gpus: int) -> int:
        """Queued jobs claimed before ``job`` (higher priority, or as high and older) that need at
        most ``max_gpus`` GPUs, so that some worker can run them."""
        runnable = or_(jobs.c.gpus.is_(None), jobs.c.gpus <= max_gpus)
        ahead = or_(jobs.c.priority > job.priority, and_(jobs.c.priority == job.priority, jobs.c.seq < job.seq))
        with self._read() as conn:
            return conn.execute(select(func.count()).select_from(jobs).where(
                jobs.c.state == JobState.QUEUED.value, runnable, ahead)).scalar_one()

    def queue_depth(self, gpus: int, gpu_type: str | None = None) -> int:
        """Queued jobs needing exactly ``gpus`` GPUs (no request counts as one) of ``gpu_type`` (None: jobs
        naming no type): KEDA's trigger query."""
        with self._read() as conn:
            return int(conn.execute(text(queue_depth_sql(gpus, gpu_type))).scalar_one())

    def queued_gpu_sizes(self) -> list[tuple[int, str | None]]:
        """The (GPU size, GPU type) pairs, as queue_depth counts them, of the queued jobs."""
        with self._read() as conn:
            sizes = conn.execute(select(func.coalesce(jobs.c.gpus, 1), jobs.c.gpu_type).distinct()
                                 .where(jobs.c.state == JobState.QUEUED.value))
            return sorted(((int(size), kind) for size, kind in sizes), key=lambda pair: (pair[0], pair[1] or ""))

    def running_gpu_requests(self) -> list[tuple[str | None, int | None]]:
        """(owner, GPU request) of every running job; a None request takes one GPU on a GPU node."""
        with self._read() as conn:
            rows = conn.execute(select(jobs.c.owner, jobs.c.gpus).where(jobs.c.state == JobState.RUNNING.value))
            return [(row.owner, row.gpus) for row in rows]

    def expired_jobs(self, now: datetime | None = None) -> list[Job]:
        """Running jobs whose lease ran out: their owner stopped heartbeating."""
        with self._read() as conn:
            rows = conn.execute(select(jobs).where(jobs.c.state == JobState.RUNNING.value,
                                                   jobs.c.lease_expires_at < (now or utcnow())))
            return [_job_from_row(row) for row in rows]

    # -- progress, metrics, events -----------------------------------------------------------

    def record_progress(self, job_id: str, attempt: int, progress: Progress,
                        points: Sequence[MetricPoint] = ()) -> bool:
        """Store progress and new metric points of a running attempt; False if it is stale."""
        now = utcnow()
        with self._write() as conn:
            updated = conn.execute(update(jobs).where(
                jobs.c.id == job_id, jobs.c.attempt == attempt,
                jobs.c.state == JobState.RUNNING.value).values(
                progress=progress.__dict__, updated_at=now))
            if updated.rowcount != 1:
                return False
            if points:
                conn.execute(insert(metrics), [
                    {"job_id": job_id, "attempt": attempt, "name": p.name, "value": p.value,
                     "epoch": p.epoch, "step": p.step, "recorded_at": now} for p in points])
            return True

    def list_metrics(self, job_id: str) -> list[MetricPoint]:
        """The job's metric series across attempts, ordered by epoch and step.

        An attempt that resumed from a checkpoint repeats the steps after it; for every
        (name, epoch, step) the value of the latest attempt wins, so no epoch or step
        appears twice.
        """
        with self._read() as conn:
            self._get(conn, job_id)
            rows = conn.execute(select(metrics).where(metrics.c.job_id == job_id)
                                .order_by(metrics.c.attempt, metrics.c.id))
            latest = {(r.name, r.epoch, r.step): MetricPoint(name=r.name, value=r.value, epoch=r.epoch, step=r.step)
                      for r in rows}
        return sorted(latest.values(), key=lambda p: (p.epoch, p.step is not None, p.step or 0))

    def append_event(self, job_id: str, kind: str, message: str, *,
                     attempt: int | None = None, data: dict[str, Any] | None = None) -> bool:
        """Log an event; with ``attempt`` only while that attempt is current."""
        with self._write() as conn:
            if attempt is not None:
                current = conn.execute(select(jobs.c.attempt).where(jobs.c.id == job_id)).scalar()
                if current != attempt:
                    return False
            event_id = self._append_event(conn, job_id, kind, message, data=data)
            announced = ANNOUNCED_EVENT_KINDS.get(kind)
            if announced is not None:
                # Only the webhook of the spec is read: a spec can hold megabytes of inline rows.
                row = conn.execute(select(*WEBHOOK_COLUMNS).where(jobs.c.id == job_id)).one()
                job = _job_from_row(row)
                self._announce(conn, job_id, webhook_url(job.spec), announced,
                               self._webhook_data(job, event_id, message))
            return True

    def has_event(self, job_id: str, kind: str, attempt: int) -> bool:
        """Whether the job logged an event of ``kind`` whose data names ``attempt``."""
        with self._read() as conn:
            rows = conn.execute(select(job_events).where(job_events.c.job_id == job_id, job_events.c.kind == kind))
            return any((_event_from_row(row).data or {}).get("attempt") == attempt for row in rows)

    def list_events(self, job_id: str, *, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        """Events of a job with an id above ``after``, oldest first."""
        with self._read() as conn:
            self._get(conn, job_id)
            rows = conn.execute(select(job_events).where(
                job_events.c.job_id == job_id, job_events.c.id > after)
                .order_by(job_events.c.id).limit(limit))
            return [_event_from_row(row) for row in rows]

    def events_of_jobs(self, job_ids: Collection[str], *, after: int) -> list[JobEvent]:
        """Events of any of ``job_ids`` with an id above ``after``, oldest first, in one query."""
        if not job_ids:
            return []
        with self._read() as conn:
            rows = conn.execute(select(job_events).where(
                job_events.c.job_id.in_(sorted(job_ids)), job_events.c.id > after)
                .order_by(job_events.c.id))
            return [_event_from_row(row) for row in rows]

    def last_event_id(self, job_id: str) -> int:
        """The id of the job's newest event (0 when it has none)."""
        with self._read() as conn:
            newest = conn.execute(select(func.max(job_events.c.id)).where(job_events.c.job_id == job_id)).scalar()
            return int(newest or 0)

    def count_jobs(self) -> dict[str, int]:
        """Number of jobs per state."""
        with self._read() as conn:
            rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state))
            return {state: count for state, count in rows}

    # -- deletion and retention -------------------------------------------------------------------

    def delete_job(self, job_id: str) -> Job:
        """Delete a finished job's row and every row that belongs to it, in one transaction; returns the job.

        The job's row is locked first (SELECT ... FOR UPDATE; SQLite's write lock), the same lock
        that create_job takes on a parent or reuse source, so no job can come to depend on it
        unseen. Raises JobNotFound, or JobInUse while the job is queued or running, while a
        queued or running job continues from its model (that job loads it when it starts, maybe
        again on a later attempt), or while a job that reused it remains (it serves the same
        published files). The caller removes the job's files after this commits.
        """
        with self._write() as conn:
            job = self._lock_job(conn, job_id)
            if not job.state.is_terminal:
                raise JobInUse(job)
            dependents = self._continuations_of(conn, job_id)
            reusers = list(conn.execute(select(jobs.c.id).where(jobs.c.reused_from == job_id)
                                        .order_by(jobs.c.seq)).scalars())
            if dependents or reusers:
                raise JobInUse(job, dependents, reusers)
            # Every table with a job_id column, named here so that deleting never relies on the
            # database's ON DELETE CASCADE (SQLite enforces it only with foreign_keys on).
            for child in (job_events, metrics, webhook_deliveries):
                conn.execute(delete(child).where(child.c.job_id == job_id))
            conn.execute(delete(jobs).where(jobs.c.id == job_id))
            return job

    @staticmethod
    def _continuations_of(conn: Connection, job_id: str) -> list[str]:
        """Queued and running jobs whose spec continues from ``job_id``'s model or predicts with it."""
        return list(conn.execute(select(jobs.c.id).where(
            jobs.c.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
            or_(jobs.c.spec[("model", "job")].as_string() == job_id,
                and_(jobs.c.kind == "predict", jobs.c.spec["job"].as_string() == job_id)))
            .order_by(jobs.c.seq)).scalars())

    def expired_job_ids(self, finished_before: datetime, *, limit: int = 500) -> list[str]:
        """Finished jobs that finished before ``finished_before``, jobs that reused another's files first.

        Reusers come first so that a pass that deletes them can then delete their source too.
        """
        with self._read() as conn:
            rows = conn.execute(select(jobs.c.id).where(
                jobs.c.state.in_(sorted(state.value for state in TERMINAL_STATES)),
                jobs.c.finished_at < finished_before)
                .order_by(jobs.c.reused_from.is_(None), jobs.c.finished_at, jobs.c.seq).limit(limit))
            return list(rows.scalars())

    def existing_job_ids(self, job_ids: Collection[str]) -> set[str]:
        """Those of ``job_ids`` that have a row."""
        wanted = sorted(set(job_ids))
        found: set[str] = set()
        with self._read() as conn:
            for start in range(0, len(wanted), 500):
                found.update(conn.execute(select(jobs.c.id).where(jobs.c.id.in_(wanted[start:start + 500]))).scalars())
        return found

    def jobs_reading_upload(self, dataset_id: str) -> list[str]:
        """Every job, in any state, whose spec reads the uploaded dataset (training, validation or prediction data)."""
        with self._read() as conn:
            return list(conn.execute(select(jobs.c.id).where(or_(
                jobs.c.spec[("data", "train", "upload")].as_string() == dataset_id,
                jobs.c.spec[("data", "validation", "upload")].as_string() == dataset_id,
                and_(jobs.c.kind == "predict", jobs.c.spec[("data", "upload")].as_string() == dataset_id)))
                .order_by(jobs.c.seq)).scalars())

    @contextmanager
    def pruning_lock(self) -> Iterator[bool]:
        """Yield whether this process holds the retention lock, held until the block ends.

        On PostgreSQL a session-level advisory lock taken with pg_try_advisory_lock on a
        connection of its own, so supervisors of several nodes never prune at once and none
        waits for another; it goes with the connection if the process dies. SQLite serves one
        node, whose one supervisor prunes.
        """
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        with self.engine.connect() as conn:
            held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": PRUNING_LOCK_KEY}).scalar())
            conn.commit()
            try:
                yield held
            finally:
                if held:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PRUNING_LOCK_KEY})
                    conn.commit()
    def count_jobs_by_priority(self) -> dict[tuple[str, int], int]:
        """Number of jobs per (state, priority)."""
        with self._read() as conn:
            return {(state, int(priority)): count
                    for state, priority, count in conn.execute(jobs_by_state_and_priority_query())}

    def count_failures_by_code(self) -> dict[str, int]:
        """Number of failed jobs per error code."""
        with self._read() as conn:
            return {code or "": count for code, count in conn.execute(failures_by_code_query())}

    def oldest_queued_since(self) -> datetime | None:
        """When the longest-waiting queued job entered the queue; None when none waits."""
        with self._read() as conn:
            return _aware(conn.execute(oldest_queued_query()).scalar())

    def finished_job_durations(self, bounds: Mapping[str, Sequence[float]]) -> dict[str, list[DurationBuckets]]:
        """Finished jobs' durations (service.store.job_statistics.DURATIONS: "queue_wait", "startup",
        "run") in cumulative buckets per outcome, for the bucket bounds given for each name."""
        with self._read() as conn:
            return rows_to_buckets(list(conn.execute(duration_buckets_query(bounds))), bounds)

    # -- workers ------------------------------------------------------------------------------

    def register_worker(self, worker_id: str, hostname: str, gpus: int, slots: int,
                        gpu_type: str | None = None) -> None:
        """Record a supervisor and what it offers (replacing an earlier record of it)."""
        now = utcnow()
        with self._write() as conn:
            conn.execute(delete(workers).where(workers.c.id == worker_id))
            conn.execute(insert(workers).values(id=worker_id, hostname=hostname, gpus=gpus, slots=slots,
                                                gpu_type=gpu_type, started_at=now, heartbeat_at=now))

    def worker_heartbeat(self, worker_id: str) -> None:
        """Mark a supervisor alive."""
        with self._write() as conn:
            conn.execute(update(workers).where(workers.c.id == worker_id).values(heartbeat_at=utcnow()))

    def deregister_worker(self, worker_id: str) -> None:
        """Forget a supervisor that stopped cleanly."""
        with self._write() as conn:
            conn.execute(delete(workers).where(workers.c.id == worker_id))

    def live_workers(self, since: datetime) -> list[Worker]:
        """Supervisors that heartbeated after ``since``."""
        with self._read() as conn:
            rows = conn.execute(select(workers).where(workers.c.heartbeat_at >= since).order_by(workers.c.id))
            return [Worker(id=r.id, hostname=r.hostname, gpus=r.gpus, slots=r.slots, gpu_type=r.gpu_type,
                           started_at=_aware(r.started_at),
                           heartbeat_at=_aware(r.heartbeat_at))
                    for r in rows]

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _lock_job(conn: Connection, job_id: str) -> Job:
        """The job, its row locked until the transaction ends; JobNotFound when there is none."""
        row = conn.execute(select(jobs).where(jobs.c.id == job_id).with_for_update()).first()
        if row is None:
            raise JobNotFound(job_id)
        return _job_from_row(row)

    @staticmethod
    def _get(conn: Connection, job_id: str) -> Job:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(job_id)
        return _job_from_row(row)

    def _insert_job(self, conn: Connection, state: JobState, message: str, values: dict[str, Any], *,
                    data: dict[str, Any] | None = None,
                    preceded_by: Sequence[tuple[str, str, dict[str, Any] | None]] = ()) -> Job:
        """Insert a job in one of its initial states and log that state, in the caller's transaction.

        ``preceded_by`` are (kind, message, data) events logged before the state event.
        """
        if state not in INITIAL_STATES:
            raise ValueError(f"a job is never created {state.value}")
        row = conn.execute(insert(jobs).values(state=state.value, **values).returning(*jobs.c)).one()
        for kind, event_message, event_data in preceded_by:
            self._append_event(conn, values["id"], kind, event_message, data=event_data)
        job = _job_from_row(row)
        event_id = self._append_event(conn, values["id"], "state", message, state=state, data=data)
        self._announce_state(conn, job, event_id, message)
        if job.reused_from is not None:
            # Its evaluation report is its source's, served from the moment it exists.
            self._announce(conn, job.id, webhook_url(job.spec), EVALUATION_READY,
                           self._webhook_data(job, event_id, f"The evaluation report of job {job.reused_from} "
                                                             "is this job's."))
        return job

    def _move(self, conn: Connection, job_id: str, target: JobState, message: str, *,
              sources: frozenset[JobState] | set[JobState] | None = None, attempt: int | None = None,
              values: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> Job | None:
        """Move a job to ``target`` in one guarded UPDATE and log the move, in the caller's transaction.

        Every move of a job's state goes through here (a new job's first state is written by
        _insert_job). The UPDATE matches only while the job is in one of ``sources`` (by default
        every state the transition table allows a move to ``target`` from) and, with ``attempt``,
        at that attempt; ``values`` are further columns to set. Returns the moved job, or None
        when the guard did not match: the job is in another state, or another writer moved it
        first, and nothing was written.
        """
        allowed = sources_of(target)
        guarded = allowed if sources is None else frozenset(sources)
        if not guarded <= allowed:
            raise ValueError(f"no transition leads from {sorted(s.value for s in guarded - allowed)} "
                             f"to {target.value}")
        now = utcnow()
        changes: dict[str, Any] = {"updated_at": now, **(values or {}), "state": target.value}
        if target.is_terminal:
            changes.setdefault("finished_at", now)
        condition = [jobs.c.id == job_id, jobs.c.state.in_(sorted(s.value for s in guarded))]
        if attempt is not None:
            condition.append(jobs.c.attempt == attempt)
        if target is JobState.QUEUED:
            # A job whose cancel was requested never waits for another attempt; the caller
            # cancels it instead.
            condition.append(jobs.c.cancel_requested.is_(False))
        row = conn.execute(update(jobs).where(*condition).values(**changes).returning(*jobs.c)).first()
        if row is None:
            return None
        job = _job_from_row(row)
        event_id = self._append_event(conn, job_id, "state", message, state=target, data=data)
        self._announce_state(conn, job, event_id, message)
        return job

    @staticmethod
    def _append_event(conn: Connection, job_id: str, kind: str, message: str, *,
                      state: JobState | None = None, data: dict[str, Any] | None = None) -> int:
        """Log an event in the caller's transaction; returns its id."""
        return int(conn.execute(insert(job_events).values(
            job_id=job_id, created_at=utcnow(), kind=kind, message=message,
            state=state.value if state else None, data=data).returning(job_events.c.id)).scalar_one())

    @staticmethod
    def _webhook_data(job: Job, event_id: int, message: str) -> dict[str, Any]:
        """What a webhook event says about the job it announces."""
        return {"job_id": job.id, "state": job.state.value, "attempt": job.attempt, "event_id": event_id,
                "message": message, "error": asdict(job.error) if job.error is not None else None}

    def _announce_state(self, conn: Connection, job: Job, event_id: int, message: str) -> None:
        """Queue the `job.<state>` webhook event of a job that just entered its state, if it has a webhook."""
        self._announce(conn, job.id, webhook_url(job.spec), f"job.{job.state.value}",
                       self._webhook_data(job, event_id, message))

    @staticmethod
    def _announce(conn: Connection, job_id: str, url: str | None, event_type: str, data: dict[str, Any]) -> None:
        # In the transaction of the event: the delivery exists exactly when the event does.
        if url is not None:
            queue_delivery(conn, job_id, url, event_type, data, utcnow())
