"""Alembic environment: the connection comes from Keygate (``connector.migrate``)."""

from __future__ import annotations

from alembic import context

import connector.models  # noqa: F401  (registers every table on Base.metadata)
from connector.db import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `keygate init` / connector.migrate.upgrade")

context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
