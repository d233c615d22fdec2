"""The supervisor loop: claim -> spawn child -> monitor -> finalise, plus the stale-job reaper.

The loop beats (service.supervisor.health) once per pass; leases are renewed beside it by
service.supervisor.leases, which stops renewing when those beats stop.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
from types import FrameType

from sqlalchemy.exc import SQLAlchemyError

from service.artifacts import read_artifact
from service.config import Settings
from service.jobs import FailureCode, Job, JobError, JobState
from service.store import InvalidTransition, JobStore
from service.store.webhook_store import WebhookStore
from service.supervisor.child import StopReason, TrainerProcess, spawn_trainer
from service.supervisor.ending import DRAIN_STARTED, AttemptEnd, error_of, lost_attempt_end, move_for
from service.supervisor.gpus import GpuPool, discover_gpus
from service.supervisor.health import LoopHeartbeat
from service.supervisor.leases import Lease, LeaseRenewer
from service.supervisor.logs import LogCopier
from service.supervisor.metrics import serve_metrics
from service.supervisor.retention import RetentionPass
from service.supervisor.warm import WarmPool, WarmTrainerGone
from service.supervisor.webhooks import WebhookSender
from service.trainer.outcome import Outcome, TrainerExit, outcome_of_exit_status, read_outcome

log = logging.getLogger(__name__)

# Longest a stopping supervisor spends sending the webhooks due when it stops.
FINAL_WEBHOOKS_SECONDS = 10.0


class Supervisor:
    """Runs up to ``max_concurrent_jobs`` trainer children for one node.

    ``gpu_ids`` None discovers the GPUs from FITJOBS_GPUS (service.supervisor.gpus), which
    raises GpusNotVisible for a worker that was given GPUs and sees none.

    With ``once_wait`` (seconds), the supervisor is a worker sized to one job: it claims at
    most one job needing exactly its GPUs, within that wait, trains it, and stops.
    """

    def __init__(self, settings: Settings, store: JobStore, owner: str | None = None,
                 gpu_ids: tuple[str, ...] | None = None, once_wait: float | None = None) -> None:
        self.settings = settings
        self.store = store
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.loop_heartbeat = LoopHeartbeat(settings.worker_heartbeat_file)
        self.loop_heartbeat.clear()
        self.children: dict[str, TrainerProcess] = {}
        # The lease renewer reads the children from its own thread.
        self._children_lock = threading.Lock()
        if gpu_ids is None:
            gpu_ids = discover_gpus(settings.gpus, settings.environ, timeout=settings.gpu_discovery_timeout)
        self.gpus = GpuPool(gpu_ids)
        self.once_wait = once_wait
        self.claimed = 0  # jobs this supervisor claimed
        self.slots = 1 if once_wait is not None else settings.max_concurrent_jobs or max(1, len(self.gpus.ids))
        # A worker for one job warms one trainer while it waits for the claim, and no more.
        self.warm = WarmPool(settings, min(settings.warm_trainers, 1) if once_wait is not None
                             else settings.warm_trainers)
        self.leases = LeaseRenewer(store, self.owner, lease_seconds=settings.lease_seconds,
                                   interval=self.heartbeat_interval,
                                   health_seconds=settings.worker_health_seconds,
                                   seconds_since_loop_beat=self.loop_heartbeat.seconds_since_beat,
                                   leases=self.running_attempts)
        self.webhooks = WebhookSender(settings, WebhookStore(store.engine), interval=max(settings.poll_interval, 0.2))
        self._stop = threading.Event()
        self._last_reap = 0.0
        self.logs = LogCopier(settings) if not settings.storage_is_home else None
        # A worker sized to one job lives for that job only; long-running supervisors (or
        # `fitjobs prune`) keep the retention passes going.
        self.retention = RetentionPass(settings, store) if once_wait is None else None

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats: a few per lease, so one missed beat is harmless."""
        return max(0.5, min(5.0, self.settings.lease_seconds / 4))

    def request_stop(self, *_: object) -> None:
        """Stop claiming and wind down (signal-handler compatible)."""
        self._stop.set()

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then stop every child and requeue its job."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self.serve()

    def serve(self) -> None:
        """The loop itself, until request_stop(); then stop every child and requeue its job."""
        log.info("supervisor %s started: %d slot(s), GPUs %s", self.owner, self.slots,
                 ",".join(self.gpus.ids) or "none")
        self._register()
        self.leases.start()
        self.webhooks.start()
        exporter = None
        if self.settings.supervisor_metrics_port:
            exporter = serve_metrics(self.store, self.owner, self.slots, self.settings.host,
                                     self.settings.supervisor_metrics_port)
        deadline = None if self.once_wait is None else time.monotonic() + self.once_wait
        while not self._stop.is_set():
            self.tick()
            self.loop_heartbeat.beat()
            if deadline is not None and self._done_once(deadline):
                break
            self._stop.wait(self.settings.poll_interval)
        self.shutdown()
        self.leases.stop()
        self.webhooks.stop()
        # A worker of one job exits right after its job ends: the events of that end go out now, one
        # attempt each. What still fails waits in the database for the next supervisor.
        self.webhooks.send_remaining(min(self.settings.shutdown_grace, FINAL_WEBHOOKS_SECONDS))
        if exporter is not None:
            exporter.shutdown()
            exporter.server_close()
        try:
            self.store.deregister_worker(self.owner)
        except SQLAlchemyError as exc:
            log.warning("could not deregister: %s", exc)
        self.loop_heartbeat.clear()  # a stopped worker is not a healthy one
        log.info("supervisor %s stopped", self.owner)

    def _done_once(self, deadline: float) -> bool:
        """For a worker of one job: whether its job ended, or none came within the wait."""
        if self.claimed:
            if self.children:
                return False
            log.info("supervisor %s: its one job ended; stopping", self.owner)
            return True
        if time.monotonic() < deadline:
            return False
        log.info("supervisor %s: no job of %d GPU(s) came within %.0f s; stopping", self.owner,
                 len(self.gpus.ids), self.once_wait)
        return True

    def running_attempts(self) -> list[Lease]:
        """(job id, attempt) of each child still running; safe to call from any thread."""
        with self._children_lock:
            # returncode, not poll(): reaping a child is left to the loop's thread.
            return [(child.job_id, child.attempt) for child in self.children.values()
                    if child.popen.returncode is None]

    def _register(self) -> None:
        while not self._stop.is_set():
            self.loop_heartbeat.beat()  # retrying is progress: a database outage is no hang
            try:
                self.store.register_worker(self.owner, socket.gethostname(), len(self.gpus.ids), self.slots,
                                           gpu_type=self.settings.gpu_type)
                return
            except SQLAlchemyError as exc:
                log.warning("database unavailable, retrying registration: %s", exc)
                self._stop.wait(min(5.0, self.heartbeat_interval))

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("supervisor received %s; stopping", signal.Signals(signum).name)
        self.request_stop()

    def tick(self) -> None:
        """One pass: finalise exited children, enforce cancels and lost leases, reap, claim."""
        try:
            self._stop_lost()
            self._finish_exited()
            self._enforce_cancellations()
            self._reap_stale_jobs()
            if self.retention is not None:
                self.retention.maybe_start()
            if self.logs is not None:
                self.logs.copy_running(list(self.children.values()))
            if not self._stop.is_set() and not (self.once_wait is not None and self.claimed):
                self.warm.replenish(self.slots - len(self.children))
                self._claim()
        except SQLAlchemyError as exc:
            # The children keep running; the next pass retries once the database is back.
            log.warning("database unavailable, retrying next pass: %s", exc)
        for child in self.children.values():
            child.kill_if_overdue(self.settings.shutdown_grace)

    def shutdown(self) -> None:
        """SIGTERM every child and warm trainer, SIGKILL those alive after the grace period, finalise all."""
        self._announce_drain()
        for child in self.children.values():
            child.stop(StopReason.SHUTDOWN)
        self.warm.stop_all(self.settings.shutdown_grace)
        while self.children:
            self.loop_heartbeat.beat()  # draining is progress
            for child in self.children.values():
                child.kill_if_overdue(self.settings.shutdown_grace)
            try:
                self._finish_exited()
            except SQLAlchemyError as exc:
                log.warning("database unavailable while stopping: %s", exc)
                for child in list(self.children.values()):
                    if child.poll() is not None:
                        child.kill_group()
                        with self._children_lock:
                            del self.children[child.job_id]
                        self.gpus.give_back(child.job_id)
            time.sleep(0.1)

    def _announce_drain(self) -> None:
        """Log a drain notice for each running attempt, first: if this process is killed before it
        records their ends, whoever reaps the lapsed leases requeues them without spending an attempt."""
        for child in list(self.children.values()):
            try:
                self.store.append_event(child.job_id, DRAIN_STARTED, f"Draining: supervisor {self.owner} is "
                                        "stopping; the attempt checkpoints and is queued again.",
                                        attempt=child.attempt, data={"attempt": child.attempt, "owner": self.owner})
            except SQLAlchemyError as exc:
                log.warning("could not log the drain of job %s: %s", child.job_id, exc)

    # -- steps of a pass -------------------------------------------------------------------------

    def _claim(self) -> None:
        has_gpus = bool(self.gpus.ids)
        while len(self.children) < self.slots:
            job = self.store.claim_next_job(self.owner, self.settings.lease_seconds,
                                            free_gpus=len(self.gpus.free), node_gpus=len(self.gpus.ids),
                                            exact=self.once_wait is not None, gpu_type=self.settings.gpu_type)
            if job is None:
                return
            self.claimed += 1
            gpu_ids = self.gpus.lend(job.id, job.gpus_needed(has_gpus))
            try:
                child = self._start_trainer(job, gpu_ids)
            except OSError as exc:
                self.gpus.give_back(job.id)
                log.exception("could not start a trainer for %s", job.id)
                self.record_attempt_end(job, job.attempt, AttemptEnd.failed(
                    error_of(FailureCode.INTERNAL, f"The trainer could not be started: {exc}")))
                continue
            with self._children_lock:
                self.children[job.id] = child
            log.info("job %s attempt %d started as pid %d (%s) on GPUs [%s]", job.id, job.attempt,
                     child.popen.pid, "warm" if child.warm else "cold", ",".join(gpu_ids))

    def _start_trainer(self, job: Job, gpu_ids: tuple[str, ...]) -> TrainerProcess:
        """Hand the job to an idle warm trainer that is alive, else spawn a cold one."""
        warm = self.warm.take()
        if warm is not None:
            try:
                child = warm.assign(self.settings, job, gpu_ids)
            except WarmTrainerGone as exc:
                # The job is ours already: a cold trainer takes it, it is never dropped.
                log.warning("warm trainer pid %d could not take job %s: %s; starting it cold",
                            warm.pid, job.id, exc)
                warm.kill()
            except OSError:
                warm.kill()  # the attempt folder could not be made; a cold start fails the same way
                raise
            else:
                self.warm.taken()
                return child
        return spawn_trainer(self.settings, job, gpu_ids)

    def _enforce_cancellations(self) -> None:
        if not self.children:
            return
        owned = {job.id: job for job in self.store.jobs_owned_by(self.owner)}
        for job_id, child in self.children.items():
            job = owned.get(job_id)
            if job is None or job.attempt != child.attempt:
                child.stop(StopReason.LOST)
            elif job.cancel_requested:
                child.stop(StopReason.CANCEL)
            elif (job.max_runtime_seconds is not None
                  and time.monotonic() - child.started > job.max_runtime_seconds):
                child.stop(StopReason.TIMEOUT)

    def _stop_lost(self) -> None:
        """Stop the children whose lease renewal found their attempt no longer current."""
        for job_id, attempt in self.leases.take_lost():
            child = self.children.get(job_id)
            if child is not None and child.attempt == attempt:
                child.stop(StopReason.LOST)

    def _reap_stale_jobs(self) -> None:
        now = time.monotonic()
        if now - self._last_reap < self.heartbeat_interval:
            return
        self._last_reap = now
        for job in self.store.expired_jobs():
            if job.id in self.children:
                continue
            # Retryable, so bounded by max_attempts: a job that keeps bringing its node down
            # must not loop forever. One whose supervisor announced a drain was preempted: free.
            drained = self.store.has_event(job.id, DRAIN_STARTED, job.attempt)
            self.record_attempt_end(job, job.attempt, lost_attempt_end(job.owner, job.attempt, drained))

    def _finish_exited(self) -> None:
        for job_id, child in list(self.children.items()):
            status = child.poll()
            if status is None:
                continue
            child.kill_group()
            if self.logs is not None:
                self.logs.copy_final(child)
            self._finalise(child, status)
            with self._children_lock:
                del self.children[job_id]
            self.gpus.give_back(job_id)

    def _finalise(self, child: TrainerProcess, status: int) -> None:
        if child.stop_reason is StopReason.LOST:
            log.warning("job %s attempt %d is no longer ours; not recording its end",
                        child.job_id, child.attempt)
            return
        end = self._attempt_end(child, status)
        self.record_attempt_end(self.store.get_job(child.job_id), child.attempt, end)

    def _attempt_end(self, child: TrainerProcess, status: int) -> AttemptEnd:
        """How a trainer's attempt ended: its outcome file (or exit status), and why it was stopped."""
        outcome = (read_outcome(child.attempt_dir)
                   or outcome_of_exit_status(status, functools.partial(read_artifact, self.settings.storage,
                                                                       child.job_id)))
        seconds = round(time.monotonic() - child.started, 1)
        if outcome is not None and outcome.status == "succeeded":
            return AttemptEnd.succeeded(f"Training finished in {seconds} s.", outcome.result)
        if child.stop_reason is StopReason.CANCEL:
            return AttemptEnd.cancelled("Cancelled while running; the trainer was stopped.")
        if child.stop_reason is StopReason.SHUTDOWN:
            return AttemptEnd.requeued(f"Interrupted: supervisor {self.owner} stopped; the job is queued again "
                                       "without spending an attempt.")
        # A job that trained but missed its acceptance threshold keeps what it measured.
        kept = outcome.result if outcome is not None and outcome.result else None
        return AttemptEnd.failed(describe_failure(child, status, outcome, seconds), result=kept)

    def record_attempt_end(self, job: Job, attempt: int, end: AttemptEnd) -> None:
        """Record how ``attempt`` of the job ended; the one place the supervisor moves a job.

        ``job`` is read after the attempt ended. The move is fenced by the attempt; one refused
        because the job moved meanwhile is logged and dropped, except a requeue refused because
        the job's cancel was requested just now: the attempt is then recorded as cancelled.
        """
        move = move_for(job, attempt, end)
        try:
            self.store.transition(job.id, move.target, move.message, attempt=attempt, error=move.error,
                                  result=move.result, data=move.data, free_attempt=move.free_attempt)
        except InvalidTransition as exc:
            now = exc.job
            if (move.target is JobState.QUEUED and now.cancel_requested and now.attempt == attempt
                    and now.state is JobState.RUNNING):
                self.record_attempt_end(now, attempt, end)
            else:
                log.warning("not recording %s for job %s: %s", move.target.value, job.id, exc)
            return
        log.info("job %s -> %s: %s", job.id, move.target.value, move.message)


