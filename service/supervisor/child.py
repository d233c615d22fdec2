"""One trainer child process: spawning it in its own session, stopping it, reading its end."""

from __future__ import annotations

import ctypes
import enum
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from service.config import Settings
from service.jobs import Job

PR_SET_PDEATHSIG = 1
LOG_FILE = "trainer.log"


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux prctl)."""
    # Runs in the child between fork and exec: if the supervisor dies, even by SIGKILL,
    # the kernel kills the trainer too, so no orphan keeps a GPU busy.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class StopReason(str, enum.Enum):
    """Why the supervisor stopped a trainer; it decides what the attempt's end means."""

    CANCEL = "cancel"  # the job's cancel was requested
    SHUTDOWN = "shutdown"  # the supervisor is stopping (a node drain): the job is queued again
    TIMEOUT = "timeout"  # the attempt outran the job's max_runtime_seconds
    LOST = "lost"  # the attempt is no longer the job's current one here: nothing is recorded


@dataclass
class TrainerProcess:
    """A running trainer child and what the supervisor did to it.

    ``started`` is when it got its job: its spawn for a cold trainer, its assignment for a
    warm one (service.supervisor.warm), whose process was started earlier.
    """

    job_id: str
    attempt: int
    popen: subprocess.Popen[bytes]
    attempt_dir: Path
    started: float = field(default_factory=time.monotonic)
    gpu_ids: tuple[str, ...] = ()
    oom_kills_at_start: int = 0
    stop_reason: StopReason | None = None
    term_sent_at: float | None = None
    kill_sent: bool = False
    warm: bool = False

    @property
    def log_path(self) -> Path:
        """The file the child's stdout and stderr go to."""
        return self.attempt_dir / LOG_FILE

    def poll(self) -> int | None:
        """The exit status (negative for a signal) or None while it runs."""
        return self.popen.poll()

    def stop(self, reason: StopReason) -> None:
        """Ask the child's whole process group to end (SIGTERM); remembers why."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.term_sent_at is None and self.poll() is None:
            self.term_sent_at = time.monotonic()
            self._signal_group(signal.SIGTERM)

    def kill_if_overdue(self, grace: float) -> None:
        """SIGKILL the process group once ``grace`` seconds passed since SIGTERM."""
        if (self.term_sent_at is not None and not self.kill_sent and self.poll() is None
                and time.monotonic() - self.term_sent_at >= grace):
            self.kill_sent = True
            self._signal_group(signal.SIGKILL)

    def kill_group(self) -> None:
        """SIGKILL whatever is left of the process group (also after the leader exited)."""
        self._signal_group(signal.SIGKILL)

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer struck in this cgroup since the child started."""
        return oom_kill_count() > self.oom_kills_at_start

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the child's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass


def oom_counter_file() -> Path:
    """The file holding this process's cgroup `oom_kill` counter (cgroup v2, or v1 memory)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.oom_control"
    for line in lines:
        if line.startswith("0::"):
            return Path("/sys/fs/cgroup") / line[3:].lstrip("/") / "memory.events"
    return Path("/sys/fs/cgroup/memory.events")


def oom_kill_count(counter_file: Path | None = None) -> int:
    """How many processes the OOM killer ended in this cgroup and below (0 where unknown)."""
    try:
        for line in (counter_file or oom_counter_file()).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def spawn_trainer(settings: Settings, job: Job, gpu_ids: tuple[str, ...] = ()) -> TrainerProcess:
    """Start ``python -m service.trainer`` for the job's current attempt in a new session.

    The child sees only ``gpu_ids`` (an empty CUDA_VISIBLE_DEVICES hides every GPU).
    """
    attempt_dir = settings.attempt_dir(job.id, job.attempt)
    attempt_dir.mkdir(parents=True, exist_ok=True)
    env = settings.child_environ()
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    with open(attempt_dir / LOG_FILE, "ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "service.trainer", job.id, str(job.attempt)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=attempt_dir, env=env,
            start_new_session=True, preexec_fn=die_with_parent)
    return TrainerProcess(job_id=job.id, attempt=job.attempt, popen=popen, attempt_dir=attempt_dir,
                          gpu_ids=gpu_ids, oom_kills_at_start=oom_kill_count())
