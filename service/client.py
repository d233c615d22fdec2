"""A typed Python client for the fitjobs HTTP API, used by the CLI and by other services.

Every endpoint of openapi.yaml has a method. Errors are exceptions carrying the problem+json
fields. Requests are retried on connection errors (when resending them is safe) and on 503
and 429 answers, honouring `Retry-After`; a submission always carries an `Idempotency-Key`,
so a retried submit never makes two jobs. `follow` reads the Server-Sent Events stream and
resumes with `Last-Event-ID` after a dropped connection; `download` streams to disk and checks
the size and the `Repr-Digest` (SHA-256) the API sends.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast
from urllib.parse import quote

import httpx

if TYPE_CHECKING:
    from service.config import Settings

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
DEFAULT_URL = "http://127.0.0.1:8080"
PAGE_SIZE = 100  # the most rows one list request asks for; the API allows 200


# -- documents ------------------------------------------------------------------------------------
# TypedDicts rather than classes: the documents are the API's JSON as it is, so `--json` output and
# callers that already index them by key keep working, and a field the API adds is not lost.

class Progress(TypedDict, total=False):
    """Where a running job is: epoch and step, throughput and the ETA of the fit."""

    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int | None
    examples_per_second: float | None
    eta_seconds: float | None


class JobFailure(TypedDict):
    """Why a job failed: a stable code, a message and whether a retry may help."""

    code: str
    message: str
    retryable: bool


class Job(TypedDict, total=False):
    """A job (GET /v1/jobs/{id}); list entries hold the same fields but `spec`, `result` and `queue`."""

    id: str
    tenant: str
    state: JobState
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str | None
    attempt: int
    max_attempts: int
    priority: int
    cancel_requested: bool
    progress: Progress
    error: JobFailure | None
    reused_from: str | None
    model: Any
    result: dict[str, Any] | None
    spec: dict[str, Any]
    queue: dict[str, Any] | None


class Prediction(Job, total=False):
    """A batch prediction job (GET /v1/predictions/{id}); `output_url` names predictions.jsonl once succeeded."""

    output_url: str | None


class EpochMetrics(TypedDict, total=False):
    """One epoch's values: loss, accuracy, macro F1, their val_ twins and the learning rate."""

    epoch: int
    loss: float
    accuracy: float
    macro_f1: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    learning_rate: float


class StepMetrics(TypedDict, total=False):
    """One step's loss and learning rate."""

    step: int
    epoch: int
    loss: float
    learning_rate: float


class Metrics(TypedDict, total=False):
    """A job's series so far (GET /v1/jobs/{id}/metrics)."""

    epochs: list[EpochMetrics]
    steps: list[StepMetrics]
    phases: dict[str, float]


class Event(TypedDict, total=False):
    """One entry of a job's event log: a state change (`state` set) or a milestone."""

    id: int
    kind: str
    state: JobState | None
    message: str
    created_at: str
    data: dict[str, Any] | None


class Finding(TypedDict, total=False):
    """A problem or warning of a dry run."""

    code: str
    check: str
    message: str
    split: str | None
    column: str | None
    row: int | None
    value: Any


class DryRunReport(TypedDict, total=False):
    """What POST /v1/jobs:validate found: labels, splits, token lengths, problems and warnings."""

    valid: bool
    num_labels: int | None
    labels: list[Any] | None
    model: dict[str, Any] | None
    splits: dict[str, dict[str, Any]]
    duplicates: dict[str, Any] | None
    steps_per_epoch: int | None
    epochs: int
    problems: list[Finding]
    warnings: list[Finding]
    seconds: float


class Dataset(TypedDict, total=False):
    """An uploaded file: its name, format, size, sha256, rows and columns."""

    id: str
    filename: str
    format: str
    size_bytes: int
    sha256: str
    rows: int
    columns: list[str]
    created_at: str
    tenant: str


class Artifact(TypedDict):
    """A published file of a job and its size in bytes."""

    name: str
    size: int


