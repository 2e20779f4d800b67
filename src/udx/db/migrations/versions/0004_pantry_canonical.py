"""Issue 14: pantry addresses stored canonically, duplicate spellings merged; the
orphan sweep's memory (`orphan_attachment`).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from udx.db.types import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _create_orphan_attachment() -> None:
    # When each pass's orphan sweep first saw an attachment orphaned (issue 14 item 2).
    op.create_table(
        "orphan_attachment",
        sa.Column("pantry_address", sa.Text, primary_key=True),
        sa.Column("volume_id", sa.Text, primary_key=True),
        sa.Column("first_seen", UTCDateTime, nullable=False),
    )


def upgrade() -> None:
    _create_orphan_attachment()


def downgrade() -> None:
    op.drop_table("orphan_attachment")
