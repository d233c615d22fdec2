"""Bearer-token authentication of the /v1 API, on when FITJOBS_API_TOKENS is set.

Health, readiness, the OpenAPI document and Prometheus metrics stay open: probes and
scrapers carry no tokens. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac

from flask import Flask, request

from service.errors import ServiceError

PROTECTED_PREFIX = "/v1/"


class Unauthorized(ServiceError):
    """401: the request carries no valid bearer token."""

    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


def install_auth(app: Flask, tokens: tuple[str, ...]) -> None:
    """Require one of ``tokens`` on every /v1 request (no-op when there are none)."""
    if not tokens:
        return
    expected = [token.encode() for token in tokens]

    @app.before_request
    def require_token() -> None:
        if not request.path.startswith(PROTECTED_PREFIX):
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("This API needs `Authorization: Bearer <token>`.")
        if not any(hmac.compare_digest(given.strip().encode(), token) for token in expected):
            raise Unauthorized("The bearer token is not valid for this API.")
