"""`user_data_export.time_created` / `time_modified` (issue 15).

Revision ID: 0005
Revises: 0004

Reserved so that work on several issues can land in any order with one fixed
chain; the issue's change fills in upgrade() and downgrade().
"""

from __future__ import annotations

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
