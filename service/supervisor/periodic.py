"""A supervisor's background duty: a daemon thread that does one pass every ``interval`` seconds until stopped."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)


class PeriodicTask:
    """Calls ``run_once`` every ``interval`` seconds on a daemon thread; a database outage skips a pass.

    Subclasses set ``name`` (the thread's) and ``outage`` (what the log says happens while the
    database is away), and implement ``run_once``.
    """

    name = "periodic"
    outage = "the next pass retries"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def run_once(self) -> object:
        """One pass."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the passes in the background."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the passes and wait (at most ``timeout`` s) for one in progress."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except SQLAlchemyError as exc:
                log.warning("database unavailable, %s in %.1f s: %s", self.outage, self.interval, exc)
