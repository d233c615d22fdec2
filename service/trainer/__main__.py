"""Entry point of a trainer child: ``python -m service.trainer JOB_ID ATTEMPT``.

Runs one attempt of one job and leaves an outcome file for the supervisor; the supervisor,
not this process, moves the job to its final state.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback

from service.config import Settings
from service.jobs import FailureCode
from service.logconfig import configure_logging
from service.store import open_store
from service.trainer.failures import TrainingFailure
from service.trainer.outcome import Outcome, finish
from service.trainer.stop import DrainRequested, StopSignal
from service.trainer.store_reporter import StaleAttempt, StoreReporter

log = logging.getLogger("service.trainer")
# How long a finished trainer waits for an unreachable database to write its last metrics.
FINAL_FLUSH_SECONDS = 600.0


def classify_exception(exc: BaseException) -> tuple[FailureCode, str]:
    """The failure code of an unexpected exception: disk full, out of memory, or internal."""
    # Disk first: TensorFlow reports a full disk while checkpointing as RESOURCE_EXHAUSTED,
    # the same status as an allocation failure; only the message tells them apart.
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for link in chain:
        if (isinstance(link, OSError) and link.errno == errno.ENOSPC) or "No space left on device" in str(link):
            where = getattr(link, "filename", None) or "its files"
            return FailureCode.DISK_FULL, (f"No space left on the device while writing {where}; the last "
                                           "complete checkpoint is kept, and nothing partial is published.")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "ResourceExhaustedError":
        return FailureCode.OUT_OF_MEMORY, (f"Out of memory while training ({type(exc).__name__}); "
                                           "lower batch_size or max_length.")
    return FailureCode.INTERNAL, f"{type(exc).__name__}: {exc}"


def main(argv: list[str]) -> int:
    """Train the job named in argv; exit 0 on success, 1 on a recorded failure, 4 when stopped."""
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m service.trainer JOB_ID ATTEMPT", file=sys.stderr)
        return 2
    job_id, attempt = argv[0], int(argv[1])
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    attempt_dir = settings.attempt_dir(job_id, attempt)
    store = open_store(settings.database_url, migrate=False)
    job = store.get_job(job_id)
    if job.attempt != attempt:
        log.error("job %s is at attempt %d, not %d; exiting", job_id, job.attempt, attempt)
        return 2
    (attempt_dir / "work").mkdir(parents=True, exist_ok=True)
    reporter = StoreReporter(store, job_id, attempt, settings.metrics_flush_seconds)
    stop = StopSignal()
    stop.install()
    try:
        from service.trainer.fit import run_training

        result = run_training(job.spec, data_root=settings.data_root, work_dir=attempt_dir / "work",
                              checkpoint_dir=settings.checkpoint_dir(job_id),
                              publish_dir=settings.artifacts_dir / job_id, reporter=reporter,
                              threads=settings.trainer_threads, checkpoint_steps=settings.checkpoint_steps,
                              stop=stop)
        reporter.close(FINAL_FLUSH_SECONDS)
    except DrainRequested as exc:
        # The supervisor asked for this and decides what it means (requeue, cancel, timeout).
        log.info("%s", exc)
        reporter.flush()
        return 4
    except TrainingFailure as failure:
        log.error("training failed: %s", failure)
        return finish(attempt_dir, Outcome("failed", code=failure.code.value, message=failure.message))
    except StaleAttempt as exc:
        log.error("stopping: %s", exc)
        return 3
    except Exception as exc:  # noqa: BLE001 - every other error is classified, then recorded
        try:
            traceback.print_exc()
        except OSError:
            pass  # the log's disk may be the full one
        code, message = classify_exception(exc)
        return finish(attempt_dir, Outcome("failed", code=code.value, message=message))
    log.info("training succeeded: %s", result)
    return finish(attempt_dir, Outcome("succeeded", result=result))


def exit_with(status: int) -> None:
    """Exit with ``status`` even when the log cannot be flushed (Python would exit with 120)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    exit_with(main(sys.argv[1:]))
