"""The API side of online predictions: the node's predict process, kept running, and requests to it.

One predict process serves every API worker of a node (service.trainer.predict_server): the
gunicorn master starts it as it starts (PredictServerKeeper), so TensorFlow and transformers
are imported before the first request, and starts it again when it dies. API workers send it
one JSON line over its Unix socket and read one answer line (PredictClient). A request that
finds no server listening (it is starting, or starting again) waits for it within
FITJOBS_PREDICT_TIMEOUT. This module imports neither TensorFlow nor Flask, so the master and
the API workers stay free of them.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.check_runner import end_process, server_environ
from service.supervisor.child import die_with_parent

log = logging.getLogger(__name__)

CONNECT_RETRY_SECONDS = 0.1
STOP_GRACE_SECONDS = 5.0
# A server that dies sooner than this after its start is started again only after a pause that
# doubles with each such death, up to MAX_RESTART_DELAY_SECONDS, so a broken install does not spin.
STABLE_SECONDS = 30.0
MAX_RESTART_DELAY_SECONDS = 60.0
MAX_ANSWER_BYTES = 64 << 20
DROPPED_REQUEST_RETRIES = 1


class PredictUnavailable(RuntimeError):
    """The predict process did not answer in time, or died while answering; retrying may succeed."""


class PredictDropped(PredictUnavailable):
    """The predict process closed the connection without answering (it died, or is being replaced)."""


class PredictRefused(RuntimeError):
    """The predict process answered with an error; ``code`` says why (model_not_found, model_load_failed, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PredictClient:
    """Sends requests to the node's predict process over its Unix socket."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, op: str, args: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """The result of one request; PredictUnavailable or PredictRefused otherwise.

        Requests change nothing, so one dropped by a server that died under it is sent once more
        (to the server started in its place), within the same deadline.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        line = json.dumps({"op": op, "args": args}).encode() + b"\n"
        for tries_left in reversed(range(1 + DROPPED_REQUEST_RETRIES)):
            try:
                answer = self._exchange(line, deadline)
                break
            except PredictDropped:
                if tries_left == 0:
                    raise
                log.warning("the predict process dropped a request; sending it again")
        if "error" in answer:
            raise PredictRefused(str(answer.get("code", "internal")), str(answer["error"]))
        return dict(answer["result"])

    def _exchange(self, line: bytes, deadline: float) -> dict[str, Any]:
        """Send one request line on a new connection and read its answer line."""
        connection = self._connect(deadline)
        with connection:
            try:
                connection.settimeout(max(0.001, deadline - time.monotonic()))
                connection.sendall(line)
                return self._read_line(connection, deadline)
            except TimeoutError as exc:
                raise PredictUnavailable(f"the predict process did not answer within {self.timeout:g} s") from exc
            except OSError as exc:
                raise PredictDropped(f"the predict process dropped the request ({exc.strerror or exc})") from exc

    def _connect(self, deadline: float) -> socket.socket:
        """A connection to the server, waiting while its socket is missing or nobody listens on it."""
        while True:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                connection.connect(str(self.socket_path))
                return connection
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                connection.close()
                if time.monotonic() + CONNECT_RETRY_SECONDS >= deadline:
                    raise PredictUnavailable("the predict process is not running (it may be starting); "
                                             "try again later") from exc
                time.sleep(CONNECT_RETRY_SECONDS)
            except OSError:
                connection.close()
                raise

    @staticmethod
    def _read_line(connection: socket.socket, deadline: float) -> dict[str, Any]:
        buffer = b""
        while b"\n" not in buffer:
            connection.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = connection.recv(1 << 16)
            if not chunk:
                raise PredictDropped("the predict process stopped before it answered")
            buffer += chunk
            if len(buffer) > MAX_ANSWER_BYTES:
                raise PredictUnavailable("the predict process's answer is too large")
        return dict(json.loads(buffer.partition(b"\n")[0]))


class PredictServerKeeper:
    """Runs the node's predict process from the gunicorn master and starts it again when it dies.

    ``ensure`` is called from the master's loop (about once a second). The master reaps every
    child it has (waitpid(-1)), so a dead server may already be reaped when ``ensure`` polls;
    Popen then reports it as ended all the same.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        env = server_environ(environ)
        # On the CPU: the predict process must never take GPU memory a training job needs.
        env["CUDA_VISIBLE_DEVICES"] = ""
        self.environ = env
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_delay = 0.0
        self.next_start = 0.0
        self.starts = 0

    def ensure(self) -> None:
        """Start the server if it is not running (after a pause if it keeps dying young)."""
        now = time.monotonic()
        if self.process is not None:
            status = self.process.poll()
            if status is None:
                return
            log.warning("the predict process %d ended (status %s); starting it again", self.process.pid, status)
            self.process = None
            lived = now - self.started_at
            self.restart_delay = 0.0 if lived >= STABLE_SECONDS else min(
                MAX_RESTART_DELAY_SECONDS, max(1.0, self.restart_delay * 2))
            self.next_start = now + self.restart_delay
        if now < self.next_start:
            return
        self.process = subprocess.Popen([sys.executable, "-m", "service.trainer.predict_server"], env=self.environ,
                                        stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self.started_at = now
        self.starts += 1
        log.info("started the predict process %d", self.process.pid)

    def stop(self) -> None:
        """SIGTERM the server, then SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is not None:
            end_process(process, STOP_GRACE_SECONDS)
