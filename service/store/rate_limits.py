"""A `limits` storage that keeps fixed-window request counters in the job database.

flask-limiter keeps its counters in memory, Redis, Memcached or MongoDB. API replicas in a
cluster already share PostgreSQL, so their counters live there too, one row per key: the
count and the time its window ends. Only the fixed-window strategy is supported.
"""

from __future__ import annotations

import time
from typing import Any

from limits.storage import Storage
from sqlalchemy import Engine, case, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from service.store.tables import rate_limit_counters

# The scheme flask-limiter is given; the engine comes in its storage options.
DATABASE_STORAGE_SCHEME = "fitjobs-database"


class DatabaseRateLimitStorage(Storage):
    """Fixed-window counters in the `rate_limit_counters` table (PostgreSQL or SQLite)."""

    STORAGE_SCHEME = [DATABASE_STORAGE_SCHEME]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        engine = options.get("engine")
        if not isinstance(engine, Engine):
            raise ValueError(f"{DATABASE_STORAGE_SCHEME}:// needs the job database's engine as `engine`")
        self.engine = engine
        dialects = {"postgresql": postgresql, "sqlite": sqlite}
        if engine.dialect.name not in dialects:
            raise ValueError(f"rate limit counters need PostgreSQL or SQLite, not {engine.dialect.name}")
        self._insert = dialects[engine.dialect.name].insert

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        """Errors of the database, which flask-limiter may wrap."""
        return SQLAlchemyError

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """Add ``amount`` to the key's count, starting a window of ``expiry`` seconds when the last one ended."""
        now = time.time()
        table = rate_limit_counters
        statement = self._insert(table).values(key=key, count=amount, expires_at=now + expiry)
        # One statement: replicas that count the same key at once each get their own total.
        ended = table.c.expires_at <= now
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.key],
            set_={"count": case((ended, amount), else_=table.c.count + amount),
                  "expires_at": case((ended, now + expiry), else_=table.c.expires_at)},
        ).returning(table.c.count)
        with self.engine.begin() as conn:
            return int(conn.execute(statement).scalar_one())

    def get(self, key: str) -> int:
        """The key's count in its current window (0 once the window ended)."""
        with self.engine.connect() as conn:
            count = conn.execute(select(rate_limit_counters.c.count).where(
                rate_limit_counters.c.key == key, rate_limit_counters.c.expires_at > time.time())).scalar()
        return int(count or 0)

    def get_expiry(self, key: str) -> float:
        """When the key's current window ends (now, when it has none)."""
        now = time.time()
        with self.engine.connect() as conn:
            expires = conn.execute(select(rate_limit_counters.c.expires_at).where(
                rate_limit_counters.c.key == key, rate_limit_counters.c.expires_at > now)).scalar()
        return float(expires) if expires is not None else now

    def check(self) -> bool:
        """Whether the database answers."""
        try:
            with self.engine.connect() as conn:
                conn.execute(select(1))
        except SQLAlchemyError:
            return False
        return True

    def reset(self) -> int | None:
        """Forget every counter; returns how many there were."""
        with self.engine.begin() as conn:
            return int(conn.execute(delete(rate_limit_counters)).rowcount)

    def clear(self, key: str) -> None:
        """Forget one key's counter."""
        with self.engine.begin() as conn:
            conn.execute(delete(rate_limit_counters).where(rate_limit_counters.c.key == key))
