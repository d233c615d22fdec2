"""Alembic environment: runs migrations on the connection handed over by upgrade_schema."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from service.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    # `alembic` command line use: the URL comes from alembic's own -x option or config.
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url")
    if not url:
        raise SystemExit("alembic: name the database with -x url=... or sqlalchemy.url")
    connection = create_engine(url).connect()

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
