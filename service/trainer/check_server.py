"""The check server: ``python -m service.trainer.check_server``, a child of an API worker.

Runs dry runs and upload checks for the API so that `datasets` and `transformers` never load
into the API process and a check that runs too long can be killed without harming it. Reads
one JSON request per line on stdin and answers one JSON line on the stdout it started with;
anything else printed goes to stderr. Tokenizers stay loaded between requests.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from service.locations import Locations

OPERATIONS = ("dry_run", "inspect_upload", "ping")
PARENT_POLL_SECONDS = 1.0


class CheckServer:
    """Answers requests; keeps the tokenizers it loaded."""

    def __init__(self) -> None:
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

    def inspect_upload(self, path: str) -> dict[str, Any]:
        """Rows and columns of an uploaded file, or the problem that makes it unusable."""
        from service.trainer.dry_run import inspect_upload

        return inspect_upload(Path(path))

    def ping(self) -> dict[str, Any]:
        """Answer that the server is up (and which process it is)."""
        return {"pid": os.getpid()}

    def handle(self, line: str) -> dict[str, Any]:
        """The answer to one request line: {"result": ...} or {"error": "..."}."""
        try:
            request = json.loads(line)
            if request.get("op") not in OPERATIONS:
                return {"error": f"unknown operation {request.get('op')!r}"}
            operation: Callable[..., dict[str, Any]] = getattr(self, request["op"])
            return {"result": operation(**request.get("args", {}))}
        except Exception as exc:  # noqa: BLE001 - every failure is answered; the server keeps serving
            traceback.print_exc()
            return {"error": f"{type(exc).__name__}: {exc}"}


def serve(requests: TextIO, answers: TextIO) -> None:
    """Answer requests until stdin closes (the API worker went away)."""
    server = CheckServer()
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


def main() -> int:
    """Keep the protocol stream for answers; send every other write to stderr."""
    exit_with_parent()
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
