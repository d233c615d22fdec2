"""The supervisor loop's heartbeat file, and the check that reads it (`fitjobs worker --check`).

The loop touches the file once per completed pass, so the file's age is how long the loop has
gone without progressing: a claim, a database call or a file open that hangs stops the beats
even while the process and its other threads live on. Kubernetes runs the check as the worker
container's liveness and startup probe, in the same container, so the file is a local one
(FITJOBS_WORKER_HEARTBEAT_FILE).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class LoopHeartbeat:
    """The beats of one supervisor loop: a file's modification time, and the same in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_beat: float | None = None  # time.monotonic() of the last beat
        self._write_failed = False

    def clear(self) -> None:
        """Remove a file left by an earlier process, so its beats never pass for this one's."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove the old heartbeat file %s: %s", self.path, exc)

    def beat(self) -> None:
        """Record that the loop completed a pass."""
        self.last_beat = time.monotonic()
        try:
            try:
                os.utime(self.path)  # no data written: a full disk does not stop the beats
            except FileNotFoundError:
                self._create()
        except OSError as exc:
            if not self._write_failed:
                log.warning("could not update the heartbeat file %s (`fitjobs worker --check` will fail): %s",
                            self.path, exc)
            self._write_failed = True
        else:
            self._write_failed = False

    def seconds_since_beat(self) -> float:
        """Seconds since the last beat of this process (infinite before the first)."""
        return math.inf if self.last_beat is None else time.monotonic() - self.last_beat

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        partial.write_text(json.dumps({"pid": os.getpid()}) + "\n")
        partial.replace(self.path)


@dataclass(frozen=True)
class HealthReport:
    """The outcome of `fitjobs worker --check`."""

    healthy: bool
    message: str


def check_heartbeat(path: Path, max_age: float, now: float | None = None) -> HealthReport:
    """Healthy when the loop that writes ``path`` beat within ``max_age`` seconds."""
    try:
        beat_at = path.stat().st_mtime
    except FileNotFoundError:
        return HealthReport(False, f"no heartbeat file at {path}: the worker is starting (GPU discovery, "
                                   "database) or not running")
    except OSError as exc:
        return HealthReport(False, f"cannot read the heartbeat file {path}: {exc}")
    try:
        pid = json.loads(path.read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        pid = None
    age = (time.time() if now is None else now) - beat_at
    who = f"the supervisor loop (pid {pid})" if pid else "the supervisor loop"
    if age > max_age:
        return HealthReport(False, f"{who} last completed a pass {age:.1f} s ago, more than "
                                   f"FITJOBS_WORKER_HEALTH_SECONDS={max_age:g} ({path})")
    return HealthReport(True, f"{who} completed a pass {max(age, 0.0):.1f} s ago")
