"""The tables (DESIGN.md section 2) as SQLAlchemy Core objects.

Table and column names are fixed: operators and tests query them by hand.
The migrations under `migrations/versions` create exactly these tables; a test
compares the two so they cannot drift.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

from udx.db.types import GUID, UTCDateTime

metadata = MetaData()

# PostgreSQL-only options (index predicates), added by `add_postgresql_options` when
# a PostgreSQL or CockroachDB database is opened: a `postgresql_*` argument in a
# constructor imports the PostgreSQL dialect, on SQLite too (~40 ms of start-up).
_POSTGRESQL_OPTIONS: list[tuple[Index, dict[str, Any]]] = []


def add_postgresql_options() -> None:
    """Give the schema its PostgreSQL-only options (idempotent)."""
    for index, options in _POSTGRESQL_OPTIONS:
        for key, value in options.items():
            if index.dialect_kwargs.get(key) is None:
                index.dialect_kwargs[key] = value

snapshot = Table(
    "snapshot",
    metadata,
    Column("id", GUID, primary_key=True),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("time_created", UTCDateTime, nullable=False),
    Column("time_modified", UTCDateTime, nullable=False),
    Column("time_deleted", UTCDateTime, nullable=True),
    Column("project_id", GUID, nullable=False),
    Column("disk_id", GUID, nullable=False),
    Column("volume_id", GUID, nullable=False),
    Column("destination_volume_id", GUID, nullable=False),
    Column("gen", BigInteger, nullable=False, server_default="1"),
    Column("state", String(16), nullable=False),
    Column("block_size", String(16), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    CheckConstraint(
        "state IN ('creating', 'ready', 'faulted', 'destroyed')", name="snapshot_state_valid"
    ),
    CheckConstraint(
        "block_size IN ('traditional', 'iso', 'advancedformat')", name="snapshot_block_size_valid"
    ),
)

image = Table(
    "image",
    metadata,
    Column("id", GUID, primary_key=True),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("time_created", UTCDateTime, nullable=False),
    Column("time_modified", UTCDateTime, nullable=False),
    Column("time_deleted", UTCDateTime, nullable=True),
    Column("silo_id", GUID, nullable=False),
    Column("project_id", GUID, nullable=True),  # null: a silo image
    Column("volume_id", GUID, nullable=False),
    Column("url", Text, nullable=True),
    Column("os", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("digest", Text, nullable=True),
    Column("block_size", String(16), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    CheckConstraint(
        "block_size IN ('traditional', 'iso', 'advancedformat')", name="image_block_size_valid"
    ),
)

volume = Table(
    "volume",
    metadata,
    Column("id", GUID, primary_key=True),
    Column("time_created", UTCDateTime, nullable=False),
    Column("time_modified", UTCDateTime, nullable=False),
    Column("time_deleted", UTCDateTime, nullable=True),
    Column("rcgen", BigInteger, nullable=False, server_default="1"),
    Column("data", Text, nullable=False),
    Column("resources_to_clean_up", Text, nullable=True),
)

region_snapshot = Table(
    "region_snapshot",
    metadata,
    Column("dataset_id", GUID, primary_key=True),
    Column("region_id", GUID, primary_key=True),
    Column("snapshot_id", GUID, primary_key=True),
    Column("snapshot_addr", Text, nullable=False),
    # Legacy: the control plane no longer keeps it (volume_resource_usage does);
    # udx neither reads nor writes it.
    Column("volume_references", BigInteger, nullable=False, server_default="0"),
    Column("deleting", Boolean, nullable=False, server_default=text("false")),
    Index("region_snapshot_by_addr", "snapshot_addr"),
)

# --- volume accounting, as the control plane keeps it (DESIGN.md section 2, issue 11) ----

# The dataset (a Crucible zone on one zpool) a region lives on: a read-only
# region's target address is this `ip` with the region's own `port`. `ip` is
# text in canonical form ("fd00::1", not "fd00:0::1"); target resolution compares
# canonical forms.
crucible_dataset = Table(
    "crucible_dataset",
    metadata,
    Column("id", GUID, primary_key=True),
    Column("time_created", UTCDateTime, nullable=False),
    Column("time_modified", UTCDateTime, nullable=False),
    Column("time_deleted", UTCDateTime, nullable=True),
    Column("pool_id", GUID, nullable=False),
    Column("ip", Text, nullable=False),
    Column("port", Integer, nullable=False),
    CheckConstraint("port >= 0 AND port <= 65535", name="crucible_dataset_port_valid"),
    Index("lookup_crucible_dataset_by_ip", "ip"),
)

region = Table(
    "region",
    metadata,
    Column("id", GUID, primary_key=True),
    Column("time_created", UTCDateTime, nullable=False),
    Column("time_modified", UTCDateTime, nullable=False),
    Column("dataset_id", GUID, nullable=False),
    Column("volume_id", GUID, nullable=False),
    Column("block_size", BigInteger, nullable=False),
    Column("blocks_per_extent", BigInteger, nullable=False),
    Column("extent_count", BigInteger, nullable=False),
    Column("port", Integer, nullable=True),  # null until the agent gave it one
    Column("read_only", Boolean, nullable=False, server_default=text("false")),
    Column("deleting", Boolean, nullable=False, server_default=text("false")),
    Column("reservation_percent", String(8), nullable=False, server_default="25"),
    CheckConstraint("port IS NULL OR (port >= 0 AND port <= 65535)", name="region_port_valid"),
    CheckConstraint("reservation_percent IN ('25')", name="region_reservation_percent_valid"),
    Index("lookup_region_by_volume", "volume_id"),
    Index("lookup_region_by_dataset", "dataset_id", "port"),
)

USAGE_TYPES = ("read_only_region", "region_snapshot")

# One row per (live volume, read-only resource it reads): the control plane's
# reference count. A resource with no row left is freed by the control plane.
volume_resource_usage = Table(
    "volume_resource_usage",
    metadata,
    Column("usage_id", GUID, primary_key=True),
    Column("volume_id", GUID, nullable=False),
    Column("usage_type", String(16), nullable=False),
    Column("region_id", GUID, nullable=True),
    Column("region_snapshot_dataset_id", GUID, nullable=True),
    Column("region_snapshot_region_id", GUID, nullable=True),
    Column("region_snapshot_snapshot_id", GUID, nullable=True),
    CheckConstraint(
        "(usage_type = 'read_only_region' AND region_id IS NOT NULL"
        " AND region_snapshot_dataset_id IS NULL AND region_snapshot_region_id IS NULL"
        " AND region_snapshot_snapshot_id IS NULL)"
        " OR (usage_type = 'region_snapshot' AND region_id IS NULL"
        " AND region_snapshot_dataset_id IS NOT NULL AND region_snapshot_region_id IS NOT NULL"
        " AND region_snapshot_snapshot_id IS NOT NULL)",
        name="exactly_one_usage_source",
    ),
    # As upstream. NULLs are distinct in a unique index on all three engines, so
    # this does not by itself stop a second row: the copy's idempotence (by the new
    # volume id, in the same transaction) does.
    Index(
        "one_record_per_volume_resource_usage",
        "volume_id",
        "usage_type",
        "region_id",
        "region_snapshot_dataset_id",
        "region_snapshot_region_id",
        "region_snapshot_snapshot_id",
        unique=True,
    ),
    Index("lookup_volume_resource_usage_by_region", "region_id"),
    Index(
        "lookup_volume_resource_usage_by_snapshot",
        "region_snapshot_dataset_id",
        "region_snapshot_region_id",
        "region_snapshot_snapshot_id",
    ),
)

EXPORT_STATES = ("requested", "assigning", "live", "deleting", "deleted")

user_data_export = Table(
    "user_data_export",
    metadata,
    Column("id", GUID, primary_key=True),
    Column("state", String(16), nullable=False),
    Column("operating_saga_id", GUID, nullable=True),
    Column("generation", BigInteger, nullable=False),
    Column("resource_id", GUID, nullable=False),
    Column("resource_type", String(16), nullable=False),
    Column("resource_deleted", Boolean, nullable=False),
    Column("pantry_ip", Text, nullable=True),
    Column("pantry_port", Integer, nullable=True),
    Column("volume_id", GUID, nullable=True),
    # Kept by udx on every insert and transition (migration 0005); the default is
    # for rows other tools write.
    Column("time_created", UTCDateTime, nullable=False, server_default=text("CURRENT_TIMESTAMP")),
    Column(
        "time_modified", UTCDateTime, nullable=False, server_default=text("CURRENT_TIMESTAMP")
    ),
    CheckConstraint(
        "state IN ('requested', 'assigning', 'live', 'deleting', 'deleted')",
        name="user_data_export_state_valid",
    ),
    CheckConstraint(
        "resource_type IN ('snapshot', 'image')", name="user_data_export_resource_type_valid"
    ),
    CheckConstraint(
        "pantry_port IS NULL OR (pantry_port >= 0 AND pantry_port <= 65535)",
        name="user_data_export_pantry_port_valid",
    ),
    Index("lookup_export_by_resource_type", "resource_type"),
    Index("lookup_export_by_volume", "volume_id"),
    Index("lookup_export_by_state", "state"),
    Index("lookup_export_by_time_created", "time_created"),
    Index(
        "one_export_record_per_resource",
        "resource_id",
        unique=True,
        sqlite_where=text("state != 'deleted'"),
    ),
)
_POSTGRESQL_OPTIONS.append(
    (
        next(i for i in user_data_export.indexes if i.name == "one_export_record_per_resource"),
        {"postgresql_where": text("state != 'deleted'")},
    )
)

pantry = Table(
    "pantry",
    metadata,
    Column("address", Text, primary_key=True),
    Column("state", String(16), nullable=False),
    Column("time_created", UTCDateTime, nullable=False),
    Column("time_expunged", UTCDateTime, nullable=True),
    CheckConstraint("state IN ('in_service', 'expunged')", name="pantry_state_valid"),
)

# The orphan sweep's memory (DESIGN.md section 4): when a pass first saw a pantry
# holding an attachment that nothing accounts for. A row goes when the attachment
# is detached or accounted for again; the sweep detaches it once first_seen is
# older than [coordinator] orphan_grace_secs. Keyed by the pantry's canonical
# "ip:port" / "[ipv6]:port" and the volume id as the pantry spells it, lowercased.
orphan_attachment = Table(
    "orphan_attachment",
    metadata,
    Column("pantry_address", Text, primary_key=True),
    Column("volume_id", Text, primary_key=True),
    Column("first_seen", UTCDateTime, nullable=False),
)

# --- the saga log (DESIGN.md section 5) -------------------------------------------------

SAGA_STATES = ("running", "unwinding", "done", "abandoned")
SAGA_OUTCOMES = ("succeeded", "unwound", "stuck")
# `undo_failed` is ours (upstream steno has UndoFailed): it keeps the error of the undo
# that left a saga stuck, which an operator needs to see.
SAGA_EVENT_TYPES = (
    "started",
    "succeeded",
    "failed",
    "undo_started",
    "undo_finished",
    "undo_failed",
)

saga = Table(
    "saga",
    metadata,
    Column("id", GUID, primary_key=True),
    Column("creator", GUID, nullable=False),  # the sec_id of the process that started it
    Column("time_created", UTCDateTime, nullable=False),
    Column("name", Text, nullable=False),
    Column("params", Text, nullable=False),  # JSON
    Column("saga_state", String(16), nullable=False),
    Column("current_sec", GUID, nullable=True),  # the owning process
    Column("adopt_generation", BigInteger, nullable=False, server_default="1"),
    Column("adopt_time", UTCDateTime, nullable=False),
    Column("lease_expires", UTCDateTime, nullable=True),
    Column("abandon_time", UTCDateTime, nullable=True),
    Column("abandon_reason", Text, nullable=True),
    Column("abandon_comment", Text, nullable=True),
    Column("outcome", String(16), nullable=True),
    CheckConstraint(
        "saga_state IN ('running', 'unwinding', 'done', 'abandoned')", name="saga_state_valid"
    ),
    CheckConstraint(
        "outcome IS NULL OR outcome IN ('succeeded', 'unwound', 'stuck')", name="saga_outcome_valid"
    ),
    # Recovery asks for running/unwinding sagas whose lease has expired.
    Index("lookup_saga_by_state", "saga_state", "lease_expires"),
    Index("lookup_saga_by_name", "name"),
)

saga_node_event = Table(
    "saga_node_event",
    metadata,
    Column("saga_id", GUID, ForeignKey("saga.id", ondelete="CASCADE"), primary_key=True),
    Column("node_id", Text, primary_key=True),  # the node's name in its saga definition
    Column("event_type", String(16), primary_key=True),
    Column("data", Text, nullable=True),  # JSON: the output, or {"error", "type"}
    Column("event_time", UTCDateTime, nullable=False),
    Column("creator", GUID, nullable=False),  # the sec_id that wrote it
    CheckConstraint(
        "event_type IN ('started', 'succeeded', 'failed', 'undo_started', 'undo_finished', "
        "'undo_failed')",
        name="saga_node_event_type_valid",
    ),
)


# --- the export locks (issue 12) --------------------------------------------------------

# A record's `operating_saga_id` holds the lock id a saga generated in its first
# node, a constant inside that node's logged output (JSON text, not indexable on
# every engine). One row per lock id, written in the same transaction as that
# node's log entry, turns "which saga holds this record?" into one primary-key
# lookup (and "which sagas ran for this export?" into one index lookup).
export_saga_lock = Table(
    "export_saga_lock",
    metadata,
    Column("lock_id", GUID, primary_key=True),
    Column("saga_id", GUID, nullable=False),
    Column("export_id", GUID, nullable=False),
    Column("time_created", UTCDateTime, nullable=False),
    Index("lookup_export_saga_lock_by_saga", "saga_id"),
    Index("lookup_export_saga_lock_by_export", "export_id"),
)

# --- pass history (issue 12) ------------------------------------------------------------

# One row per `udx pass`, written when it starts and again when it ends: a row
# with no `finished` is a pass that was killed (or is still running).
pass_run = Table(
    "pass_run",
    metadata,
    Column("id", GUID, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started", UTCDateTime, nullable=False),
    Column("finished", UTCDateTime, nullable=True),
    Column("dry_run", Boolean, nullable=False),
    Column("exit_code", Integer, nullable=True),
    Column("counts", Text, nullable=True),  # JSON: the status counts
    Column("errors", Text, nullable=True),  # JSON list of strings
    Column("warnings", Text, nullable=True),  # JSON list of strings
    Index("lookup_pass_run_by_started", "started"),
)
