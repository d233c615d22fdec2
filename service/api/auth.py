"""Bearer-token authentication of the /v1 API, on when FITJOBS_API_TOKENS is set.

Health, readiness, the OpenAPI document and Prometheus metrics stay open: probes and
scrapers carry no tokens. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac

from flask import Flask, request

from service.errors import Unauthorized

PROTECTED_PREFIX = "/v1/"
# RFC 6750 section 3.1: a token that was sent but is not accepted.
INVALID_TOKEN_CHALLENGE = 'Bearer realm="fitjobs", error="invalid_token"'


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
            raise Unauthorized("The bearer token is not valid for this API.",
                               headers={"WWW-Authenticate": INVALID_TOKEN_CHALLENGE})
