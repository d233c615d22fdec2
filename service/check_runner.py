"""The API side of the check server: one child process per API worker, with a time limit per request.

Dry runs and upload checks load data, tokenizers and configs; they run in a child
(``python -m service.trainer.check_server``) so the API process never imports `datasets` or
`transformers`, and a check that takes too long is ended by killing the child (a new one
starts for the next request) instead of tying up an API worker for good.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 2.0


class CheckFailed(RuntimeError):
    """A check could not be answered: it ran out of time, or the check server broke."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class CheckRunner:
    """Sends requests to a check server child, one at a time, starting it when needed."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = dict(environ)
        self._process: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._lock = threading.Lock()

    def run(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The server's answer to one request, or CheckFailed after ``timeout`` seconds (waiting included)."""
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=max(timeout, 0.0)):
            raise CheckFailed(f"the checks of other requests took all of the {timeout:g} s limit", timed_out=True)
        try:
            process = self._ensure_started(deadline)
            assert process.stdin is not None
            try:
                process.stdin.write(json.dumps({"op": op, "args": args}).encode() + b"\n")
                process.stdin.flush()
            except OSError as exc:
                self._stop()
                raise CheckFailed(f"the check server stopped: {exc}") from exc
            answer = self._read_line(deadline, f"{op} did not finish within {timeout:g} s")
        finally:
            self._lock.release()
        if "error" in answer:
            raise CheckFailed(f"the check failed: {answer['error']}")
        return answer["result"]

    def _ensure_started(self, deadline: float) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._buffer = b""
        self._process = subprocess.Popen([sys.executable, "-m", "service.trainer.check_server"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.environ)
        log.info("started check server %d", self._process.pid)
        self._read_line(deadline, "the check server did not start in time")
        return self._process

    def _read_line(self, deadline: float, late: str) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdout is not None
        descriptor = process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._stop()
                raise CheckFailed(late, timed_out=True)
            ready, _, _ = select.select([descriptor], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(descriptor, 1 << 16)
            if not chunk:
                status = process.poll()
                self._stop()
                raise CheckFailed(f"the check server exited (status {status}) before answering")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def _stop(self) -> None:
        """End the child: SIGTERM, then SIGKILL if it lingers."""
        process, self._process = self._process, None
        self._buffer = b""
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        log.info("stopped check server %d", process.pid)

    def close(self) -> None:
        """Stop the child, if one runs."""
        with self._lock:
            self._stop()
