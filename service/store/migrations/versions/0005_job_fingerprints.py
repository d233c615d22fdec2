"""Job fingerprints and reuse of succeeded jobs

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Jobs submitted before this revision keep a NULL fingerprint: nothing can reuse them.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fingerprint", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("reused_from", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_jobs_fingerprint_state", ["fingerprint", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_fingerprint_state")
        batch_op.drop_column("reused_from")
        batch_op.drop_column("fingerprint")
