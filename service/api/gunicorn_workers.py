"""gunicorn worker classes whose own error answers are problem+json, like the application's.

gunicorn refuses some requests before the application sees them: a request line over
limit_request_line (414), too many or too large header fields (431), a malformed request
line, header or chunk framing (400). It writes those answers with gunicorn.util.write_error,
as HTML; these workers write RFC 9457 problem+json instead. Imported by the gunicorn master,
so it imports neither Flask nor anything that imports it (see service.api).
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker
from gunicorn.workers.gthread import ThreadWorker

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://fitjobs.dev/problems/"
# What gunicorn's parser echoes of a refused request line or header is cut to this length.
MAX_DETAIL_CHARS = 300


log = logging.getLogger("gunicorn.error")


def problem_answer(status: int, reason: str, message: str, request_id: str) -> bytes:
    """The whole HTTP/1.1 answer gunicorn sends for a request it refused, as problem+json."""
    detail = message or reason
    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[:MAX_DETAIL_CHARS] + "..."
    body = json.dumps({"type": PROBLEM_TYPE_BASE + reason.lower().replace(" ", "-"), "title": reason,
                       "status": status, "detail": detail, "request_id": request_id}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: {PROBLEM_CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n\r\n")
    return head.encode("latin-1") + body


def write_problem(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """Drop-in for gunicorn.util.write_error; the refusal is logged with the request id it answers with."""
    request_id = uuid.uuid4().hex
    log.info("request %s refused with %d %s", request_id, status_int, reason)
    util.write_nonblock(sock, problem_answer(status_int, reason, mesg, request_id))


class ProblemErrors:
    """Mixin: a worker process whose gunicorn error answers are problem+json.

    Worker.handle_error (which picks the status for each parser error) writes through the
    module function gunicorn.util.write_error, with no hook to replace it; each worker process
    replaces it once as it starts. The master never writes such answers.
    """

    def init_process(self) -> None:
        util.write_error = write_problem
        super().init_process()  # type: ignore[misc]


class ProblemThreadWorker(ProblemErrors, ThreadWorker):
    """gunicorn's gthread worker, answering its own errors as problem+json."""


class ProblemGeventWorker(ProblemErrors, GeventWorker):
    """gunicorn's gevent worker, answering its own errors as problem+json."""


def worker_class(name: str) -> str:
    """The dotted path of this module's worker for a FITJOBS_API_WORKER_CLASS value (gevent or gthread)."""
    return f"{__name__}.ProblemGeventWorker" if name == "gevent" else f"{__name__}.ProblemThreadWorker"
