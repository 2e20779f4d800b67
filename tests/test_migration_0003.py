"""Migration 0003 (volume accounting) on a database made by the previous version:
usage rows backfilled for every live volume, set-based; unresolvable targets make
`udx db upgrade` fail with the list and leave the database as it was."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import insert, inspect, select, text, update

from udx import seed
from udx.datastore import volumes
from udx.db import migrate
from udx.db.engine import Database, open_database
from udx.db.schema import region_snapshot, snapshot, volume
from udx.db.schema import volume_resource_usage as usage
from udx.db.types import utcnow
from udx.testing.invariants import check_volume_accounting
from udx.testing.statements import count_statements

from .cli.helpers import Udx, assert_one_line_error


def _old_volume(conn: Any, *, targets: list[str], deleted_clean_up: str | None = None) -> uuid.UUID:
    """A volume as udx 0002 wrote it (the region snapshots are the caller's)."""
    vid = uuid.uuid4()
    now = utcnow()
    vcr = seed.volume_request(vid, [seed.region(targets[:3])])
    if targets[3:]:
        vcr["read_only_parent"] = seed.volume_request(uuid.uuid4(), [seed.region(targets[3:])])
    conn.execute(insert(volume).values(
        id=vid, time_created=now, time_modified=now, rcgen=1, data=json.dumps(vcr),
        time_deleted=now if deleted_clean_up is not None else None,
        resources_to_clean_up=deleted_clean_up,
    ))
    return vid


_ADDRESSES = iter(range(1, 1 << 16))


def _old_region_snapshots(conn: Any, n: int, refs: int) -> list[dict[str, Any]]:
    rows = [
        {
            "dataset_id": uuid.uuid4(),
            "region_id": uuid.uuid4(),
            "snapshot_id": uuid.uuid4(),
            "snapshot_addr": f"[fd00:1122:3344:101::{next(_ADDRESSES):x}]:19000",
            "volume_references": refs,
            "deleting": refs == 0,
        }
        for _ in range(n)
    ]
    conn.execute(insert(region_snapshot), rows)
    return rows


def _at_0002(url: str) -> Database:
    db = open_database(url)
    migrate.upgrade(db, "0002")
    assert migrate.status(db).current == "0002"
    return db


def test_backfill_gives_every_live_volume_its_usage_rows(empty_db_url: str) -> None:
    db = _at_0002(empty_db_url)
    try:
        with db.begin() as conn:
            shared = _old_region_snapshots(conn, 6, refs=2)  # a source and its export copy
            freed = _old_region_snapshots(conn, 3, refs=0)
            addrs = [r["snapshot_addr"] for r in shared]
            source = _old_volume(conn, targets=addrs)
            copy = _old_volume(conn, targets=addrs)
            now = utcnow()
            conn.execute(insert(snapshot).values(
                id=uuid.uuid4(), name="s", time_created=now, time_modified=now,
                project_id=uuid.uuid4(), disk_id=uuid.uuid4(), volume_id=source,
                destination_volume_id=uuid.uuid4(), gen=1, state="ready",
                block_size="traditional", size_bytes=1 << 30,
            ))
            # An undone copy the earlier udx soft-deleted, with its cleanup list in
            # the earlier form.
            old_form = json.dumps({"region_snapshots": [
                {"dataset_id": str(r["dataset_id"]), "region_id": str(r["region_id"]),
                 "snapshot_id": str(r["snapshot_id"]), "snapshot_addr": r["snapshot_addr"]}
                for r in freed
            ]})
            gone = _old_volume(
                conn, targets=[r["snapshot_addr"] for r in freed], deleted_clean_up=old_form
            )
            many = _old_region_snapshots(conn, 150, refs=1)  # and 50 more volumes
            for i in range(50):
                _old_volume(conn, targets=[r["snapshot_addr"] for r in many[3 * i : 3 * i + 3]])
        # Only 0003 is counted: the later migrations read other tables.
        with count_statements(db.engine) as log:
            migrate.upgrade(db, "0003")
        migrate.upgrade(db)
        assert migrate.status(db).up_to_date
        with db.connect() as conn:
            got = {v: volumes.usage_of(conn, v) for v in (source, copy, gone)}
            stored = volumes.get(conn, gone)
            total = conn.execute(select(usage.c.usage_id)).all()
        assert len(got[source]) == 6 and got[source] == got[copy]
        assert {r.snapshot_key for r in got[source]} == {
            (r["dataset_id"], r["region_id"], r["snapshot_id"]) for r in shared
        }
        assert got[gone] == [] and len(total) == 12 + 150
        assert stored is not None and stored.resources_to_clean_up is not None
        assert json.loads(stored.resources_to_clean_up)["V3"]["region_snapshots"] == [
            {"dataset": str(r["dataset_id"]), "region": str(r["region_id"]),
             "snapshot": str(r["snapshot_id"])}
            for r in freed
        ]
        assert check_volume_accounting(db) == []
        # Set-based: a handful of reads and writes for 53 volumes (156 targets).
        dml = [
            s for s in log.statements
            if s.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "WITH", "DELETE"))
            and "pg_catalog" not in s and "alembic_version" not in s
        ]
        assert len(dml) <= 6, dml
    finally:
        db.dispose()


def test_unresolvable_targets_fail_the_upgrade_with_the_list_and_change_nothing(
    empty_db_url: str, tmp_path: Path
) -> None:
    db = _at_0002(empty_db_url)
    try:
        with db.begin() as conn:
            rows = _old_region_snapshots(conn, 3, refs=1)
            fine = _old_volume(conn, targets=[r["snapshot_addr"] for r in rows])
            lost = "[fd00:1122:3344:999::1]:19000"
            broken = _old_volume(conn, targets=[lost, rows[0]["snapshot_addr"]])
            corrupt = uuid.uuid4()
            now = utcnow()
            conn.execute(insert(volume).values(
                id=corrupt, time_created=now, time_modified=now, rcgen=1, data="{not json"
            ))
        with db.connect() as conn:
            before = {t: conn.execute(select(text("*")).select_from(text(t))).all()
                      for t in ("volume", "region_snapshot", "alembic_version")}
    finally:
        db.dispose()
    udx = Udx(tmp_path, empty_db_url)
    line = assert_one_line_error(
        udx("db", "upgrade"), 1, "cannot upgrade to schema 0003", "nothing was changed",
        str(broken), lost, str(corrupt), "udx db upgrade",
    )
    assert str(fine) not in line
    db = open_database(empty_db_url)
    try:
        assert migrate.status(db).current == "0002"
        with db.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            assert not tables & {"volume_resource_usage", "region", "crucible_dataset"}, tables
            after = {t: conn.execute(select(text("*")).select_from(text(t))).all()
                     for t in before}
        assert after == before
    finally:
        db.dispose()
    # Repaired (the broken volume soft-deleted, the corrupt one fixed), it upgrades.
    db = open_database(empty_db_url)
    try:
        with db.begin() as conn:
            conn.execute(
                update(volume).where(volume.c.id == broken).values(time_deleted=utcnow())
            )
            conn.execute(
                update(volume)
                .where(volume.c.id == corrupt)
                .values(data=json.dumps(seed.volume_request(corrupt, [])))
            )
    finally:
        db.dispose()
    udx.ok("db", "upgrade")
    db = open_database(empty_db_url)
    try:
        with db.connect() as conn:
            assert len(volumes.usage_of(conn, fine)) == 3
    finally:
        db.dispose()
