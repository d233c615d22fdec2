"""Requests per minute per tenant, through flask-limiter.

One fixed-window counter per tenant covers every /v1 endpoint. The counters live in this
process's memory on a single node, and in the job database when it is PostgreSQL, so every
API replica counts against the same total (service.store.rate_limits). A request over the
limit gets 429 problem+json naming the quota, with Retry-After.
"""

from __future__ import annotations

import math
import time
from typing import Any, cast

from flask import Flask, current_app, g, request
from flask_limiter import Limiter, RateLimitExceeded
from sqlalchemy import Engine

from service.api.auth import PROTECTED_PREFIX
from service.config import Settings
from service.errors import QuotaExceeded, problem_response
from service.store.rate_limits import DATABASE_STORAGE_SCHEME
from service.tenants import Tenant

MEMORY_STORAGE = "memory://"
DATABASE_STORAGE = "database"


def storage_for(settings: Settings, engine: Engine) -> tuple[str, dict[str, Any]]:
    """flask-limiter's storage URI and options from FITJOBS_RATE_LIMIT_STORAGE."""
    choice = settings.rate_limit_storage.strip()
    if not choice:
        choice = DATABASE_STORAGE if engine.dialect.name == "postgresql" else MEMORY_STORAGE
    if choice == DATABASE_STORAGE:
        return f"{DATABASE_STORAGE_SCHEME}://", {"engine": engine}
    return choice, {}


def _caller() -> Tenant | None:
    tenant: Tenant | None = g.get("fitjobs_tenant")
    return tenant


def _key() -> str:
    tenant = _caller()
    return tenant.name if tenant is not None else "-"


def _per_minute() -> str:
    tenant = _caller()
    return f"{tenant.quotas.requests_per_minute if tenant else 0}/minute"


def _exempt() -> bool:
    # Probes, scrapers and the OpenAPI document are never limited; nor is a tenant without a limit.
    tenant = _caller()
    return (not request.path.startswith(PROTECTED_PREFIX) or tenant is None
            or not tenant.quotas.requests_per_minute)


def install_rate_limits(app: Flask, settings: Settings, engine: Engine) -> Limiter:
    """Limit each tenant's /v1 requests per minute; call after install_auth, which names the tenant."""
    uri, options = storage_for(settings, engine)
    limiter = Limiter(
        key_func=_key, application_limits=[_per_minute], application_limits_exempt_when=_exempt,
        strategy="fixed-window", storage_uri=uri, storage_options=cast(dict[str, str | int], options),
        headers_enabled=False, swallow_errors=False)
    limiter.init_app(app)
    app.extensions["fitjobs.limiter"] = limiter

    @app.errorhandler(RateLimitExceeded)
    def _too_many_requests(exc: RateLimitExceeded) -> Any:
        tenant = _caller()
        limit = tenant.quotas.requests_per_minute if tenant else 0
        current = limiter.current_limit
        # When the window ends (flask-limiter's reset_at adds a second to it).
        reset_at = current.window[0] if current is not None else time.time() + 60
        refused = QuotaExceeded(
            f"Tenant {tenant.name if tenant else '?'!r} sent more than {limit} requests this minute, its quota "
            "requests_per_minute; retry after Retry-After seconds.",
            quota="requests_per_minute", limit=limit, retry_after=math.ceil(reset_at - time.time()))
        return problem_response(refused.status, refused.slug, refused.title, refused.detail,
                                extra=refused.extra, headers=refused.response_headers())

    return limiter


def requests_this_minute(tenant: Tenant) -> int | None:
    """Requests the tenant sent in the current window (this one included); None without a limit."""
    if not tenant.quotas.requests_per_minute:
        return None
    limiter = cast(Limiter, current_app.extensions["fitjobs.limiter"])
    current = limiter.current_limit
    if current is None:
        return None
    return tenant.quotas.requests_per_minute - current.remaining
