"""A TrainingReporter that buffers progress and metrics and writes them to the JobStore."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from service.jobs import PHASE_METRIC, MetricPoint, Progress
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
        self._events: list[tuple[str, str, dict[str, Any] | None]] = []  # not yet written
        self._last_flush = time.monotonic()

    def progress(self, *, epoch: int, epochs: int, step: int, steps_per_epoch: int | None,
                 examples_per_second: float | None = None, eta_seconds: float | None = None,
                 step_seconds: float | None = None) -> None:
        """Remember the latest progress; written with the next flush."""
        self._progress = Progress(epoch=epoch, epochs=epochs, step=step, steps_per_epoch=steps_per_epoch,
                                  examples_per_second=examples_per_second, eta_seconds=eta_seconds,
                                  step_seconds=step_seconds)
        self._maybe_flush()

    def phase_seconds(self, phase: str, seconds: float) -> None:
        """Buffer a phase's duration as a metric (epoch 0, no step); written with the next flush."""
        self._points.append(MetricPoint(f"{PHASE_METRIC}{phase}", float(seconds), 0))

    def step_metrics(self, *, epoch: int, step: int, values: dict[str, float]) -> None:
        """Buffer per-step values."""
        self._points.extend(MetricPoint(name, float(value), epoch, step) for name, value in values.items())
        self._maybe_flush()

    def epoch_metrics(self, *, epoch: int, values: dict[str, float]) -> None:
        """Buffer the epoch's values and write everything now."""
        self._points.extend(MetricPoint(name, float(value), epoch) for name, value in values.items())
        self.flush()

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Append an event to the job's log right away (kept for the next flush if the database is away)."""
        log.info("%s: %s", kind, message)
        self._events.append((kind, message, data))
        self._write_events()

    def _write_events(self) -> bool:
        while self._events:
            kind, message, data = self._events[0]
            try:
                current = self.store.append_event(self.job_id, kind, message, attempt=self.attempt, data=data)
            except SQLAlchemyError as exc:
                # Events are informative; training goes on while the database is away.
                log.warning("could not record event %s yet: %s", kind, exc)
                return False
            if not current:
                raise StaleAttempt(f"attempt {self.attempt} of {self.job_id} is no longer current")
            self._events.pop(0)
        return True

    def flush(self) -> bool:
        """Write buffered events, progress and metrics; keeps them buffered (False) if the database is down."""
        if not self._write_events():
            return False
        try:
            written = self.store.record_progress(self.job_id, self.attempt, self._progress, self._points)
        except SQLAlchemyError as exc:
            log.warning("could not record progress, will retry: %s", exc)
            return False
        if not written:
            raise StaleAttempt(f"attempt {self.attempt} of {self.job_id} is no longer current")
        self._points = []
        self._last_flush = time.monotonic()
        return True

    def close(self, timeout: float) -> bool:
        """Write everything still buffered, retrying with backoff for up to ``timeout`` seconds.

        The last metrics of a run must not be lost to a database restart: the trainer waits
        for it (its supervisor records the outcome once the database is back, too).
        """
        deadline = time.monotonic() + timeout
        delay = 0.5
        while not self.flush():
            if time.monotonic() + delay > deadline:
                log.error("gave up writing buffered metrics after %.0f s", timeout)
                return False
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        return True

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()
