"""WebhookStore: the only code that reads and writes webhook deliveries.

A delivery is queued in the transaction that records its event (JobStore calls
queue_delivery), so no event is announced that did not happen and none that happened is
lost. Senders (service.supervisor.webhooks) claim due deliveries, try them, and record each
attempt here; a failed one waits longer after each attempt, and is given up after a window.
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.engine import Row

from service.store.tables import webhook_deliveries

EVALUATION_READY = "job.evaluation_ready"
# Events of the job log, besides state changes, that are announced, and as what: the trainer logs
# artifacts_published once evaluation.json is published, so GET /v1/jobs/{id}/evaluation answers.
ANNOUNCED_EVENT_KINDS = {"artifacts_published": EVALUATION_READY, "evaluation_ready": EVALUATION_READY}


class DeliveryState(str, enum.Enum):
    """Where a delivery is: still being tried, accepted by the receiver, or given up."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class WebhookDelivery:
    """A delivery as read from the store."""

    id: str
    job_id: str
    event_type: str
    url: str
    body: str
    state: DeliveryState
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``first_seconds``, doubling up to ``max_seconds``, for ``give_up_seconds`` in all."""

    first_seconds: float = 5.0
    max_seconds: float = 3600.0
    give_up_seconds: float = 86_400.0

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        # The exponent is bounded so that a long-failing delivery never overflows a float.
        return float(min(self.first_seconds * 2 ** min(max(attempts - 1, 0), 60), self.max_seconds))


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _from_row(row: Row[Any]) -> WebhookDelivery:
    m = row._mapping
    created = _aware(m["created_at"])
    assert created is not None
    return WebhookDelivery(id=m["id"], job_id=m["job_id"], event_type=m["event_type"], url=m["url"],
                           body=m["body"], state=DeliveryState(m["state"]), attempts=m["attempts"],
                           created_at=created, next_attempt_at=_aware(m["next_attempt_at"]),
                           last_attempt_at=_aware(m["last_attempt_at"]), delivered_at=_aware(m["delivered_at"]),
                           last_status_code=m["last_status_code"], last_error=m["last_error"])


def webhook_url(spec: dict[str, Any] | None) -> str | None:
    """The webhook URL a job's spec names, or None."""
    webhook = (spec or {}).get("webhook")
    return webhook.get("url") if isinstance(webhook, dict) else None


def queue_delivery(conn: Connection, job_id: str, url: str, event_type: str, data: dict[str, Any],
                   now: datetime) -> str:
    """Queue one event for ``url``, due at once, in the caller's transaction; returns its `webhook-id`."""
    message_id = f"msg_{uuid.uuid4().hex}"
    body = json.dumps({"type": event_type, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": data},
                      separators=(",", ":"), default=str)
    conn.execute(insert(webhook_deliveries).values(
        id=message_id, job_id=job_id, event_type=event_type, url=url, body=body,
        state=DeliveryState.PENDING.value, attempts=0, created_at=now, next_attempt_at=now))
    return message_id


def delete_job_deliveries(conn: Connection, job_id: str) -> int:
    """Forget every delivery of a job, in the caller's transaction; returns how many."""
    return conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.job_id == job_id)).rowcount


class WebhookStore:
    """Claims due deliveries for senders, records their attempts, and lists them per job."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim_due(self, lease_seconds: float, *, limit: int = 1, now: datetime | None = None) -> list[WebhookDelivery]:
        """Take up to ``limit`` pending deliveries that are due, counting an attempt of each.

        A claimed delivery is not due again for ``lease_seconds``: when its sender dies before
        recording the attempt, another sender retries it after that. Several senders never take
        the same delivery: PostgreSQL skips rows another claim has locked (FOR UPDATE SKIP
        LOCKED), SQLite runs one writer at a time (BEGIN IMMEDIATE), and the UPDATE checks again
        that each row is still pending and due.
        """
        now = now or datetime.now(UTC)
        due = [webhook_deliveries.c.state == DeliveryState.PENDING.value, webhook_deliveries.c.next_attempt_at <= now]
        with self.engine.connect() as conn:
            conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                ids = list(conn.execute(
                    select(webhook_deliveries.c.id).where(*due)
                    .order_by(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.seq).limit(limit)
                    .with_for_update(skip_locked=True)).scalars())
                if not ids:
                    return []
                rows = conn.execute(
                    update(webhook_deliveries).where(webhook_deliveries.c.id.in_(ids), *due)
                    .values(attempts=webhook_deliveries.c.attempts + 1, last_attempt_at=now,
                            next_attempt_at=now + timedelta(seconds=lease_seconds))
                    .returning(*webhook_deliveries.c)).all()
        return sorted((_from_row(row) for row in rows), key=lambda d: (d.created_at, d.id))

    def record_attempt(self, delivery: WebhookDelivery, *, delivered: bool, status_code: int | None,
                       error: str | None, retry: RetryPolicy, now: datetime | None = None) -> WebhookDelivery | None:
        """Record how the claimed attempt went: delivered, due again after a backoff, or given up.

        Fenced by the attempt count the claim gave ``delivery``: a sender whose claim lapsed and
        was taken over records nothing (None).
        """
        now = now or datetime.now(UTC)
        values: dict[str, Any] = {"last_status_code": status_code, "last_error": error}
        if delivered:
            values.update(state=DeliveryState.DELIVERED.value, delivered_at=now, next_attempt_at=None,
                          last_error=None)
        else:
            retry_at = now + timedelta(seconds=retry.delay(delivery.attempts))
            if retry_at > delivery.created_at + timedelta(seconds=retry.give_up_seconds):
                values.update(state=DeliveryState.FAILED.value, next_attempt_at=None)
            else:
                values["next_attempt_at"] = retry_at
        with self.engine.connect() as conn:
            conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                row = conn.execute(update(webhook_deliveries).where(
                    webhook_deliveries.c.id == delivery.id, webhook_deliveries.c.attempts == delivery.attempts,
                    webhook_deliveries.c.state == DeliveryState.PENDING.value)
                    .values(**values).returning(*webhook_deliveries.c)).first()
        return _from_row(row) if row is not None else None

    def list_for_job(self, job_id: str, *, limit: int = 1000) -> list[WebhookDelivery]:
        """A job's deliveries, oldest first."""
        with self.engine.connect() as conn, conn.begin():
            rows = conn.execute(select(webhook_deliveries).where(webhook_deliveries.c.job_id == job_id)
                                .order_by(webhook_deliveries.c.seq).limit(limit))
            return [_from_row(row) for row in rows]

    def delete_for_job(self, job_id: str) -> int:
        """Forget every delivery of a job (pending ones are then never sent); returns how many."""
        with self.engine.connect() as conn:
            conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                return delete_job_deliveries(conn, job_id)
