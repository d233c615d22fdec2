"""Entry point of a cold trainer child: ``python -m service.trainer JOB_ID ATTEMPT``.

Runs one attempt of one job (service.trainer.attempt) in a new process, paying for its
imports itself; a warm trainer (service.trainer.warm) runs the same attempt code.
"""

from __future__ import annotations

import sys

from service.trainer.attempt import TrainerStart, classify_exception, exit_with, process_started_at, run_attempt
from service.trainer.outcome import TrainerExit

__all__ = ["classify_exception", "main"]


def main(argv: list[str]) -> int:
    """Train the job named in argv; the exit status is a TrainerExit."""
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m service.trainer JOB_ID ATTEMPT", file=sys.stderr)
        return TrainerExit.USAGE
    return run_attempt(argv[0], int(argv[1]), TrainerStart(warm=False, began_at=process_started_at()))


if __name__ == "__main__":
    exit_with(main(sys.argv[1:]))
