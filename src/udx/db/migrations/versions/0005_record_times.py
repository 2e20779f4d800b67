"""`user_data_export.time_created` / `time_modified` (issue 15).

Revision ID: 0005
Revises: 0004

Records written before this version get the upgrade's time for both: their true
times were never kept. udx writes both on every insert and `time_modified` on
every transition; the server default covers rows written by other tools.
SQLite cannot ADD COLUMN with a CURRENT_TIMESTAMP default, so there the table
is rebuilt (batch mode keeps its indexes, the partial unique one included).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from udx.db.types import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

NOW = sa.text("CURRENT_TIMESTAMP")


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("time_created", UTCDateTime, nullable=False, server_default=NOW),
        sa.Column("time_modified", UTCDateTime, nullable=False, server_default=NOW),
    ]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("user_data_export", recreate="always") as batch:
            for column in _columns():
                batch.add_column(column)
            batch.create_index("lookup_export_by_time_created", ["time_created"])
        return
    for column in _columns():
        op.add_column("user_data_export", column)
    op.create_index("lookup_export_by_time_created", "user_data_export", ["time_created"])


def downgrade() -> None:
    with op.batch_alter_table("user_data_export") as batch:
        batch.drop_index("lookup_export_by_time_created")
        batch.drop_column("time_modified")
        batch.drop_column("time_created")
