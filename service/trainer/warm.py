"""A pre-imported trainer: ``python -m service.trainer.warm`` waits for one job, then trains it.

The supervisor starts it before there is a job. It imports TensorFlow, tf-keras, transformers
and datasets, then blocks on one JSON line on stdin (an ``Assignment``). It touches no device
until that line arrives, so the GPUs it is lent (CUDA_VISIBLE_DEVICES) are in place before
CUDA starts. Then it becomes the job's trainer: the job's log on stdout and stderr, the
attempt's folder as working directory, and the same attempt code as a cold trainer
(service.trainer.attempt), with the same exit statuses and outcome file. It never takes a
second job. EOF on stdin while waiting ends it quietly; SIGTERM keeps its default action, as
in a cold trainer that has not started its fit.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.config import Settings
from service.logconfig import configure_logging
from service.trainer.attempt import TrainerStart, exit_with, import_training_libraries, run_attempt
from service.trainer.outcome import TrainerExit

log = logging.getLogger("service.trainer.warm")


class InvalidAssignment(ValueError):
    """The line on a warm trainer's stdin does not name a job to train."""


@dataclass(frozen=True)
class Assignment:
    """The one job a warm trainer is given; ``assigned_at`` is the supervisor's wall clock."""

    job_id: str
    attempt: int
    cuda_visible_devices: str
    log_path: Path
    cwd: Path
    assigned_at: float

    def to_line(self) -> bytes:
        """One JSON line, as the supervisor writes it to the warm trainer's stdin."""
        fields: dict[str, Any] = asdict(self)
        fields.update(log_path=str(self.log_path), cwd=str(self.cwd))
        return json.dumps(fields).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Assignment:
        """Parse a line written by ``to_line``; raises InvalidAssignment."""
        try:
            fields = json.loads(line)
            return cls(job_id=str(fields["job_id"]), attempt=int(fields["attempt"]),
                       cuda_visible_devices=str(fields["cuda_visible_devices"]),
                       log_path=Path(fields["log_path"]), cwd=Path(fields["cwd"]),
                       assigned_at=float(fields["assigned_at"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidAssignment(f"not an assignment: {line[:200]!r}") from exc


def take_assignment(assignment: Assignment) -> None:
    """Become the job's trainer process: its log on fds 1 and 2, its folder, its GPUs."""
    # Whatever the imports printed stays in the warm log, not in the job's.
    sys.stdout.flush()
    sys.stderr.flush()
    log_fd = os.open(assignment.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    # A cold trainer's stdin is /dev/null; whatever followed the line in the pipe is no job's.
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.close(null_fd)
    sys.stdin = open(0, closefd=False)  # the old object may hold bytes it read ahead
    os.chdir(assignment.cwd)
    # CUDA reads this once, when TensorFlow first touches a device; warming touched none.
    os.environ["CUDA_VISIBLE_DEVICES"] = assignment.cuda_visible_devices


def tensorflow_runtime_started() -> bool:
    """Whether TensorFlow has started its runtime (and with it CUDA) in this process."""
    if "tensorflow" not in sys.modules:
        return False
    from tensorflow.python.eager import context

    # A private flag, but the only one that tells without starting the runtime itself.
    # Where a TensorFlow release lacks it, assume the worst: the job then trains cold.
    return bool(getattr(context.context(), "_initialized", True))


def train_cold_instead(assignment: Assignment) -> None:
    """Replace this process by a cold trainer for the job (same pid, log and process group)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "service.trainer", assignment.job_id,
                              str(assignment.attempt)])


def main() -> int:
    """Import, wait for one assignment on stdin, then train it like a cold trainer."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    began = time.monotonic()
    # Thread limits are set here, before the runtime starts; the fit's own call keeps them.
    import_training_libraries(settings.trainer_threads)
    log.info("warm trainer pid %d ready after %.1f s of imports", os.getpid(), time.monotonic() - began)
    line = sys.stdin.buffer.readline()
    received = time.time()
    if not line.strip():
        log.info("warm trainer pid %d: stdin closed without a job; exiting", os.getpid())
        return TrainerExit.NO_JOB
    try:
        assignment = Assignment.from_line(line)
    except InvalidAssignment as exc:
        log.error("%s", exc)
        return TrainerExit.USAGE
    log.info("warm trainer pid %d takes job %s attempt %d", os.getpid(), assignment.job_id, assignment.attempt)
    take_assignment(assignment)
    log.info("warm trainer pid %d runs job %s attempt %d with CUDA_VISIBLE_DEVICES=%r", os.getpid(),
             assignment.job_id, assignment.attempt, assignment.cuda_visible_devices)
    if tensorflow_runtime_started():
        log.warning("TensorFlow started its runtime while warming, before the job's GPUs were known; "
                    "training cold instead")
        train_cold_instead(assignment)
    return run_attempt(assignment.job_id, assignment.attempt,
                       TrainerStart(warm=True, began_at=assignment.assigned_at,
                                    imports_waited=max(0.0, received - assignment.assigned_at)))


if __name__ == "__main__":
    exit_with(main())
