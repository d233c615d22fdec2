"""One attempt of one job in this process, shared by the cold and the warm trainer entry points.

Runs the attempt and leaves an outcome file for the supervisor; the supervisor, not this
process, moves the job to its final state. Its exit status is a TrainerExit
(service.trainer.outcome).
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.config import Settings
from service.jobs import FailureCode, Job
from service.locations import Locations, fetch_inputs
from service.logconfig import configure_logging
from service.storage import StorageUnavailable
from service.store import open_store
from service.trainer.checkpoint_mirror import CheckpointMirror
from service.trainer.failures import TrainingFailure
from service.trainer.outcome import Outcome, TrainerExit, finish
from service.trainer.stop import DrainRequested, StopSignal
from service.trainer.store_reporter import StaleAttempt, StoreReporter

log = logging.getLogger("service.trainer")
# How long a finished trainer waits for an unreachable database to write its last metrics.
FINAL_FLUSH_SECONDS = 600.0
# Fallback start time where /proc cannot tell when this process began.
_IMPORTED_AT = time.time()


@dataclass(frozen=True)
class TrainerStart:
    """How this process came to train its job, reported in the `trainer_started` event.

    ``began_at`` (wall clock) is when this process started for a cold trainer, and when the
    supervisor assigned the job for a warm one; ``imports_waited`` is how long a warm
    trainer's job waited for imports that were still running when it was assigned.
    """

    warm: bool
    began_at: float
    imports_waited: float = 0.0

    def event_data(self, startup_seconds: float) -> dict[str, Any]:
        """The `trainer_started` event's data."""
        data: dict[str, Any] = {"warm": self.warm, "startup_seconds": round(startup_seconds, 3),
                                "pid": os.getpid(),
                                # What the supervisor lent, as this process sees it.
                                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        if self.warm:
            data["imports_waited_seconds"] = round(self.imports_waited, 3)
        return data


def process_started_at() -> float:
    """Wall-clock time this process was started (from /proc; module import time where unknown)."""
    try:
        # Field 22 (starttime, clock ticks after boot); the command name before ")" may hold spaces.
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED_AT
    # Python starts and reaches this module within seconds; an age far beyond that means a
    # clock that disagrees with /proc (a time namespace, say), so the import time is closer.
    if not 0.0 <= age <= time.time() - _IMPORTED_AT + 60:
        return _IMPORTED_AT
    return time.time() - age


def queued_seconds(job: Job) -> float:
    """Seconds between the job's creation and the claim of its current attempt."""
    if job.started_at is None:
        return 0.0
    return max(0.0, (job.started_at - job.created_at).total_seconds())


# Imported for their import cost alone, before a job waits on them; nothing uses their names.
PRELOADED_MODULES = (
    "datasets",
    "tf_keras",
    "transformers.models.auto.modeling_tf_auto",  # TFAutoModelForSequenceClassification
    "transformers.models.bert.modeling_tf_bert",  # the usual architecture
    "service.trainer.data",
    "service.trainer.evaluation",  # scikit-learn's metrics, for the evaluation report
    "service.trainer.fit",
    "service.trainer.modeling",
    "service.trainer.summaries",
    "tensorboard.summary.v2",  # tf.summary.image's implementation, otherwise imported by its first call
    "matplotlib.backends.backend_agg",  # draws the confusion matrix for TensorBoard
)


def import_training_libraries(threads: int = 0) -> None:
    """Import TensorFlow, tf-keras, transformers, datasets and the fit's modules; touches no device."""
    from service.trainer.tf_runtime import import_tensorflow

    import_tensorflow(threads)
    for module in PRELOADED_MODULES:
        importlib.import_module(module)


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
    for link in chain:
        if isinstance(link, StorageUnavailable):
            return FailureCode.STORAGE_UNAVAILABLE, (f"The object store could not be reached or refused access: "
                                                     f"{link}; the job is tried again while attempts remain.")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "ResourceExhaustedError":
        return FailureCode.OUT_OF_MEMORY, (f"Out of memory while training ({type(exc).__name__}); "
                                           "lower batch_size or max_length.")
    return FailureCode.INTERNAL, f"{type(exc).__name__}: {exc}"


def checkpoint_mirror(settings: Settings, job_id: str, reporter: StoreReporter) -> CheckpointMirror | None:
    """The job's checkpoint copy in storage, brought to the local folder where that is behind.

    None where storage is FITJOBS_HOME itself: the local checkpoint is then the stored one.
    """
    if settings.storage_is_home:
        return None
    mirror = CheckpointMirror(settings.storage, job_id, settings.checkpoint_dir(job_id), reporter)
    if mirror.restore():
        reporter.event("checkpoint_fetched", "Fetched the job's checkpoint from storage.",
                       {"storage": settings.storage.describe(mirror.key("state"))})
    return mirror


def run_attempt(job_id: str, attempt: int, start: TrainerStart) -> int:
    """Train ``attempt`` of the job; returns the trainer's exit status (0 on success)."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    attempt_dir = settings.attempt_dir(job_id, attempt)
    store = open_store(settings.database_url, migrate=False)
    job = store.get_job(job_id)
    if job.attempt != attempt:
        log.error("job %s is at attempt %d, not %d; exiting", job_id, job.attempt, attempt)
        return TrainerExit.NOT_CURRENT_ATTEMPT
    (attempt_dir / "work").mkdir(parents=True, exist_ok=True)
    reporter = StoreReporter(store, job_id, attempt, settings.metrics_flush_seconds)
    stop = StopSignal()
    stop.install()
    try:
        # A cold trainer pays for its imports here; a warm one finds them done.
        import_training_libraries(settings.trainer_threads)
        from service.trainer.fit import run_training

        startup = time.time() - start.began_at
        reporter.event("trainer_started",
                       f"{'Warm' if start.warm else 'Cold'} trainer pid {os.getpid()} ready "
                       f"{startup:.1f} s after its {'assignment' if start.warm else 'start'}.",
                       start.event_data(startup))
        locations = Locations.from_settings(settings)
        fetch_inputs(job.spec, settings.storage, locations)
        timings = {"queued": queued_seconds(job), "startup": startup}
        if job.kind == "predict":
            from service.trainer.batch_predict import run_predictions

            result = run_predictions(job.spec, locations=locations, checkpoint_dir=settings.checkpoint_dir(job_id),
                                     work_dir=attempt_dir / "work", storage=settings.storage, job_id=job_id,
                                     reporter=reporter, stop=stop, timings=timings)
        else:
            result = run_training(job.spec, data_root=settings.data_root, work_dir=attempt_dir / "work",
                                  checkpoint_dir=settings.checkpoint_dir(job_id), storage=settings.storage,
                                  job_id=job_id, reporter=reporter,
                                  mirror=checkpoint_mirror(settings, job_id, reporter),
                                  threads=settings.trainer_threads, checkpoint_steps=settings.checkpoint_steps,
                                  stop=stop, timings=timings)
        reporter.close(FINAL_FLUSH_SECONDS)
    except DrainRequested as exc:
        # The supervisor asked for this and decides what it means (requeue, cancel, timeout).
        log.info("%s", exc)
        reporter.flush()
        return TrainerExit.STOPPED
    except TrainingFailure as failure:
        log.error("training failed: %s", failure)
        if failure.result:
            # A model that trained but failed its gate: its last metrics and events are kept too.
            try:
                reporter.close(FINAL_FLUSH_SECONDS)
            except StaleAttempt as exc:
                log.error("stopping: %s", exc)
                return TrainerExit.FENCED
        return finish(attempt_dir, Outcome("failed", code=failure.code.value, message=failure.message,
                                           result=failure.result or {}))
    except StaleAttempt as exc:
        log.error("stopping: %s", exc)
        return TrainerExit.FENCED
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
