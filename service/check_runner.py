"""The API side of the check servers: a few child processes per API worker, each with limits per check.

Dry runs and upload checks load data, tokenizers and configs; they run in a child
(``python -m service.trainer.check_server``) so the API process never imports `datasets` or
`transformers`. Each child answers one check at a time; an API worker runs up to
FITJOBS_CHECK_CONCURRENCY of them, so a slow or stalled check holds up only its own child. A
check that waits longer than FITJOBS_CHECK_QUEUE_SECONDS for a free child is refused (CheckBusy,
503 with Retry-After). The child limits each check's memory (RLIMIT_DATA) and CPU time
(RLIMIT_CPU); a check over either is CheckLimitExceeded (422). A check that takes too long is
ended by killing its child; a new one starts for a later request.
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 2.0
MIB = 1024 * 1024


def end_process(process: subprocess.Popen[Any], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM a child that is still running, then SIGKILL it if it lingers past ``grace`` seconds; reap it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class CheckFailed(RuntimeError):
    """A check could not be answered: it ran out of time, or the check server broke."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class CheckBusy(CheckFailed):
    """Every check process of this API worker stayed busy while the check waited; retry later."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, timed_out=True)
        self.retry_after = retry_after


class CheckLimitExceeded(CheckFailed):
    """The check needed more memory or CPU time than one check may have; the message names the limit."""


@dataclass(frozen=True)
class CheckLimits:
    """How many checks run at once, how long one waits for a turn, and what one check may use."""

    concurrency: int = 1
    queue_seconds: float | None = None  # None: as long as the check's own timeout
    memory_bytes: int | None = None
    cpu_seconds: int | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> CheckLimits:
        """The limits a Settings names (FITJOBS_CHECK_*)."""
        return cls(concurrency=settings.check_concurrency, queue_seconds=settings.check_queue_seconds,
                   memory_bytes=settings.check_memory_bytes, cpu_seconds=settings.check_cpu_seconds)

    def server_arguments(self) -> list[str]:
        """The check server's command-line options for these limits."""
        arguments = []
        if self.memory_bytes is not None:
            arguments += ["--memory-bytes", str(self.memory_bytes)]
        if self.cpu_seconds is not None:
            arguments += ["--cpu-seconds", str(self.cpu_seconds)]
        return arguments

    def memory_message(self) -> str:
        """What a check over the memory limit is told."""
        if self.memory_bytes is None:
            return "the check ran out of memory"
        return (f"the check needed more than {self.memory_bytes / MIB:,.0f} MiB of memory "
                "(FITJOBS_CHECK_MEMORY_BYTES)")

    def cpu_message(self) -> str:
        """What a check over the CPU limit is told."""
        return f"the check took more than {self.cpu_seconds} s of CPU time (FITJOBS_CHECK_CPU_SECONDS)"


def server_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with this `service` package's folder first on PYTHONPATH, so the child runs the same code."""
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(environ)
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    return env


class CheckProcess:
    """One check server child and the bytes read from it but not yet answered."""

    def __init__(self, environ: Mapping[str, str], limits: CheckLimits, deadline: float) -> None:
        self.limits = limits
        self.buffer = b""
        # An empty private working folder: a relative name (a Hub id such as "org/name") finds no file in it.
        self.workdir = tempfile.mkdtemp(prefix="fitjobs-check-")
        self.process = subprocess.Popen([sys.executable, "-m", "service.trainer.check_server",
                                         *limits.server_arguments()],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=server_environ(environ),
                                        cwd=self.workdir)
        log.info("started check server %d", self.process.pid)
        try:
            self.read_line(deadline, "the check server did not start in time")
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether the child still runs."""
        return self.process.poll() is None

    def request(self, op: str, args: dict[str, Any], deadline: float, late: str) -> dict[str, Any]:
        """Send one request and return its answer line; raises CheckFailed (the child is then stopped)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"op": op, "args": args}).encode() + b"\n")
            self.process.stdin.flush()
        except OSError as exc:
            self.stop()
            raise CheckFailed("the check server stopped before it took the request") from exc
        return self.read_line(deadline, late)

    def read_line(self, deadline: float, late: str) -> dict[str, Any]:
        """The next answer line, read until ``deadline``."""
        assert self.process.stdout is not None
        descriptor = self.process.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise CheckFailed(late, timed_out=True)
            ready, _, _ = select.select([descriptor], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(descriptor, 1 << 16)
            if not chunk:
                self.ended()
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return dict(json.loads(line))

    def ended(self) -> None:
        """The child closed its answers: raise why (the CPU limit, or an unexpected exit)."""
        try:
            status = self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            status = None
        self.stop()
        if status == -signal.SIGXCPU:
            raise CheckLimitExceeded(self.limits.cpu_message())
        raise CheckFailed("the check server exited before answering"
                          + (f" (status {status})" if status is not None else ""))

    def stop(self) -> None:
        """End the child: SIGTERM, then SIGKILL if it lingers."""
        process = self.process
        end_process(process)
        for stream in (process.stdin, process.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        log.info("stopped check server %d", process.pid)


class CheckRunner:
    """Runs each request in a free check server child, starting one when none is idle."""

    def __init__(self, environ: Mapping[str, str], limits: CheckLimits | None = None) -> None:
        self.environ = dict(environ)
        self.limits = limits or CheckLimits()
        self._slots = threading.BoundedSemaphore(self.limits.concurrency)
        self._lock = threading.Lock()
        self._idle: list[CheckProcess] = []
        self._busy: set[CheckProcess] = set()

    def busy_pids(self) -> list[int]:
        """Process ids of the check servers answering a request now."""
        with self._lock:
            return [process.pid for process in self._busy]

    def run(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The server's answer to one request, or CheckFailed after ``timeout`` seconds (waiting included)."""
        deadline = time.monotonic() + timeout
        queue = self.limits.queue_seconds
        wait = timeout if queue is None else min(queue, timeout)
        if not self._slots.acquire(timeout=max(wait, 0.0)):
            raise CheckBusy(f"all {self.limits.concurrency} check processes of this API worker stayed busy for "
                            f"{wait:g} s", retry_after=max(1, math.ceil(wait)))
        try:
            process = self._take(deadline)
            try:
                answer = process.request(op, args, deadline, f"{op} did not finish within {timeout:g} s")
                if "limit" in answer:
                    process.stop()  # its heap may be left fragmented and large; the next check gets a new one
            finally:
                self._give_back(process)
        finally:
            self._slots.release()
        if answer.get("limit") == "memory":
            raise CheckLimitExceeded(self.limits.memory_message())
        if "error" in answer:
            raise CheckFailed(f"the check failed: {answer['error']}")
        return dict(answer["result"])

    def _take(self, deadline: float) -> CheckProcess:
        """An idle live child, or a new one."""
        with self._lock:
            while self._idle:
                process = self._idle.pop()
                if process.alive():
                    self._busy.add(process)
                    return process
                process.stop()
        process = CheckProcess(self.environ, self.limits, deadline)
        with self._lock:
            self._busy.add(process)
        return process

    def _give_back(self, process: CheckProcess) -> None:
        with self._lock:
            self._busy.discard(process)
            if process.alive():
                self._idle.append(process)

    def close(self) -> None:
        """Stop every child."""
        with self._lock:
            processes, self._idle = [*self._idle, *self._busy], []
            self._busy = set()
        for process in processes:
            process.stop()
