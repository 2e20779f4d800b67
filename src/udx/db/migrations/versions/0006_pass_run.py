"""`pass_run`: one row per coordinator pass (issue 12).

Revision ID: 0006
Revises: 0005

Reserved so that work on several issues can land in any order with one fixed
chain; the issue's change fills in upgrade() and downgrade().
"""

from __future__ import annotations

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
