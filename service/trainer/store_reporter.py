"""A TrainingReporter that buffers progress and metrics and writes them to the JobStore."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from service.jobs import MetricPoint, Progress
from service.store import JobStore

log = logging.getLogger(__name__)


class StaleAttempt(RuntimeError):
    """The store refused a write: this attempt is no longer the job's current one."""


class StoreReporter:
    """Writes at most once per ``flush_seconds`` (and at every epoch end), fenced by attempt."""

    def __init__(self, store: JobStore, job_id: str, attempt: int, flush_seconds: float) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.flush_seconds = flush_seconds
        self._progress = Progress()
        self._points: list[MetricPoint] = []
        self._last_flush = time.monotonic()

    def progress(self, *, epoch: int, epochs: int, step: int, steps_per_epoch: int | None) -> None:
        """Remember the latest progress; written with the next flush."""
        self._progress = Progress(epoch=epoch, epochs=epochs, step=step, steps_per_epoch=steps_per_epoch)
        self._maybe_flush()

    def step_metrics(self, *, epoch: int, step: int, values: dict[str, float]) -> None:
        """Buffer per-step values."""
        self._points.extend(MetricPoint(name, float(value), epoch, step) for name, value in values.items())
        self._maybe_flush()

    def epoch_metrics(self, *, epoch: int, values: dict[str, float]) -> None:
        """Buffer the epoch's values and write everything now."""
        self._points.extend(MetricPoint(name, float(value), epoch) for name, value in values.items())
        self.flush()

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Append an event to the job's log right away."""
        log.info("%s: %s", kind, message)
        try:
            current = self.store.append_event(self.job_id, kind, message, attempt=self.attempt, data=data)
        except SQLAlchemyError as exc:
            # Events are informative; training goes on while the database is away.
            log.warning("could not record event %s: %s", kind, exc)
            return
        if not current:
            raise StaleAttempt(f"attempt {self.attempt} of {self.job_id} is no longer current")

    def flush(self) -> None:
        """Write buffered progress and metrics; keeps them buffered if the database is down."""
        try:
            written = self.store.record_progress(self.job_id, self.attempt, self._progress, self._points)
        except SQLAlchemyError as exc:
            log.warning("could not record progress, will retry: %s", exc)
            return
        if not written:
            raise StaleAttempt(f"attempt {self.attempt} of {self.job_id} is no longer current")
        self._points = []
        self._last_flush = time.monotonic()

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()
