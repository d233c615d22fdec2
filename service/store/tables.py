"""Table definitions (SQLAlchemy Core); Alembic migrations create and upgrade them."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

jobs = Table(
    "jobs", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("state", String(16), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("attempt", Integer, nullable=False, default=0),
    Column("owner", String(255)),
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("progress", JSON),
    Column("error_code", String(64)),
    Column("error_message", Text),
    Column("result", JSON),
    Column("error_retryable", Boolean),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False, server_default="3"),
    # Attempts that ended through no fault of the job (a drain) and do not count against
    # max_attempts; `attempt` itself only grows, because it fences stale owners.
    Column("free_attempts", Integer, nullable=False, server_default="0"),
    Column("max_runtime_seconds", Integer),
    # GPUs the job needs; NULL means "one if the worker has GPUs, else none".
    Column("gpus", Integer),
    # The GPU type the job needs (resources.gpu_type); NULL: any worker's.
    Column("gpu_type", String(63)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("idempotency_key", String(255)),
    Column("spec_hash", String(64)),
    # What the spec trains (service.fingerprint), so a reuse finds an identical succeeded job.
    Column("fingerprint", String(64)),
    Column("reused_from", String(64)),
    # The tenant the job belongs to (service.tenants); another tenant never sees it.
    Column("tenant", String(64), nullable=False, server_default="default"),
    # What the job does: "train" (a training spec) or "predict" (a batch prediction spec).
    Column("kind", String(16), nullable=False, server_default="train"),
    Index("ix_jobs_state_seq", "state", "seq"),
    Index("ix_jobs_state_priority_seq", "state", "priority", "seq"),
    Index("ix_jobs_fingerprint_state", "fingerprint", "state"),
    Index("ix_jobs_tenant_seq", "tenant", "seq"),
    Index("ix_jobs_tenant_state_seq", "tenant", "state", "seq"),
    UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
)

job_events = Table(
    "job_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("state", String(16)),
    Column("message", Text, nullable=False),
    Column("data", JSON),
    Index("ix_job_events_job_id_id", "job_id", "id"),
)

metrics = Table(
    "metrics", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("name", String(64), nullable=False),
    Column("value", Float, nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("step", Integer),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Index("ix_metrics_job_id_id", "job_id", "id"),
)

workers = Table(
    "workers", metadata,
    Column("id", String(255), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("slots", Integer, nullable=False),
    Column("gpu_type", String(63)),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
)

datasets = Table(
    "datasets", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("filename", String(255), nullable=False),
    Column("format", String(16), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("columns", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("tenant", String(64), nullable=False, server_default="default"),
    Index("ix_datasets_tenant_seq", "tenant", "seq"),
)

# Fixed-window request counters of the rate limiter, shared by every API replica on the database.
rate_limit_counters = Table(
    "rate_limit_counters", metadata,
    Column("key", String(255), primary_key=True),
    Column("count", Integer, nullable=False),
    # Unix time at which the window ends and the count starts again.
    Column("expires_at", Float, nullable=False),
)

# Signed webhook deliveries (service.webhooks): one row per event sent to a job's webhook URL,
# retried with backoff until accepted or given up. Written with the event it announces.
webhook_deliveries = Table(
    "webhook_deliveries", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    # The `webhook-id` header: the same on every attempt, so receivers can drop repeats.
    Column("id", String(64), nullable=False, unique=True),
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("url", Text, nullable=False),
    # The exact bytes that are signed and sent, on every attempt.
    Column("body", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # When a sender may next try it; while an attempt is in flight, when that attempt's claim lapses.
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("delivered_at", DateTime(timezone=True)),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
    Index("ix_webhook_deliveries_job_id_seq", "job_id", "seq"),
)
