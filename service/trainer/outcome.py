"""The file a trainer child leaves behind to say how its attempt ended."""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from service.jobs import FailureCode

OUTCOME_FILE = "outcome.json"


class TrainerExit(enum.IntEnum):
    """Exit statuses of a trainer process: what it tells the supervisor that starts it."""

    SUCCEEDED = 0  # the outcome file says succeeded
    NO_JOB = 0  # a warm trainer was dismissed before it got a job
    FAILED = 1  # the outcome file says failed, with a code
    NOT_CURRENT_ATTEMPT = 2  # the job is at another attempt; nothing ran
    USAGE = 2  # the command line or the warm trainer's assignment was malformed; nothing ran
    FENCED = 3  # the store refused a write: another attempt is current now
    STOPPED = 4  # stopped on SIGTERM (after a checkpoint once the fit had started); the supervisor knows why
    SUCCEEDED_UNRECORDED = 5  # the model is published, the outcome file unwritable; metrics.json has the result
    # The outcome file was unwritable (a full disk) and the attempt failed: FAILURE_BASE plus the
    # position of its FailureCode.
    FAILURE_BASE = 64


def failure_exit_status(code: FailureCode) -> int:
    """The exit status that stands for ``code`` when no outcome file could be written."""
    return TrainerExit.FAILURE_BASE + list(FailureCode).index(code)


def failure_of_exit_status(status: int) -> FailureCode | None:
    """The failure code an exit status stands for, if it is one of those."""
    index = status - TrainerExit.FAILURE_BASE
    codes = list(FailureCode)
    return codes[index] if 0 <= index < len(codes) else None


@dataclass(frozen=True)
class Outcome:
    """``status`` is "succeeded" (with ``result``) or "failed" (with ``code`` and ``message``).

    A failed outcome may carry a ``result`` too: a job that trained and published its model
    but failed its acceptance threshold keeps what it measured.
    """

    status: str
    result: dict[str, Any] = field(default_factory=dict)
    code: str | None = None
    message: str | None = None


def write_outcome(attempt_dir: Path, outcome: Outcome) -> None:
    """Write the outcome atomically, so a reader never sees half of it."""
    target = attempt_dir / OUTCOME_FILE
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(outcome)))
    os.replace(tmp, target)


def finish(attempt_dir: Path, outcome: Outcome) -> int:
    """Leave ``outcome`` for the supervisor and return the trainer's exit status."""
    try:
        write_outcome(attempt_dir, outcome)
    except OSError:
        if outcome.status == "succeeded":
            return TrainerExit.SUCCEEDED_UNRECORDED
        return failure_exit_status(FailureCode(outcome.code))
    return TrainerExit.SUCCEEDED if outcome.status == "succeeded" else TrainerExit.FAILED


def read_outcome(attempt_dir: Path) -> Outcome | None:
    """The outcome an attempt left, or None when it ended without writing one."""
    try:
        data: dict[str, Any] = json.loads((attempt_dir / OUTCOME_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return Outcome(**data)


def outcome_of_exit_status(status: int, published: Path | Callable[[str], bytes]) -> Outcome | None:
    """The outcome an exit status carries when the trainer could not write its file.

    ``published`` is the job's published folder, or a function reading one of its files by name.
    """
    if status == TrainerExit.SUCCEEDED_UNRECORDED:
        try:
            read = published if callable(published) else (lambda name: (published / name).read_bytes())
            final = json.loads(read("metrics.json"))["final"]
        except (OSError, ValueError, LookupError):
            return None
        return Outcome("succeeded", result=final)
    code = failure_of_exit_status(status)
    if code is None:
        return None
    message = {FailureCode.DISK_FULL: "No space left on the device for the trainer's files; the last complete "
                                      "checkpoint is kept, and nothing partial is published."}.get(
        code, f"The trainer failed with {code.value} and could not write its report (is the disk full?).")
    return Outcome("failed", code=code.value, message=message)
