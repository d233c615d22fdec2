"""Who is calling the /v1 API: the tenant of the bearer token, and what its roles allow.

With tenants configured (FITJOBS_TENANTS_FILE, or FITJOBS_API_TOKENS as the one tenant
"default") every /v1 request needs a token; its sha256 is compared in constant time with
every known hash. Without any, callers are the anonymous "default" tenant (and the API
listens on loopback only unless FITJOBS_ALLOW_ANONYMOUS=1, see service.cli).

Health, readiness, the OpenAPI document and Prometheus metrics stay open: probes and
scrapers carry no tokens.
"""

from __future__ import annotations

import re

from flask import Flask, g, request

from service.config import Settings
from service.errors import Forbidden, Unauthorized
from service.tenants import Role, Tenant, find_tenant

PROTECTED_PREFIX = "/v1/"
# RFC 6750 section 3.1: a token that was sent but is not accepted.
INVALID_TOKEN_CHALLENGE = 'Bearer realm="fitjobs", error="invalid_token"'
# Methods that only read; every other method changes something and needs the submit role.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Paths any authenticated caller may read, whatever its roles: who it is.
ROLE_FREE_PATHS = frozenset({"/v1/tenant"})
# POSTs that change nothing, so the read role may send them: online predictions.
READ_ONLY_POSTS = re.compile(r"^/v1/jobs/[^/]+/predictions$")


def install_auth(app: Flask, settings: Settings) -> None:
    """Identify the tenant of every /v1 request and refuse it without the role its method needs."""
    tenants = settings.tenants
    anonymous = settings.anonymous_tenant

    @app.before_request
    def identify_caller() -> None:
        if not request.path.startswith(PROTECTED_PREFIX):
            return
        tenant = authenticate(tenants) if tenants else anonymous
        g.fitjobs_tenant = tenant
        if request.path in ROLE_FREE_PATHS:
            return
        reads = request.method in READ_METHODS or (request.method == "POST" and READ_ONLY_POSTS.match(request.path))
        needed = Role.READ if reads else Role.SUBMIT
        if not tenant.may(needed):
            raise Forbidden(f"Tenant {tenant.name!r} lacks the {needed.value!r} role that "
                            f"{request.method} requests need.", extra={"role": needed.value})


def authenticate(tenants: tuple[Tenant, ...]) -> Tenant:
    """The tenant of the request's bearer token, or a 401 problem."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("This API needs `Authorization: Bearer <token>`.")
    tenant = find_tenant(tenants, given.strip())
    if tenant is None:
        raise Unauthorized("The bearer token is not valid for this API.",
                           headers={"WWW-Authenticate": INVALID_TOKEN_CHALLENGE})
    return tenant


def current_tenant() -> Tenant:
    """The tenant of the /v1 request being served."""
    tenant: Tenant = g.fitjobs_tenant
    return tenant


def visible(owner: str) -> bool:
    """Whether an object of tenant ``owner`` exists for the caller: its own, or any for an admin."""
    tenant = current_tenant()
    return tenant.sees_all or owner == tenant.name


def listed_tenant() -> str | None:
    """The tenant whose objects lists show the caller; None (every tenant) for an admin."""
    tenant = current_tenant()
    return None if tenant.sees_all else tenant.name
