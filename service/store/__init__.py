"""Persistence: SQLAlchemy engine, Alembic migrations and the JobStore."""

from __future__ import annotations

from service.store.engine import make_engine, upgrade_schema
from service.store.job_store import InvalidTransition, JobNotFound, JobStore

__all__ = ["InvalidTransition", "JobNotFound", "JobStore", "open_store"]


def open_store(database_url: str, *, migrate: bool = True) -> JobStore:
    """Connect to the database, upgrade its schema when asked, and return a JobStore."""
    engine = make_engine(database_url)
    if migrate:
        upgrade_schema(engine)
    return JobStore(engine)
