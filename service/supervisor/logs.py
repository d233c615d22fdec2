"""Trainer logs copied to storage, so API pods that cannot see a worker's disk still serve them.

Only where storage is not FITJOBS_HOME itself (an object store, or a folder other than the
home): a running attempt's log is copied every few seconds on a thread of its own, so a slow
store never holds up the supervisor loop, and once more when the attempt ends.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from service.config import Settings
from service.locations import trainer_log_key
from service.supervisor.child import TrainerProcess

log = logging.getLogger(__name__)

COPY_EVERY_SECONDS = 10.0


class LogCopier:
    """Copies trainer logs of this supervisor's attempts to storage."""

    def __init__(self, settings: Settings, every_seconds: float = COPY_EVERY_SECONDS) -> None:
        self.storage = settings.storage
        self.every_seconds = every_seconds
        self._copied_at: dict[tuple[str, int], float] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="log-copier")
        self._pending: Future[None] | None = None
        self._lock = threading.Lock()

    def copy_running(self, children: list[TrainerProcess]) -> None:
        """Start a copy of the logs not copied for a while, unless the previous copy is still running."""
        now = time.monotonic()
        due = [child for child in children
               if now - self._copied_at.get((child.job_id, child.attempt), 0.0) >= self.every_seconds]
        with self._lock:
            if not due or (self._pending is not None and not self._pending.done()):
                return
            for child in due:
                self._copied_at[(child.job_id, child.attempt)] = now
            self._pending = self._pool.submit(self._copy_all, due)

    def copy_final(self, child: TrainerProcess, timeout: float = 30.0) -> None:
        """Copy an ended attempt's whole log (waits for it, at most ``timeout`` seconds)."""
        self._copied_at.pop((child.job_id, child.attempt), None)
        try:
            self._pool.submit(self._copy, child).result(timeout)
        except TimeoutError:
            log.warning("the log of job %s attempt %d is still being copied to storage", child.job_id,
                        child.attempt)

    def _copy_all(self, children: list[TrainerProcess]) -> None:
        for child in children:
            self._copy(child)

    def _copy(self, child: TrainerProcess) -> None:
        if not child.log_path.is_file():
            return
        try:
            self.storage.put_file(child.log_path, trainer_log_key(child.job_id, child.attempt))
        except Exception as exc:  # noqa: BLE001 - s3fs and gcsfs raise many types; a log copy is best effort
            log.warning("could not copy the log of job %s attempt %d to storage: %s", child.job_id,
                        child.attempt, exc)
