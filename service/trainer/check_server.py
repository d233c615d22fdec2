"""The check server: ``python -m service.trainer.check_server``, a child of an API worker.

Runs dry runs and upload checks for the API so that `datasets` and `transformers` never load
into the API process and a check that runs too long can be killed without harming it. Reads
one JSON request per line on stdin and answers one JSON line on the stdout it started with;
anything else printed goes to stderr. Tokenizers stay loaded between requests.

Each request may allocate ``--memory-bytes`` beyond what the process held before it
(RLIMIT_DATA: an allocation past it raises MemoryError, answered as ``{"limit": "memory"}``)
and use ``--cpu-seconds`` of CPU time (RLIMIT_CPU: past it the kernel ends the process with
SIGXCPU, which the API reads as the CPU limit). The API starts it in an empty private folder,
so a relative name (a Hub id such as ``org/name``) never finds a file by accident.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from service.locations import Locations
from service.trainer.data import caused_by_memory

OPERATIONS = ("dry_run", "inspect_upload", "ping")
PARENT_POLL_SECONDS = 1.0


def data_bytes() -> int:
    """The process's data size (what RLIMIT_DATA counts), from /proc."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds_used() -> float:
    """CPU time this process used so far, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def lower_soft_limit(which: int, value: int) -> None:
    """Set a resource's soft limit to ``value``, or to its hard limit where that is lower."""
    _, hard = resource.getrlimit(which)
    resource.setrlimit(which, (value if hard == resource.RLIM_INFINITY else min(value, hard), hard))


class CheckServer:
    """Answers requests; keeps the tokenizers it loaded."""

    def __init__(self, memory_bytes: int | None = None, cpu_seconds: int | None = None) -> None:
        self.memory_bytes = memory_bytes
        self.cpu_seconds = cpu_seconds
        import datasets
        import transformers

        from service.trainer.dry_run import TokenizerCache

        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
        self.tokenizers = TokenizerCache()

    def dry_run(self, spec: dict[str, Any], locations: dict[str, Any]) -> dict[str, Any]:
        """The dry-run report of ``spec``; file tables are cached in a folder removed afterwards."""
        from service.trainer.dry_run import dry_run

        with tempfile.TemporaryDirectory(prefix="fitjobs-dry-run-") as cache:
            return dry_run(spec, Locations.from_dict(locations), Path(cache), self.tokenizers)

    def inspect_upload(self, path: str, limits: dict[str, Any] | None = None) -> dict[str, Any]:
        """Rows and columns of an uploaded file, or the problem that makes it unusable."""
        from service.trainer.dry_run import inspect_upload
        from service.uploads import UploadLimits

        return inspect_upload(Path(path), UploadLimits.from_dict(limits) if limits else None)

    def ping(self) -> dict[str, Any]:
        """Answer that the server is up (and which process it is)."""
        return {"pid": os.getpid()}

    def limit_next_request(self) -> None:
        """Allow the next request its memory and CPU time on top of what the process used so far."""
        if self.memory_bytes is not None:
            lower_soft_limit(resource.RLIMIT_DATA, data_bytes() + self.memory_bytes)
        if self.cpu_seconds is not None:
            lower_soft_limit(resource.RLIMIT_CPU, math.ceil(cpu_seconds_used()) + self.cpu_seconds)

    def handle(self, line: str) -> dict[str, Any]:
        """The answer to one request line: {"result": ...}, {"error": "..."} or {"limit": "memory", ...}."""
        try:
            request = json.loads(line)
            if request.get("op") not in OPERATIONS:
                return {"error": f"unknown operation {request.get('op')!r}"}
            operation: Callable[..., dict[str, Any]] = getattr(self, request["op"])
            self.limit_next_request()
            return {"result": operation(**request.get("args", {}))}
        except Exception as exc:  # noqa: BLE001 - every failure is answered; the server keeps serving
            if caused_by_memory(exc):
                return {"limit": "memory", "error": "the check ran out of memory"}
            traceback.print_exc()
            # The API quotes this to its caller: the exception's type (and an OS error's reason), never its
            # text, which may hold server-side paths. The traceback above goes to the API's log.
            reason = f": {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else ""
            return {"error": f"{type(exc).__name__}{reason}"}


def serve(requests: TextIO, answers: TextIO, server: CheckServer) -> None:
    """Answer requests until stdin closes (the API worker went away)."""
    answers.write(json.dumps({"ready": os.getpid()}) + "\n")
    answers.flush()
    for line in requests:
        if line.strip():
            answers.write(json.dumps(server.handle(line)) + "\n")
            answers.flush()


def exit_with_parent() -> None:
    """Exit as soon as the API worker that started this process is gone, even in the middle of a check."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Keep the protocol stream for answers; send every other write to stderr."""
    parser = argparse.ArgumentParser(prog="python -m service.trainer.check_server")
    parser.add_argument("--memory-bytes", type=int, default=None, help="memory one request may allocate")
    parser.add_argument("--cpu-seconds", type=int, default=None, help="CPU seconds one request may use")
    options = parser.parse_args(argv)
    exit_with_parent()
    # No core file when the CPU limit ends the process.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, answers, CheckServer(options.memory_bytes, options.cpu_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
