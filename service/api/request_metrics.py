"""Figures only an API process knows: how long its requests take, and the event streams it holds open.

These live in each process. Under gunicorn (`fitjobs api`) every worker writes them to files
in a folder made for this start (prometheus-client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR,
set by the gunicorn master before any worker imports prometheus-client), and `GET /metrics` of
any worker sums the files of all of them. Under a plain server (tests, `flask run`) they are
ordinary in-process metrics.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import Gauge, Histogram, disable_created_metrics

# From a millisecond read to a large upload or a slow database.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED_ROUTE = "unmatched"
# Any other method a client sends is labelled "other", so that made-up methods add no series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# No `_created` series: the multiprocess mode has none, so the exposition is the same in both modes.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Registered in no registry: GET /metrics collects them itself (or their files, under gunicorn).
REQUEST_SECONDS = Histogram(
    "fitjobs_api_request_duration_seconds",
    "Seconds from a request's arrival in the application to its response's headers, by method, route "
    "(the URL rule, e.g. /v1/jobs/<job_id>) and status.",
    ["method", "route", "status"], buckets=REQUEST_BUCKETS, registry=None)
OPEN_STREAMS = Gauge(
    "fitjobs_api_open_event_streams",
    "Server-Sent Events streams of job events being served right now.",
    registry=None, multiprocess_mode="livesum")


def install_request_metrics(app: Flask) -> None:
    """Time every request of ``app``; registered before the other hooks, so their refusals count too."""
    app.before_request(_start_timer)
    app.after_request(_observe)


def _start_timer() -> None:
    g.fitjobs_request_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.pop("fitjobs_request_started", None)
    if started is not None:
        # The URL rule, not the path: one series per route, however many job ids are asked for.
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        method = request.method if request.method in KNOWN_METHODS else "other"
        REQUEST_SECONDS.labels(method, route, str(response.status_code)).observe(
            time.perf_counter() - started)
    return response
