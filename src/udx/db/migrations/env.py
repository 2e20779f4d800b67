"""Alembic environment: udx always hands Alembic an open connection."""

from __future__ import annotations

from alembic import context

from udx.db.schema import add_postgresql_options, metadata

connection = context.config.attributes["connection"]
if connection.dialect.name != "sqlite":
    add_postgresql_options()
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