class WebhookDelivery(TypedDict):
    """One event sent, or being sent, to a job's webhook, with its attempts so far."""

    id: str
    event_type: str
    state: str
    attempts: int
    created_at: str
    last_attempt_at: str | None
    next_attempt_at: str | None
    delivered_at: str | None
    last_status_code: int | None
    last_error: str | None


@dataclass(frozen=True)
class Download:
    """A file written by `download`: where, how many bytes, their SHA-256, and whether the API vouched for it."""

    path: Path
    size: int
    sha256: str
    digest_checked: bool


# -- errors ---------------------------------------------------------------------------------------

class FitjobsError(Exception):
    """Anything this client raises."""


class TransportError(FitjobsError):
    """The service could not be reached (after the retries the request allowed)."""


class ChecksumMismatch(FitjobsError):
    """A downloaded file's size or SHA-256 differs from what the API announced."""


class WaitTimeout(FitjobsError, TimeoutError):
    """`wait` gave up before the job ended; ``job`` is its last known document."""

    def __init__(self, job: Job, timeout: float) -> None:
        self.job = job
        super().__init__(f"job {job.get('id')} is still {job.get('state')} after {timeout:g} s")


class ApiError(FitjobsError):
    """The API answered with an error: the problem+json members as attributes.

    ``extensions`` holds the members beyond RFC 9457's (job_id, state, quota, retryable, ...).
    """

    def __init__(self, status: int, problem: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.problem = dict(problem)
        self.type = str(problem.get("type") or "about:blank")
        self.title = str(problem.get("title") or "")
        self.detail = str(problem.get("detail") or "")
        self.errors: dict[str, list[str]] = dict(problem.get("errors") or {})
        self.request_id: str | None = problem.get("request_id")
        standard = {"type", "title", "status", "detail", "instance", "errors", "request_id"}
        self.extensions = {k: v for k, v in problem.items() if k not in standard}
        self.retry_after = retry_after_seconds((headers or {}).get("Retry-After"))
        super().__init__(f"HTTP {status}: {self.detail or self.title or 'request failed'}")


class BadRequest(ApiError):
    """400: the request itself is malformed."""


class Unauthorized(ApiError):
    """401: no token, or one the service does not know."""


class Forbidden(ApiError):
    """403: the token's tenant lacks the role."""


class NotFound(ApiError):
    """404: no such job, dataset or artifact (for this tenant)."""


class Conflict(ApiError):
    """409: the object's state forbids it (e.g. deleting a running job, a reused Idempotency-Key)."""


class ValidationFailed(ApiError):
    """422: the spec or a parameter is invalid; ``errors`` names the fields, ``report`` holds a dry run's."""

    @property
    def report(self) -> DryRunReport | None:
        """The dry-run report of a refused spec, when the API sent one."""
        return cast("DryRunReport | None", self.problem.get("report"))


class RateLimited(ApiError):
    """429: a quota or the request rate is exhausted; retry after ``retry_after`` seconds."""


class ServiceUnavailable(ApiError):
    """503: the database or a worker pool is away for now; retry after ``retry_after`` seconds."""


ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 422: ValidationFailed,
    429: RateLimited, 503: ServiceUnavailable,
}
RETRIED_STATUSES = frozenset({429, 503})


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds of a `Retry-After` header given as a number (the API never sends a date); None otherwise."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def error_of(response: httpx.Response) -> ApiError:
    """The exception for an error response, built from its problem+json body."""
    try:
        body = response.json()
        problem = body if isinstance(body, dict) else {"detail": str(body)}
    except ValueError:
        problem = {"detail": response.text[:500]}
    return ERRORS_BY_STATUS.get(response.status_code, ApiError)(response.status_code, problem, response.headers)


