"""Volume accounting as the control plane keeps it: `region`, `crucible_dataset`,
`volume_resource_usage`, and the backfill of usage rows (issue 11).

Revision ID: 0003
Revises: 0002

Reserved so that work on several issues can land in any order with one fixed
chain; the issue's change fills in upgrade() and downgrade().
"""

from __future__ import annotations

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
