"""Throwaway PostgreSQL databases for tests, one per test, on the machine's server.

Tests of PostgreSQL behaviour skip with the reason when no server answers, except under
CI=true, where PostgreSQL is part of the environment and its absence is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

ADMIN_URL = os.environ.get("FITJOBS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def require_postgres() -> None:
    """Skip (or fail under CI=true) when the PostgreSQL server cannot be reached."""
    try:
        engine = create_engine(ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except OperationalError as exc:
        reason = f"PostgreSQL not reachable at {ADMIN_URL}: {str(exc).splitlines()[0]}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(reason)


@contextmanager
def temporary_database() -> Iterator[str]:
    """Create an empty database, yield its URL, drop it afterwards."""
    require_postgres()
    name = f"fitjobs_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        admin.dispose()  # a fresh connection: a test may have restarted the server meanwhile
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_cluster_command(action: str) -> list[str]:
    """`pg_ctlcluster` for the machine's one PostgreSQL cluster (start, stop)."""
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions:
        pytest.skip("no local PostgreSQL cluster to stop and start (/etc/postgresql is empty)")
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action]
    return command + (["-m", "fast"] if action == "stop" else [])


def wait_for_postgres(timeout: float = 60) -> None:
    """Block until the server accepts connections again."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            engine = create_engine(ADMIN_URL)
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
            return
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
