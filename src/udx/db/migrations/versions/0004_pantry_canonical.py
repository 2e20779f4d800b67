"""Pantry addresses stored canonically; duplicate spellings merged (issue 14).

Revision ID: 0004
Revises: 0003

Reserved so that work on several issues can land in any order with one fixed
chain; the issue's change fills in upgrade() and downgrade().
"""

from __future__ import annotations

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
