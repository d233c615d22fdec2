"""leases, priority, attempt accounting, deadlines, retryable errors and idempotency keys

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("error_retryable", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="3"))
        batch_op.add_column(sa.Column("free_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("max_runtime_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("spec_hash", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint("uq_jobs_idempotency_key", ["idempotency_key"])
        batch_op.create_index("ix_jobs_state_priority_seq", ["state", "priority", "seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_state_priority_seq")
        batch_op.drop_constraint("uq_jobs_idempotency_key", type_="unique")
        for column in ("spec_hash", "idempotency_key", "lease_expires_at", "max_runtime_seconds", "free_attempts",
                       "max_attempts", "priority",
                       "error_retryable"):
            batch_op.drop_column(column)