def sha256_of_repr_digest(header: str | None) -> str | None:
    """The hex SHA-256 in an RFC 9530 `Repr-Digest` header (``sha-256=:<base64>:``), if it has one."""
    for member in (header or "").split(","):
        algorithm, _, value = member.strip().partition("=")
        if algorithm.strip().lower() == "sha-256" and value.startswith(":") and value.endswith(":"):
            try:
                return base64.b64decode(value[1:-1], validate=True).hex()
            except ValueError:
                return None
    return None


# -- Server-Sent Events ---------------------------------------------------------------------------

@dataclass
class _Frame:
    id: str | None = None
    event: str = "message"
    data: str = ""


def sse_frames(lines: Iterator[str]) -> Iterator[_Frame]:
    """Parse a text/event-stream body into frames (comments and frames without data are skipped)."""
    frame = _Frame()
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                frame.data = "\n".join(data)
                yield frame
            frame, data = _Frame(), []
            continue
        if line.startswith(":"):
            continue  # keep-alive comment
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "id":
            frame.id = value
        elif name == "event":
            frame.event = value


# -- the client -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: exponential backoff with jitter, `Retry-After` as a floor."""

    attempts: int = 6  # tries in all, the first included
    backoff: float = 0.5  # seconds before the second try; doubles each time
    max_backoff: float = 20.0
    max_retry_after: float = 60.0  # a longer Retry-After is not waited for: the error is raised

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to sleep before try ``attempt + 1`` (attempt counts from 1)."""
        backoff = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
        return max(backoff, retry_after or 0.0)


class FitjobsClient:
    """Submit jobs, follow them, fetch their metrics and models, manage uploads."""

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, stream_read_timeout: float = 120.0,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.stream_read_timeout = stream_read_timeout
        self._sleep = sleep
        headers = {"User-Agent": "fitjobs-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None, **kwargs: Any) -> FitjobsClient:
        """A client for FITJOBS_URL with FITJOBS_TOKEN (else the first of FITJOBS_API_TOKENS)."""
        token = settings.token or next(iter(settings.api_tokens), None)
        return cls(url or settings.url, token=token, **kwargs)

    @classmethod
    def from_env(cls, **kwargs: Any) -> FitjobsClient:
        """A client configured from the environment (FITJOBS_URL, FITJOBS_TOKEN), as the CLI is."""
        from service.config import Settings

        return cls.from_settings(Settings.from_env(), **kwargs)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> FitjobsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------------

    @contextmanager
    def _open(self, method: str, path: str, *, resend_safe: bool, timeout: httpx.Timeout | None = None,
              **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed response to a 2xx answer, after the retries the policy allows; ApiError otherwise.

        ``resend_safe``: the request may be sent again after a connection broke mid-request
        (GETs, and POSTs that are idempotent). A request that never got through (connect
        errors) and 503/429 answers are retried whatever it is.
        """
        attempt = 0
        while True:
            attempt += 1
            request = self._http.build_request(method, path, **kwargs,
                                               timeout=timeout if timeout is not None else self._http.timeout)
            try:
                response = self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                never_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                if attempt >= self.retry.attempts or not (never_sent or resend_safe):
                    raise TransportError(f"{method} {self.base_url}{path}: {exc or type(exc).__name__}") from exc
                self._sleep(self.retry.delay(attempt, None))
                continue
            if response.status_code < 400:
                try:
                    yield response
                finally:
                    response.close()
                return
            response.read()
            response.close()
            error = error_of(response)
            retryable = response.status_code in RETRIED_STATUSES and attempt < self.retry.attempts
            if not retryable or (error.retry_after or 0) > self.retry.max_retry_after:
                raise error
            self._sleep(self.retry.delay(attempt, error.retry_after))

    def _call(self, method: str, path: str, *, resend_safe: bool = True, **kwargs: Any) -> httpx.Response:
        with self._open(method, path, resend_safe=resend_safe, **kwargs) as response:
            response.read()
            return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._call(method, path, **kwargs).json()

    def _pages(self, path: str, key: str, params: dict[str, Any], page_size: int) -> Iterator[Any]:
        cursor: str | None = None
        while True:
            page = self._json("GET", path, params={**params, "limit": page_size,
                                                   **({"cursor": cursor} if cursor else {})})
            yield from page[key]
            cursor = page.get("next")
            if not cursor:
                return

    # -- jobs -----------------------------------------------------------------------------------

    def submit(self, spec: Mapping[str, Any], idempotency_key: str | None = None) -> Job:
        """Queue a job; every try sends one Idempotency-Key (a new one unless given), so retries make one job."""
        key = idempotency_key or f"fitjobs-client-{uuid.uuid4().hex}"
        return cast(Job, self._json("POST", "/v1/jobs", json=spec, headers={"Idempotency-Key": key}))

    def validate(self, spec: Mapping[str, Any]) -> DryRunReport:
        """Dry-run a spec; returns the report, or raises ValidationFailed (its ``report`` set) when it would fail."""
        return cast(DryRunReport, self._json("POST", "/v1/jobs:validate", json=spec))

    def list_jobs(self, state: str | None = None, *, page_size: int = PAGE_SIZE) -> Iterator[Job]:
        """Every job, newest first (optionally of one state), fetched a page at a time as iterated."""
        return cast(Iterator[Job], self._pages("/v1/jobs", "jobs", {"state": state} if state else {}, page_size))

    def get_job(self, job_id: str, *, include_records: bool = False) -> Job:
        """A job's state, progress, timestamps, error, result and spec."""
        params = {"include": "records"} if include_records else {}
        return cast(Job, self._json("GET", f"/v1/jobs/{_segment(job_id)}", params=params))

    def cancel(self, job_id: str) -> Job:
        """Cancel a job (idempotent): a queued one never starts, a running one is stopped."""
        return cast(Job, self._json("POST", f"/v1/jobs/{_segment(job_id)}/cancel"))

    def delete_job(self, job_id: str) -> None:
        """Delete a finished job with its files; Conflict while it is queued or running."""
        self._call("DELETE", f"/v1/jobs/{_segment(job_id)}")

    def metrics(self, job_id: str) -> Metrics:
        """Per-epoch and per-step series so far, and the seconds of each finished phase."""
        return cast(Metrics, self._json("GET", f"/v1/jobs/{_segment(job_id)}/metrics"))

    def events(self, job_id: str, after: int = 0) -> list[Event]:
        """The job's events with an id above ``after``, oldest first."""
        document = self._json("GET", f"/v1/jobs/{_segment(job_id)}/events", params={"after": after})
        return cast(list[Event], document["events"])

    def logs(self, job_id: str) -> str:
        """The trainer's log of the latest attempt."""
        return self._call("GET", f"/v1/jobs/{_segment(job_id)}/logs").text

    def artifacts(self, job_id: str) -> list[Artifact]:
        """Every published file of a job with its size; empty until it publishes."""
        return cast(list[Artifact], self._json("GET", f"/v1/jobs/{_segment(job_id)}/artifacts")["artifacts"])

    def artifact(self, job_id: str, name: str) -> bytes:
        """One published file's content, in memory (use `download` for large files)."""
        return self._call("GET", f"/v1/jobs/{_segment(job_id)}/artifacts/{quote(name)}").content

    def webhook_deliveries(self, job_id: str) -> list[WebhookDelivery]:
        """The events sent, or being sent, to the job's webhook; empty for a job without one."""
        return cast(list[WebhookDelivery],
                    self._json("GET", f"/v1/jobs/{_segment(job_id)}/webhook-deliveries")["deliveries"])

    def evaluation(self, job_id: str) -> dict[str, Any]:
        """The evaluation report of the job's published model."""
        return cast(dict[str, Any], self._json("GET", f"/v1/jobs/{_segment(job_id)}/evaluation"))

    def wait(self, job_id: str, timeout: float | None = None, *, interval: float = 1.0,
             on_update: Callable[[Job], None] | None = None) -> Job:
        """Poll until the job ends; returns it. WaitTimeout after ``timeout`` seconds (None: no limit)."""
        return self._wait(self.get_job, job_id, timeout, interval, on_update)

    def _wait(self, get: Callable[[str], Job], job_id: str, timeout: float | None, interval: float,
              on_update: Callable[[Job], None] | None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = get(job_id)
            if on_update is not None:
                on_update(job)
            if job["state"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job, cast(float, timeout))
            pause = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
            self._sleep(pause)

    # -- batch predictions ------------------------------------------------------------------------

    def submit_prediction(self, spec: Mapping[str, Any], idempotency_key: str | None = None) -> Prediction:
        """Queue a batch prediction (``{"job": id, "data": source, ...}``); retries make one job, as with submit."""
        key = idempotency_key or f"fitjobs-client-{uuid.uuid4().hex}"
        return cast(Prediction, self._json("POST", "/v1/predictions", json=spec, headers={"Idempotency-Key": key}))

    def list_predictions(self, state: str | None = None, *, page_size: int = PAGE_SIZE) -> Iterator[Prediction]:
        """Every batch prediction job, newest first (optionally of one state), a page at a time."""
        return cast(Iterator[Prediction], self._pages("/v1/predictions", "predictions",
                                                      {"state": state} if state else {}, page_size))

    def get_prediction(self, job_id: str) -> Prediction:
        """A batch prediction job's state, progress, error or result."""
        return cast(Prediction, self._json("GET", f"/v1/predictions/{_segment(job_id)}"))

    def cancel_prediction(self, job_id: str) -> Prediction:
        """Cancel a batch prediction (idempotent)."""
        return cast(Prediction, self._json("POST", f"/v1/predictions/{_segment(job_id)}/cancel"))

    def wait_prediction(self, job_id: str, timeout: float | None = None, *, interval: float = 1.0) -> Prediction:
        """Poll until the batch prediction ends; returns it (predictions.jsonl is then an artifact of it)."""
        return cast(Prediction, self._wait(self.get_prediction, job_id, timeout, interval, None))

    def follow(self, job_id: str, after: int = 0) -> Iterator[Event]:
        """Every event after ``after`` as it happens, from the SSE stream, until the job's final one.

        A dropped stream is reopened with `Last-Event-ID`, so no event is lost or repeated;
        TransportError after ``retry.attempts`` reconnections in a row that bring nothing.
        """
        last = after
        failures = 0
        path = f"/v1/jobs/{_segment(job_id)}/events"
        timeout = httpx.Timeout(self._http.timeout.connect, read=self.stream_read_timeout)
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            got_any = False
            try:
                with self._open("GET", path, resend_safe=True, timeout=timeout, headers=headers,
                                params={"after": last}) as response:
                    for frame in sse_frames(response.iter_lines()):
                        event = cast(Event, json.loads(frame.data))
                        if frame.id is not None:
                            event.setdefault("id", int(frame.id))
                        if event["id"] <= last:
                            continue  # never hand out an event twice
                        last = event["id"]
                        got_any = True
                        yield event
                        if event.get("state") in TERMINAL:
                            return
            except (httpx.TransportError, TransportError) as exc:
                if got_any:
                    failures = 0
                failures += 1
                if failures >= self.retry.attempts:
                    raise TransportError(f"the event stream of {job_id} keeps breaking: {exc}") from exc
                self._sleep(self.retry.delay(failures, None))
                continue
            # The stream ended without the final event: the node drains, or the job had ended already.
            if self.get_job(job_id)["state"] in TERMINAL and not self.events(job_id, after=last):
                return
            failures = 0 if got_any else failures + 1
            if failures >= self.retry.attempts:
                raise TransportError(f"the event stream of {job_id} keeps ending without events")
            self._sleep(self.retry.delay(max(failures, 1), None))

    def download(self, job_id: str, path: str | os.PathLike[str], name: str | None = None) -> Download:
        """Stream the model's tar.gz (or the artifact ``name``) to ``path``, verifying size and SHA-256.

        The file appears at ``path`` only once complete and verified; a broken transfer is
        retried from the start, a checksum mismatch raises ChecksumMismatch.
        """
        url = (f"/v1/jobs/{_segment(job_id)}/model.tar.gz" if name is None
               else f"/v1/jobs/{_segment(job_id)}/artifacts/{quote(name)}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, self.retry.attempts + 1):
            fd, staged = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out, self._open("GET", url, resend_safe=True) as response:
                    digest, size = hashlib.sha256(), 0
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                    expected_size = response.headers.get("Content-Length")
                    expected_sha = sha256_of_repr_digest(response.headers.get("Repr-Digest"))
                if expected_size is not None and int(expected_size) != size:
                    raise ChecksumMismatch(f"{url}: got {size} bytes, the API announced {expected_size}")
                if expected_sha is not None and expected_sha != digest.hexdigest():
                    raise ChecksumMismatch(f"{url}: SHA-256 {digest.hexdigest()}, the API announced {expected_sha}")
                os.replace(staged, target)
                return Download(target, size, digest.hexdigest(), expected_sha is not None)
            except (httpx.TransportError, TransportError):
                if attempt >= self.retry.attempts:
                    raise
                self._sleep(self.retry.delay(attempt, None))
            finally:
                Path(staged).unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def download_model(self, job_id: str, destination: str | os.PathLike[str]) -> Path:
        """Save the job's model.tar.gz to ``destination`` (a file path), verified."""
        return self.download(job_id, destination).path

    # -- datasets, tenant, health ---------------------------------------------------------------

    def upload_dataset(self, path: str | os.PathLike[str], filename: str | None = None) -> Dataset:
        """Upload a .csv, .json, .jsonl or .parquet file (streamed as the raw body)."""
        source = Path(path)
        with open(source, "rb") as body:
            # Not resent after a broken connection (the upload may have been stored); 503/429 are.
            return cast(Dataset, self._json("POST", "/v1/datasets", resend_safe=False,
                                            params={"filename": filename or source.name}, content=body,
                                            headers={"Content-Type": "application/octet-stream"}))

    def list_datasets(self, *, page_size: int = PAGE_SIZE) -> Iterator[Dataset]:
        """Every uploaded dataset, newest first, fetched a page at a time as iterated."""
        return cast(Iterator[Dataset], self._pages("/v1/datasets", "datasets", {}, page_size))

    def get_dataset(self, dataset_id: str) -> Dataset:
        """An uploaded dataset's file name, format, size, sha256, rows and columns."""
        return cast(Dataset, self._json("GET", f"/v1/datasets/{_segment(dataset_id)}"))

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete an upload; Conflict while a queued or running job reads it."""
        self._call("DELETE", f"/v1/datasets/{_segment(dataset_id)}")

    def tenant(self) -> dict[str, Any]:
        """The caller's tenant: name, roles, and each quota's limit and use."""
        return cast(dict[str, Any], self._json("GET", "/v1/tenant"))

    def health(self) -> dict[str, Any]:
        """GET /healthz: the API process answers."""
        return cast(dict[str, Any], self._json("GET", "/healthz"))

    def ready(self) -> dict[str, Any]:
        """GET /readyz: the database is reachable (ServiceUnavailable after the retries otherwise)."""
        return cast(dict[str, Any], self._json("GET", "/readyz"))

    def openapi(self) -> str:
        """The service's OpenAPI document (YAML)."""
        return self._call("GET", "/openapi.yaml").text

    def prometheus_metrics(self) -> str:
        """The service's Prometheus exposition (GET /metrics)."""
        return self._call("GET", "/metrics").text


def _segment(value: str) -> str:
    """An id as one URL path segment (a '/' or '?' in it cannot reach another route)."""
    return quote(value, safe="")
