"""One writer at a time per tenant, for writes that check a tenant's quota first."""

from __future__ import annotations

from sqlalchemy import Connection, text

# An arbitrary constant that names quota locks among PostgreSQL advisory locks (two-key form).
TENANT_LOCK_CLASS = 0x66697401


def lock_tenant(conn: Connection, tenant: str) -> None:
    """Hold the tenant's quota lock until the caller's transaction ends.

    On PostgreSQL a transaction-level advisory lock, so two replicas cannot both see room for one
    more job or upload and both take it. SQLite writers already take turns (BEGIN IMMEDIATE).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:lock_class, hashtext(:tenant))"),
                     {"lock_class": TENANT_LOCK_CLASS, "tenant": tenant})
