"""Warm trainers: processes started before their job, with TensorFlow already imported.

A supervisor keeps up to ``FITJOBS_WARM_TRAINERS`` of them idle, but only for free slots, so
on a one-slot node the next trainer's imports never compete with a running fit. A claimed job
goes to the oldest idle one that is alive (still importing is fine: the job then waits for
the imports, which a cold trainer would pay too); its process becomes the job's
TrainerProcess, stopped and judged exactly like a cold child.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.config import Settings
from service.jobs import Job
from service.supervisor.child import LOG_FILE, TrainerProcess, die_with_parent, oom_kill_count
from service.trainer.warm import Assignment

log = logging.getLogger(__name__)
WARM_LOG_FILE = "warm-trainer.log"
# An idle warm trainer that keeps dying (a broken install) is restarted at most this often.
MAX_RESTART_DELAY = 60.0


class WarmTrainerGone(RuntimeError):
    """The warm trainer exited or closed its stdin before it could take its job."""


@dataclass
class WarmTrainer:
    """An idle ``python -m service.trainer.warm`` process, waiting for one job on its stdin."""

    popen: subprocess.Popen[bytes]
    spawned_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        """The process id (also its process group's, as a session leader)."""
        return self.popen.pid

    def poll(self) -> int | None:
        """The exit status (negative for a signal) or None while it runs."""
        return self.popen.poll()

    def assign(self, settings: Settings, job: Job, gpu_ids: tuple[str, ...] = ()) -> TrainerProcess:
        """Hand the job's current attempt to this process; raises WarmTrainerGone if it cannot take it."""
        status = self.poll()
        if status is not None:
            raise WarmTrainerGone(f"it exited with status {status}")
        attempt_dir = settings.attempt_dir(job.id, job.attempt)
        attempt_dir.mkdir(parents=True, exist_ok=True)
        assignment = Assignment(job_id=job.id, attempt=job.attempt, cuda_visible_devices=",".join(gpu_ids),
                                log_path=attempt_dir / LOG_FILE, cwd=attempt_dir, assigned_at=time.time())
        if self.popen.stdin is None:
            raise WarmTrainerGone("it was started without a stdin pipe")
        try:
            self.popen.stdin.write(assignment.to_line())
            # Closing sends EOF after the line: nothing else will ever be asked of it.
            self.popen.stdin.close()
        except (OSError, ValueError) as exc:
            raise WarmTrainerGone(f"its stdin is closed ({exc})") from exc
        return TrainerProcess(job_id=job.id, attempt=job.attempt, popen=self.popen, attempt_dir=attempt_dir,
                              started=time.monotonic(), gpu_ids=gpu_ids, oom_kills_at_start=oom_kill_count(),
                              warm=True)

    def terminate(self) -> None:
        """Close its stdin and SIGTERM its process group; it exits without a word."""
        try:
            if self.popen.stdin is not None:
                self.popen.stdin.close()
        except OSError:
            pass  # a dead reader; the signal below is what counts
        self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL its process group and reap it."""
        self._signal_group(signal.SIGKILL)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.warning("warm trainer pid %d did not end after SIGKILL", self.pid)

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass


def spawn_warm_trainer(settings: Settings) -> WarmTrainer:
    """Start ``python -m service.trainer.warm`` in a new session, its output in the warm log."""
    env = settings.child_environ()
    # No GPU until the job's are set: were CUDA to start early by mistake, it would see none
    # rather than every GPU of the node.
    env["CUDA_VISIBLE_DEVICES"] = ""
    settings.home.mkdir(parents=True, exist_ok=True)
    with open(settings.home / WARM_LOG_FILE, "ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "service.trainer.warm"],
            stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, cwd=settings.home, env=env,
            start_new_session=True, preexec_fn=die_with_parent)
    return WarmTrainer(popen)


def warm_trainers_to_start(wanted: int, idle: int, free_slots: int) -> int:
    """How many warm trainers to start now: one per free slot without one, up to ``wanted`` in all."""
    return max(0, min(wanted, free_slots) - idle)


class WarmPool:
    """The idle warm trainers of one supervisor."""

    def __init__(self, settings: Settings, size: int,
                 spawn: Callable[[Settings], WarmTrainer] = spawn_warm_trainer) -> None:
        self.settings = settings
        self.size = size
        self.idle: list[WarmTrainer] = []
        self._spawn = spawn
        self._deaths_in_a_row = 0
        self._not_before = 0.0

    def take(self) -> WarmTrainer | None:
        """The oldest idle warm trainer still alive, removed from the pool; None when there is none."""
        self.drop_dead()
        return self.idle.pop(0) if self.idle else None

    def taken(self) -> None:
        """Note that a warm trainer took its job: it was healthy, so restarts need no delay."""
        self._deaths_in_a_row = 0

    def drop_dead(self) -> None:
        """Forget idle warm trainers that exited, and delay their replacement if they keep dying."""
        for warm in [w for w in self.idle if w.poll() is not None]:
            self.idle.remove(warm)
            self._deaths_in_a_row += 1
            delay = min(MAX_RESTART_DELAY, 2.0 ** (self._deaths_in_a_row - 1))
            self._not_before = time.monotonic() + delay
            log.warning("warm trainer pid %d exited with status %s while idle (see %s); replacing it in %.0f s",
                        warm.pid, warm.poll(), self.settings.home / WARM_LOG_FILE, delay)

    def replenish(self, free_slots: int) -> None:
        """Start warm trainers so each free slot has one ready, up to the pool's size."""
        self.drop_dead()
        count = warm_trainers_to_start(self.size, len(self.idle), free_slots)
        if count == 0 or time.monotonic() < self._not_before:
            return
        for _ in range(count):
            try:
                warm = self._spawn(self.settings)
            except OSError:
                log.exception("could not start a warm trainer; jobs start cold meanwhile")
                self._not_before = time.monotonic() + MAX_RESTART_DELAY
                return
            self.idle.append(warm)
            log.info("warm trainer pid %d started", warm.pid)

    def stop_all(self, grace: float) -> None:
        """SIGTERM every idle warm trainer, SIGKILL those still alive after ``grace`` seconds."""
        for warm in self.idle:
            warm.terminate()
        deadline = time.monotonic() + grace
        while any(w.poll() is None for w in self.idle) and time.monotonic() < deadline:
            time.sleep(0.05)
        for warm in self.idle:
            warm.kill()
        self.idle = []
