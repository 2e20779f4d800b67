"""Initial schema: resources, volumes, region snapshots, export records, pantries.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from udx.db.types import GUID, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BLOCK_SIZES = "block_size IN ('traditional', 'iso', 'advancedformat')"


def upgrade() -> None:
    op.create_table(
        "snapshot",
        sa.Column("id", GUID, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("time_created", UTCDateTime, nullable=False),
        sa.Column("time_modified", UTCDateTime, nullable=False),
        sa.Column("time_deleted", UTCDateTime, nullable=True),
        sa.Column("project_id", GUID, nullable=False),
        sa.Column("disk_id", GUID, nullable=False),
        sa.Column("volume_id", GUID, nullable=False),
        sa.Column("destination_volume_id", GUID, nullable=False),
        sa.Column("gen", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("block_size", sa.String(16), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "state IN ('creating', 'ready', 'faulted', 'destroyed')", name="snapshot_state_valid"
        ),
        sa.CheckConstraint(BLOCK_SIZES, name="snapshot_block_size_valid"),
    )
    op.create_table(
        "image",
        sa.Column("id", GUID, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("time_created", UTCDateTime, nullable=False),
        sa.Column("time_modified", UTCDateTime, nullable=False),
        sa.Column("time_deleted", UTCDateTime, nullable=True),
        sa.Column("silo_id", GUID, nullable=False),
        sa.Column("project_id", GUID, nullable=True),
        sa.Column("volume_id", GUID, nullable=False),
        sa.Column("url", sa.Text, nullable=True),
        sa.Column("os", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("digest", sa.Text, nullable=True),
        sa.Column("block_size", sa.String(16), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.CheckConstraint(BLOCK_SIZES, name="image_block_size_valid"),
    )
    op.create_table(
        "volume",
        sa.Column("id", GUID, primary_key=True),
        sa.Column("time_created", UTCDateTime, nullable=False),
        sa.Column("time_modified", UTCDateTime, nullable=False),
        sa.Column("time_deleted", UTCDateTime, nullable=True),
        sa.Column("rcgen", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("resources_to_clean_up", sa.Text, nullable=True),
    )
    op.create_table(
        "region_snapshot",
        sa.Column("dataset_id", GUID, primary_key=True),
        sa.Column("region_id", GUID, primary_key=True),
        sa.Column("snapshot_id", GUID, primary_key=True),
        sa.Column("snapshot_addr", sa.Text, nullable=False),
        sa.Column("volume_references", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("deleting", sa.Boolean, nullable=False, server_default=sa.text("false")),
    )
    op.create_index("region_snapshot_by_addr", "region_snapshot", ["snapshot_addr"])
    op.create_table(
        "user_data_export",
        sa.Column("id", GUID, primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("operating_saga_id", GUID, nullable=True),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("resource_id", GUID, nullable=False),
        sa.Column("resource_type", sa.String(16), nullable=False),
        sa.Column("resource_deleted", sa.Boolean, nullable=False),
        sa.Column("pantry_ip", sa.Text, nullable=True),
        sa.Column("pantry_port", sa.Integer, nullable=True),
        sa.Column("volume_id", GUID, nullable=True),
        sa.CheckConstraint(
            "state IN ('requested', 'assigning', 'live', 'deleting', 'deleted')",
            name="user_data_export_state_valid",
        ),
        sa.CheckConstraint(
            "resource_type IN ('snapshot', 'image')", name="user_data_export_resource_type_valid"
        ),
        sa.CheckConstraint(
            "pantry_port IS NULL OR (pantry_port >= 0 AND pantry_port <= 65535)",
            name="user_data_export_pantry_port_valid",
        ),
    )
    op.create_index("lookup_export_by_resource_type", "user_data_export", ["resource_type"])
    op.create_index("lookup_export_by_volume", "user_data_export", ["volume_id"])
    op.create_index("lookup_export_by_state", "user_data_export", ["state"])
    op.create_index(
        "one_export_record_per_resource",
        "user_data_export",
        ["resource_id"],
        unique=True,
        sqlite_where=sa.text("state != 'deleted'"),
        postgresql_where=sa.text("state != 'deleted'"),
    )
    op.create_table(
        "pantry",
        sa.Column("address", sa.Text, primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("time_created", UTCDateTime, nullable=False),
        sa.Column("time_expunged", UTCDateTime, nullable=True),
        sa.CheckConstraint("state IN ('in_service', 'expunged')", name="pantry_state_valid"),
    )


def downgrade() -> None:
    for table in ("pantry", "user_data_export", "region_snapshot", "volume", "image", "snapshot"):
        op.drop_table(table)
