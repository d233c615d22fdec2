"""The ServiceError tree and the one handler that turns errors into RFC 9457 problem+json."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, has_request_context, json, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://fitjobs.dev/problems/"

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error the API reports to the caller; subclasses fix the status and problem type."""

    status = 500
    slug = "internal"
    title = "Internal error"

    def __init__(self, detail: str, *, errors: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.extra = extra or {}
        self.headers = dict(headers or {})

    def response_headers(self) -> dict[str, str]:
        """Headers the problem response carries besides its content type."""
        return dict(self.headers)


class BadRequest(ServiceError):
    """The request cannot be read at all (malformed JSON, empty body)."""

    status = 400
    slug = "bad-request"
    title = "Bad request"


class Unauthorized(ServiceError):
    """The request carries no valid bearer token (FITJOBS_API_TOKENS is set)."""

    status = 401
    slug = "unauthorized"
    title = "Unauthorized"

    def response_headers(self) -> dict[str, str]:
        """RFC 6750: a 401 names the scheme the client must use."""
        return {"WWW-Authenticate": 'Bearer realm="fitjobs"', **self.headers}


class Forbidden(ServiceError):
    """The caller's tenant lacks the role this request needs."""

    status = 403
    slug = "forbidden"
    title = "Forbidden"


class QuotaExceeded(ServiceError):
    """The caller's tenant is at one of its quotas or its rate limit; ``quota`` names it."""

    status = 429
    slug = "quota-exceeded"
    title = "Quota exceeded"

    def __init__(self, detail: str, *, quota: str, limit: int, retry_after: int,
                 used: int | None = None) -> None:
        extra: dict[str, Any] = {"quota": quota, "limit": limit}
        if used is not None:
            extra["used"] = used
        super().__init__(detail, extra=extra)
        self.retry_after = max(1, retry_after)

    def response_headers(self) -> dict[str, str]:
        """A 429 tells the client when to try again (RFC 6585)."""
        return {"Retry-After": str(self.retry_after), **self.headers}


class PayloadTooLarge(ServiceError):
    """The upload is larger than FITJOBS_MAX_UPLOAD_BYTES."""

    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(ServiceError):
    """The request body is not in a content type this endpoint accepts."""

    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class ValidationFailed(ServiceError):
    """The body was read but some fields are invalid; ``errors`` is keyed by field path."""

    status = 422
    slug = "validation-failed"
    title = "The request has invalid fields"


class DryRunFailed(ValidationFailed):
    """A dry run found problems; the problem details carry the whole report."""

    slug = "dry-run-problems"
    title = "The spec's data or model has problems"


class NotFound(ServiceError):
    """The named resource does not exist."""

    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(ServiceError):
    """The request is valid but conflicts with the resource's current state."""

    status = 409
    slug = "conflict"
    title = "Conflict"


class ServiceUnavailable(ServiceError):
    """A dependency (the database) cannot be reached right now, or this node is shutting down."""

    status = 503
    slug = "unavailable"
    title = "Service unavailable"
    # Seconds a client should wait before it retries; every 503 says so in Retry-After.
    retry_after = 5

    def response_headers(self) -> dict[str, str]:
        """A 503 always tells the client when to come back."""
        return {"Retry-After": str(self.retry_after), **self.headers}


class TooManyStreams(ServiceUnavailable):
    """This API process already follows FITJOBS_API_MAX_STREAMS event streams."""

    slug = "too-many-streams"
    title = "Too many open event streams"
    retry_after = 10


def flatten_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn marshmallow's nested message dict into {"data.train.path": ["..."]}."""
    flat: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "_schema":
                path = prefix or "body"
            for sub_path, texts in flatten_errors(value, path).items():
                flat.setdefault(sub_path, []).extend(texts)
    elif isinstance(messages, (list, tuple)):
        if all(isinstance(item, str) for item in messages):
            flat[prefix or "body"] = list(messages)
        else:
            for item in messages:
                for sub_path, texts in flatten_errors(item, prefix).items():
                    flat.setdefault(sub_path, []).extend(texts)
    else:
        flat[prefix or "body"] = [str(messages)]
    return flat


def summarize_errors(errors: dict[str, list[str]]) -> str:
    """One readable sentence naming every invalid field."""
    parts = [f"{path}: {' '.join(texts).rstrip('.')}" for path, texts in sorted(errors.items())]
    return "; ".join(parts) + "."


def problem_response(status: int, slug: str, title: str, detail: str,
                     errors: dict[str, Any] | None = None,
                     extra: dict[str, Any] | None = None,
                     headers: Mapping[str, str] | None = None) -> Response:
    """Build an application/problem+json response with ``headers`` (Allow, Retry-After, ...) added."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    if extra:
        body.update(extra)
    if has_request_context() and "request_id" in g:
        body["request_id"] = g.request_id
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_CONTENT_TYPE)
    response.headers.update(headers or {})
    return response


# Headers of an HTTPException that describe its own HTML body; the problem body replaces it.
BODY_HEADERS = frozenset({"content-type", "content-length"})


def exception_headers(exc: HTTPException) -> dict[str, str]:
    """The headers an HTTPException asks for (Allow on 405, WWW-Authenticate on 401, Retry-After on
    429 and 503), without those of the body it would have sent."""
    return {name: value for name, value in exc.get_headers() if name.lower() not in BODY_HEADERS}


def _from_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers = exception_headers(exc)
    data = getattr(exc, "data", None) or {}
    messages = data.get("messages")
    if status == 422 and messages is not None:
        # webargs nests messages under the request location ("json", "query", ...);
        # the location is noise for callers, the field path is what they need.
        if isinstance(messages, dict) and len(messages) == 1:
            messages = next(iter(messages.values()))
        errors = flatten_errors(messages)
        return problem_response(422, ValidationFailed.slug, ValidationFailed.title,
                                summarize_errors(errors), errors, headers=headers)
    if status == 400 and messages is not None:
        errors = flatten_errors(messages)
        detail = summarize_errors(errors)
        if "Invalid JSON body" in detail:
            detail = "The request body is not valid JSON."
        return problem_response(400, BadRequest.slug, BadRequest.title, detail, headers=headers)
    slug = (exc.name or "error").lower().replace(" ", "-")
    return problem_response(status, slug, exc.name or "Error", exc.description or exc.name or "",
                            headers=headers)


def install_error_handlers(app: Flask) -> None:
    """Route every error raised while serving a request through problem+json."""

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        return problem_response(exc.status, exc.slug, exc.title, exc.detail, exc.errors, exc.extra,
                                exc.response_headers())

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return _from_http_exception(exc)

    @app.errorhandler(OperationalError)
    def _database_down(exc: OperationalError) -> Response:
        log.warning("database unavailable: %s", str(exc).splitlines()[0])
        unavailable = ServiceUnavailable("The job database cannot be reached right now; retry shortly.",
                                         extra={"retryable": True})
        return problem_response(503, unavailable.slug, unavailable.title, unavailable.detail,
                                extra=unavailable.extra, headers=unavailable.response_headers())

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if type(exc).__module__.startswith("gunicorn.http"):
            # gunicorn parses a request's body as the view reads it (chunk sizes, framing).
            log.info("unreadable request body: %s", type(exc).__name__)
            return problem_response(400, BadRequest.slug, BadRequest.title,
                                    f"The request body could not be read ({type(exc).__name__}).")
        log.exception("unhandled error while serving request %s (%s %s)", g.get("request_id", "-"),
                      request.method, request.path)
        return problem_response(500, ServiceError.slug, ServiceError.title,
                                "The server failed to handle this request; the error was logged with its "
                                "request_id.")
