"""The saga log: `saga` and `saga_node_event` (DESIGN.md section 5).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from udx.db.types import GUID, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "saga",
        sa.Column("id", GUID, primary_key=True),
        sa.Column("creator", GUID, nullable=False),
        sa.Column("time_created", UTCDateTime, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("saga_state", sa.String(16), nullable=False),
        sa.Column("current_sec", GUID, nullable=True),
        sa.Column("adopt_generation", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("adopt_time", UTCDateTime, nullable=False),
        sa.Column("lease_expires", UTCDateTime, nullable=True),
        sa.Column("abandon_time", UTCDateTime, nullable=True),
        sa.Column("abandon_reason", sa.Text, nullable=True),
        sa.Column("abandon_comment", sa.Text, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.CheckConstraint(
            "saga_state IN ('running', 'unwinding', 'done', 'abandoned')", name="saga_state_valid"
        ),
        sa.CheckConstraint(
            "outcome IS NULL OR outcome IN ('succeeded', 'unwound', 'stuck')",
            name="saga_outcome_valid",
        ),
    )
    op.create_index("lookup_saga_by_state", "saga", ["saga_state", "lease_expires"])
    op.create_index("lookup_saga_by_name", "saga", ["name"])
    op.create_table(
        "saga_node_event",
        sa.Column(
            "saga_id", GUID, sa.ForeignKey("saga.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("node_id", sa.Text, primary_key=True),
        sa.Column("event_type", sa.String(16), primary_key=True),
        sa.Column("data", sa.Text, nullable=True),
        sa.Column("event_time", UTCDateTime, nullable=False),
        sa.Column("creator", GUID, nullable=False),
        sa.CheckConstraint(
            "event_type IN ('started', 'succeeded', 'failed', 'undo_started', 'undo_finished', "
            "'undo_failed')",
            name="saga_node_event_type_valid",
        ),
    )


def downgrade() -> None:
    op.drop_table("saga_node_event")
    op.drop_index("lookup_saga_by_name", table_name="saga")
    op.drop_index("lookup_saga_by_state", table_name="saga")
    op.drop_table("saga")
