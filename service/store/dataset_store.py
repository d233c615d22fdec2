"""DatasetStore: the only code that reads and writes the records of uploaded datasets."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select
from sqlalchemy.engine import Row

from service.store.tables import datasets
from service.store.tenant_lock import lock_tenant
from service.tenants import DEFAULT_TENANT, QuotaReached
from service.uploads import UploadedDataset


class DatasetNotFound(LookupError):
    """No uploaded dataset has this id."""


def _from_row(row: Row[Any]) -> UploadedDataset:
    m = row._mapping
    created = m["created_at"]
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)  # SQLite hands back naive UTC datetimes
    return UploadedDataset(id=m["id"], seq=m["seq"], filename=m["filename"], format=m["format"],
                           size_bytes=m["size_bytes"], sha256=m["sha256"], rows=m["rows"],
                           columns=list(m["columns"]), created_at=created, tenant=m["tenant"])


class DatasetStore:
    """Records, lists and forgets uploaded datasets (their files live under the uploads folder)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, *, dataset_id: str, filename: str, format: str, size_bytes: int, sha256: str,
            rows: int, columns: list[str], created_at: datetime | None = None,
            tenant: str = DEFAULT_TENANT, max_tenant_bytes: int = 0) -> UploadedDataset:
        """Record a stored upload of ``tenant`` and return it.

        With ``max_tenant_bytes`` (the tenant's upload_bytes quota), raises QuotaReached instead
        when the tenant's uploads would then hold more.
        """
        with self.engine.connect() as conn:
            conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                if max_tenant_bytes:
                    lock_tenant(conn, tenant)
                    stored = self._stored_bytes(conn, tenant)
                    if stored + size_bytes > max_tenant_bytes:
                        raise QuotaReached("upload_bytes", max_tenant_bytes, stored)
                conn.execute(insert(datasets).values(
                    id=dataset_id, filename=filename, format=format, size_bytes=size_bytes, sha256=sha256,
                    rows=rows, columns=columns, created_at=created_at or datetime.now(UTC), tenant=tenant))
                return _from_row(conn.execute(select(datasets).where(datasets.c.id == dataset_id)).one())

    @staticmethod
    def _stored_bytes(conn: Connection, tenant: str) -> int:
        return int(conn.execute(select(func.coalesce(func.sum(datasets.c.size_bytes), 0))
                                .where(datasets.c.tenant == tenant)).scalar_one())

    def stored_bytes(self, tenant: str) -> int:
        """Bytes of the uploaded datasets a tenant keeps."""
        with self.engine.connect() as conn:
            return self._stored_bytes(conn, tenant)

    def get(self, dataset_id: str) -> UploadedDataset:
        """The dataset with this id; raises DatasetNotFound."""
        with self.engine.connect() as conn:
            row = conn.execute(select(datasets).where(datasets.c.id == dataset_id)).first()
        if row is None:
            raise DatasetNotFound(dataset_id)
        return _from_row(row)

    def created_before(self, moment: datetime, *, limit: int = 500) -> list[str]:
        """Ids of the datasets uploaded before ``moment``, oldest first."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(datasets.c.id).where(datasets.c.created_at < moment)
                                     .order_by(datasets.c.seq).limit(limit)).scalars())

    def list(self, *, limit: int = 20, before_seq: int | None = None,
             tenant: str | None = None) -> tuple[list[UploadedDataset], int | None]:
        """Newest first, of one tenant or (None) all; returns a page and the seq to continue before,
        or None at the end."""
        query = select(datasets).order_by(datasets.c.seq.desc()).limit(limit + 1)
        if tenant is not None:
            query = query.where(datasets.c.tenant == tenant)
        if before_seq is not None:
            query = query.where(datasets.c.seq < before_seq)
        with self.engine.connect() as conn:
            page = [_from_row(row) for row in conn.execute(query)]
        if len(page) > limit:
            return page[:limit], page[limit - 1].seq
        return page, None

    def remove(self, dataset_id: str, *, unless: Callable[[], None] | None = None) -> None:
        """Forget a dataset; raises DatasetNotFound when there is none.

        ``unless`` runs while the dataset's row is locked (SELECT ... FOR UPDATE on PostgreSQL,
        the write lock on SQLite) and vetoes the removal by raising. A job created with this
        dataset (JobStore.create_job with ``uploads``) takes the same lock, so ``unless`` sees
        every such job that will ever exist, and none is created once the row is gone.
        """
        with self.engine.connect() as conn:
            conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                locked = conn.execute(select(datasets.c.id).where(datasets.c.id == dataset_id)
                                      .with_for_update()).first()
                if locked is None:
                    raise DatasetNotFound(dataset_id)
                if unless is not None:
                    unless()
                conn.execute(delete(datasets).where(datasets.c.id == dataset_id))
