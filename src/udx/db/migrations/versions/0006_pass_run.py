"""`pass_run`: one row per coordinator pass; `export_saga_lock`: which saga holds
a record's lock, by lock id (issue 12).

Revision ID: 0006
Revises: 0005

The backfill reads the lock ids already in the saga log (the first node's
output of every export saga) so records locked before this upgrade are found too.
"""

from __future__ import annotations

import json
import uuid

import sqlalchemy as sa
from alembic import op

from udx.db.types import GUID, UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# (saga name, the node whose output holds the lock id)
LOCK_NODES = (("export-create", "generate_ids"), ("export-delete", "generate_lock_id"))
BATCH = 1000


def upgrade() -> None:
    op.create_table(
        "export_saga_lock",
        sa.Column("lock_id", GUID, primary_key=True),
        sa.Column("saga_id", GUID, nullable=False),
        sa.Column("export_id", GUID, nullable=False),
        sa.Column("time_created", UTCDateTime, nullable=False),
    )
    op.create_index("lookup_export_saga_lock_by_saga", "export_saga_lock", ["saga_id"])
    op.create_index("lookup_export_saga_lock_by_export", "export_saga_lock", ["export_id"])
    op.create_table(
        "pass_run",
        sa.Column("id", GUID, primary_key=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started", UTCDateTime, nullable=False),
        sa.Column("finished", UTCDateTime, nullable=True),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("counts", sa.Text, nullable=True),
        sa.Column("errors", sa.Text, nullable=True),
        sa.Column("warnings", sa.Text, nullable=True),
    )
    op.create_index("lookup_pass_run_by_started", "pass_run", ["started"])
    _backfill_locks()


def _backfill_locks() -> None:
    if op.get_context().as_sql:
        return  # offline SQL: there are no rows to read
    conn = op.get_bind()
    saga = sa.table(
        "saga",
        sa.column("id", GUID),
        sa.column("name", sa.Text),
        sa.column("params", sa.Text),
        sa.column("time_created", UTCDateTime),
    )
    event = sa.table(
        "saga_node_event",
        sa.column("saga_id", GUID),
        sa.column("node_id", sa.Text),
        sa.column("event_type", sa.Text),
        sa.column("data", sa.Text),
    )
    lock = sa.table(
        "export_saga_lock",
        sa.column("lock_id", GUID),
        sa.column("saga_id", GUID),
        sa.column("export_id", GUID),
        sa.column("time_created", UTCDateTime),
    )
    which = sa.or_(
        *[sa.and_(saga.c.name == name, event.c.node_id == node) for name, node in LOCK_NODES]
    )
    rows = conn.execute(
        sa.select(saga.c.id, saga.c.params, saga.c.time_created, event.c.data)
        .join(event, event.c.saga_id == saga.c.id)
        .where(event.c.event_type == "succeeded", which)
    )
    batch: list[dict[str, object]] = []
    for saga_id, params, created, data in rows:
        try:
            out = json.loads(data)
            lock_id = uuid.UUID(out["lock_id"] if isinstance(out, dict) else out)
            export_id = uuid.UUID(json.loads(params)["export_id"])
        except (TypeError, ValueError, KeyError):
            continue  # a corrupt log entry: that saga is unrecoverable anyway
        batch.append(
            {
                "lock_id": lock_id,
                "saga_id": saga_id,
                "export_id": export_id,
                "time_created": created,
            }
        )
    for start in range(0, len(batch), BATCH):
        conn.execute(lock.insert(), batch[start : start + BATCH])


def downgrade() -> None:
    op.drop_index("lookup_pass_run_by_started", table_name="pass_run")
    op.drop_table("pass_run")
    op.drop_index("lookup_export_saga_lock_by_export", table_name="export_saga_lock")
    op.drop_index("lookup_export_saga_lock_by_saga", table_name="export_saga_lock")
    op.drop_table("export_saga_lock")