def describe_failure(child: TrainerProcess, status: int, outcome: Outcome | None, seconds: float) -> JobError:
    """Turn how a trainer ended (timeout, its own report, a signal, an exit status) into a typed error."""
    if child.stop_reason is StopReason.TIMEOUT:
        return error_of(FailureCode.TIMEOUT,
                        f"The attempt ran longer than max_runtime_seconds and was stopped after {seconds} s.")
    if outcome is not None:
        code = FailureCode(outcome.code) if outcome.code in FailureCode._value2member_map_ else FailureCode.INTERNAL
        return error_of(code, outcome.message or "Training failed.")
    if child.oom_killed() or status == 137:
        return error_of(FailureCode.OUT_OF_MEMORY,
                        f"The training process ran out of memory and was killed after {seconds} s; "
                        "lower batch_size or max_length, or give the worker more memory.")
    if status < 0:
        name = signal.Signals(-status).name
        return error_of(FailureCode.KILLED, f"The training process was killed by {name} after {seconds} s.")
    known = f" ({TrainerExit(status).name.lower()})" if status in TrainerExit._value2member_map_ else ""
    return error_of(FailureCode.INTERNAL,
                    f"The training process exited with status {status}{known} without reporting a result. "
                    f"Last log lines:\n{child.log_tail()}")
