"""Volume accounting as the control plane keeps it: `region`, `crucible_dataset`,
`volume_resource_usage`, and the backfill of usage rows (issue 11).

Revision ID: 0003
Revises: 0002

The backfill gives every live volume one usage row per read-only resource its
targets resolve to, set-based (one read of the live volumes, one resolving
statement per few thousand targets, one insert). In a database made by an
earlier udx the new tables are empty, so every target must be a region
snapshot. A target that resolves to nothing (or to two resources), or a live
volume whose data cannot be read, fails the upgrade with the list: the upgrade
runs in one transaction (udx.db.migrate.upgrade), so nothing is half-done.
Cleanup lists written by the earlier udx are rewritten in the control plane's
form (`{"V3": ...}`).

`region_snapshot.volume_references` stays (legacy); nothing reads it any more.
The backfill uses the resolution in udx.datastore.volumes on purpose: the rows
it writes must be the rows the copy would write.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from udx.db.types import GUID, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crucible_dataset",
        sa.Column("id", GUID, primary_key=True),
        sa.Column("time_created", UTCDateTime, nullable=False),
        sa.Column("time_modified", UTCDateTime, nullable=False),
        sa.Column("time_deleted", UTCDateTime, nullable=True),
        sa.Column("pool_id", GUID, nullable=False),
        sa.Column("ip", sa.Text, nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.CheckConstraint("port >= 0 AND port <= 65535", name="crucible_dataset_port_valid"),
    )
    op.create_index("lookup_crucible_dataset_by_ip", "crucible_dataset", ["ip"])
    op.create_table(
        "region",
        sa.Column("id", GUID, primary_key=True),
        sa.Column("time_created", UTCDateTime, nullable=False),
        sa.Column("time_modified", UTCDateTime, nullable=False),
        sa.Column("dataset_id", GUID, nullable=False),
        sa.Column("volume_id", GUID, nullable=False),
        sa.Column("block_size", sa.BigInteger, nullable=False),
        sa.Column("blocks_per_extent", sa.BigInteger, nullable=False),
        sa.Column("extent_count", sa.BigInteger, nullable=False),
        sa.Column("port", sa.Integer, nullable=True),
        sa.Column("read_only", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("deleting", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("reservation_percent", sa.String(8), nullable=False, server_default="25"),
        sa.CheckConstraint(
            "port IS NULL OR (port >= 0 AND port <= 65535)", name="region_port_valid"
        ),
        sa.CheckConstraint(
            "reservation_percent IN ('25')", name="region_reservation_percent_valid"
        ),
    )
    op.create_index("lookup_region_by_volume", "region", ["volume_id"])
    op.create_index("lookup_region_by_dataset", "region", ["dataset_id", "port"])
    op.create_table(
        "volume_resource_usage",
        sa.Column("usage_id", GUID, primary_key=True),
        sa.Column("volume_id", GUID, nullable=False),
        sa.Column("usage_type", sa.String(16), nullable=False),
        sa.Column("region_id", GUID, nullable=True),
        sa.Column("region_snapshot_dataset_id", GUID, nullable=True),
        sa.Column("region_snapshot_region_id", GUID, nullable=True),
        sa.Column("region_snapshot_snapshot_id", GUID, nullable=True),
        sa.CheckConstraint(
            "(usage_type = 'read_only_region' AND region_id IS NOT NULL"
            " AND region_snapshot_dataset_id IS NULL AND region_snapshot_region_id IS NULL"
            " AND region_snapshot_snapshot_id IS NULL)"
            " OR (usage_type = 'region_snapshot' AND region_id IS NULL"
            " AND region_snapshot_dataset_id IS NOT NULL"
            " AND region_snapshot_region_id IS NOT NULL"
            " AND region_snapshot_snapshot_id IS NOT NULL)",
            name="exactly_one_usage_source",
        ),
    )
    op.create_index(
        "one_record_per_volume_resource_usage",
        "volume_resource_usage",
        [
            "volume_id",
            "usage_type",
            "region_id",
            "region_snapshot_dataset_id",
            "region_snapshot_region_id",
            "region_snapshot_snapshot_id",
        ],
        unique=True,
    )
    op.create_index(
        "lookup_volume_resource_usage_by_region", "volume_resource_usage", ["region_id"]
    )
    op.create_index(
        "lookup_volume_resource_usage_by_snapshot",
        "volume_resource_usage",
        ["region_snapshot_dataset_id", "region_snapshot_region_id", "region_snapshot_snapshot_id"],
    )
    if not op.get_context().as_sql:  # offline (SQL output) there is no data to read
        _backfill(op.get_bind())


def _backfill(conn: sa.Connection) -> None:
    from udx.datastore.volumes import (
        CleanUp,
        VolumeAccountingError,
        VolumeDataError,
        parse_request,
        resolve_many,
        usage_rows,
    )
    from udx.db.schema import volume, volume_resource_usage

    requests = {}
    unreadable = []
    for vid, data in conn.execute(
        sa.select(volume.c.id, volume.c.data).where(volume.c.time_deleted.is_(None))
    ):
        try:
            requests[vid] = parse_request(vid, data)
        except VolumeDataError as err:
            unreadable.append(str(err))
    try:
        resolved, problems = resolve_many(conn, requests)
    except VolumeDataError as err:  # well-formed JSON, malformed request
        raise VolumeAccountingError(
            f"cannot upgrade to schema 0003: {err} (nothing was changed)"
        ) from None
    problems = unreadable + problems
    if problems:
        shown = problems[:10]
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise VolumeAccountingError(
            f"cannot upgrade to schema 0003 (nothing was changed): {len(problems)} live "
            f"volume(s) cannot be accounted: {'; '.join(shown)}{more}. Repair or soft-delete "
            "them, then run `udx db upgrade` again"
        )
    rows = [r for vid, by_target in resolved.items() for r in usage_rows(vid, by_target.values())]
    for i in range(0, len(rows), 5000):
        conn.execute(volume_resource_usage.insert(), rows[i : i + 5000])

    # Cleanup lists in the earlier udx's form, rewritten as the control plane's.
    old = [
        {"b_id": vid, "b_text": json.dumps(CleanUp.parse(text).to_json())}
        for vid, text in conn.execute(
            sa.select(volume.c.id, volume.c.resources_to_clean_up).where(
                volume.c.time_deleted.is_not(None), volume.c.resources_to_clean_up.is_not(None)
            )
        )
        if not str(text).lstrip().startswith('{"V3"')
    ]
    if old:
        conn.execute(
            sa.update(volume)
            .where(volume.c.id == sa.bindparam("b_id"))
            .values(resources_to_clean_up=sa.bindparam("b_text")),
            old,
        )


def downgrade() -> None:
    op.drop_table("volume_resource_usage")
    op.drop_table("region")
    op.drop_table("crucible_dataset")
