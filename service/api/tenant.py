"""The caller's tenant: who it is, what it may do, and how much of each quota it uses."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from service.api.auth import current_tenant
from service.api.context import current_store
from service.api.rate_limits import requests_this_minute
from service.api.sources import current_dataset_store
from service.errors import QuotaExceeded
from service.schemas import TenantSchema
from service.tenants import QuotaReached

# Retry-After of a 429 per quota: jobs end within minutes; stored uploads stay until deleted.
QUOTA_RETRY_SECONDS = {"active_jobs": 30, "gpus": 30, "upload_bytes": 300}

blp = Blueprint("tenant", __name__, url_prefix="/v1/tenant", description="The caller's tenant and its quotas.")


@blp.route("")
class TenantResource(MethodView):
    @blp.response(200, TenantSchema)
    def get(self) -> dict[str, Any]:
        """The caller's tenant: name, roles, and each quota's limit (0: none) and current use.

        Over a quota, requests get 429 with `Retry-After` and a `quota` field naming it.
        """
        tenant = current_tenant()
        quotas = tenant.quotas
        active, gpus = current_store().active_use(tenant.name)
        return {"name": tenant.name, "roles": sorted(role.value for role in tenant.roles), "quotas": {
            "active_jobs": {"limit": quotas.active_jobs, "used": active},
            "gpus": {"limit": quotas.gpus, "used": gpus},
            "upload_bytes": {"limit": quotas.upload_bytes, "used": current_dataset_store().stored_bytes(tenant.name)},
            "requests_per_minute": {"limit": quotas.requests_per_minute, "used": requests_this_minute(tenant)},
        }}


def quota_exceeded(exc: QuotaReached) -> QuotaExceeded:
    """The 429 problem of a quota the caller's tenant reached."""
    what = {"active_jobs": "queued or running jobs", "gpus": "GPUs requested by queued or running jobs",
            "upload_bytes": "bytes of uploaded datasets"}.get(exc.quota, exc.quota)
    advice = ("delete uploaded datasets it no longer needs" if exc.quota == "upload_bytes"
              else "wait for some of its jobs to end, or cancel some")
    return QuotaExceeded(f"Tenant {current_tenant().name!r} has {exc.used} {what}, and its quota {exc.quota} is "
                         f"{exc.limit}; {advice}, then retry.", quota=exc.quota, limit=exc.limit, used=exc.used,
                         retry_after=QUOTA_RETRY_SECONDS.get(exc.quota, 60))
