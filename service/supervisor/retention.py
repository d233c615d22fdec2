"""Retention: deleting finished jobs and unused uploads once they are FITJOBS_RETENTION_DAYS old.

A pass deletes each expired job the way DELETE /v1/jobs/{id} does: its rows in one transaction
(JobStore.delete_job), then its files. Rows go first, so no job is ever shown whose files are
half gone; a crash between the two leaves files without a row, which the next pass removes
before anything else (files are only ever written for a job whose row exists, so a file whose
job has no row is left over). An upload's files are removed while its row is locked and before
the row is deleted, so a crash leaves a row the next pass deletes again.

A job is kept while it is queued or running, while a queued or running job continues from its
model, and while a job that reused its files remains (JobStore.delete_job refuses those). One
pass runs at a time over every node (JobStore.pruning_lock); a supervisor runs one when it
starts and then every FITJOBS_RETENTION_INTERVAL_SECONDS, on a thread of its own so that the
loop, and with it the leases of running jobs, never waits for it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from service.config import Settings
from service.locations import job_ids_with_files, remove_job_files
from service.store import JobNotFound, JobStore
from service.store.dataset_store import DatasetNotFound, DatasetStore
from service.store.job_store import JobInUse, utcnow
from service.uploads import remove_upload

log = logging.getLogger(__name__)


@dataclass
class PruneReport:
    """What one retention pass did; ``skipped`` when another node's pass held the lock."""

    jobs: list[str] = field(default_factory=list)
    kept_jobs: list[str] = field(default_factory=list)  # expired, but still needed (JobInUse)
    uploads: list[str] = field(default_factory=list)
    kept_uploads: list[str] = field(default_factory=list)  # expired, but a job reads them
    leftovers: list[str] = field(default_factory=list)  # jobs without a row whose files were removed
    skipped: bool = False


class UploadInUse(RuntimeError):
    """An expired upload is still read by a job; it stays."""


def remove_files_of(settings: Settings, job_id: str) -> None:
    """Delete a job's files in storage and on this node (service.locations.remove_job_files)."""
    remove_job_files(settings.storage, job_id, jobs_dir=settings.jobs_dir, artifacts_dir=settings.artifacts_dir,
                     cache_dir=settings.cache_dir)


def prune(settings: Settings, store: JobStore, *, now: datetime, days: float | None = None) -> PruneReport:
    """One retention pass as of ``now``, keeping ``days`` (default FITJOBS_RETENTION_DAYS; 0 prunes nothing)."""
    days = settings.retention_days if days is None else days
    report = PruneReport()
    if days <= 0:
        return report
    with store.pruning_lock() as held:
        if not held:
            report.skipped = True
            log.info("retention: another node's pass is running; skipped")
            return report
        cutoff = now - timedelta(days=days)
        remove_leftovers(settings, store, report)
        prune_jobs(settings, store, cutoff, report)
        prune_uploads(settings, DatasetStore(store.engine), store, cutoff, report)
    log.info("retention: deleted %d job(s) and %d upload(s) older than %g day(s), removed the files of %d deleted "
             "job(s); kept %d job(s) still needed and %d upload(s) still read", len(report.jobs), len(report.uploads),
             days, len(report.leftovers), len(report.kept_jobs), len(report.kept_uploads))
    return report


def remove_leftovers(settings: Settings, store: JobStore, report: PruneReport) -> None:
    """Remove the files of jobs that have no row: a delete that stopped between its rows and its files."""
    found = job_ids_with_files(settings.storage, jobs_dir=settings.jobs_dir, artifacts_dir=settings.artifacts_dir,
                               cache_dir=settings.cache_dir)
    for job_id in sorted(found - store.existing_job_ids(found)):
        remove_files_of(settings, job_id)
        report.leftovers.append(job_id)


def prune_jobs(settings: Settings, store: JobStore, cutoff: datetime, report: PruneReport) -> None:
    """Delete the jobs that finished before ``cutoff`` and nothing needs any more, with their files."""
    while True:
        seen = set(report.jobs) | set(report.kept_jobs)
        batch = [job_id for job_id in store.expired_job_ids(cutoff, limit=len(seen) + 200) if job_id not in seen]
        if not batch:
            return
        for job_id in batch:
            try:
                store.delete_job(job_id)
            except JobNotFound:
                continue  # deleted by its owner meanwhile
            except JobInUse as exc:
                log.debug("retention: keeping %s: %s", job_id, exc)
                report.kept_jobs.append(job_id)
                continue
            report.jobs.append(job_id)
            remove_files_of(settings, job_id)


def prune_uploads(settings: Settings, datasets: DatasetStore, store: JobStore, cutoff: datetime,
                  report: PruneReport) -> None:
    """Delete the uploads made before ``cutoff`` that no job reads, with their files."""
    for dataset_id in datasets.created_before(cutoff, limit=100_000):
        def remove_unless_read(dataset_id: str = dataset_id) -> None:
            # Runs with the dataset's row locked: no job can start to read it meanwhile.
            readers = store.jobs_reading_upload(dataset_id)
            if readers:
                raise UploadInUse(f"{dataset_id} is read by {', '.join(readers)}")
            remove_upload(settings.uploads_dir, dataset_id, settings.storage)

        try:
            datasets.remove(dataset_id, unless=remove_unless_read)
        except DatasetNotFound:
            continue
        except UploadInUse:
            report.kept_uploads.append(dataset_id)
            continue
        report.uploads.append(dataset_id)


class RetentionPass:
    """Starts a retention pass on a thread of its own when one is due, one at a time."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self._last_start: float | None = None
        self._thread: threading.Thread | None = None
        self.last_report: PruneReport | None = None

    @property
    def enabled(self) -> bool:
        """Whether FITJOBS_RETENTION_DAYS asks for passes at all."""
        return self.settings.retention_days > 0

    def maybe_start(self) -> bool:
        """Start a pass unless one runs or the last began under an interval ago; whether one started."""
        if not self.enabled or (self._thread is not None and self._thread.is_alive()):
            return False
        now = time.monotonic()
        if self._last_start is not None and now - self._last_start < self.settings.retention_interval_seconds:
            return False
        self._last_start = now
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        try:
            self.last_report = prune(self.settings, self.store, now=utcnow())
        except Exception:
            # Storage or database trouble: the next pass, an interval later, tries again.
            log.exception("retention pass failed")

    def join(self, timeout: float | None = None) -> None:
        """Wait for a running pass to end (at most ``timeout`` seconds)."""
        if self._thread is not None:
            self._thread.join(timeout)
