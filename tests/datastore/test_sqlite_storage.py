"""The SQLite file stays readable by hand (DESIGN.md section 2)."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import sqlite3
import uuid
from pathlib import Path

from udx import seed
from udx.datastore import exports, resources
from udx.db.engine import open_database
from udx.domain.model import ResourceType

from .helpers import PANTRY_B

UUID_TEXT = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TS_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$")


def test_sqlite_file_is_readable_by_hand(sqlite_template: Path, tmp_path: Path) -> None:
    path = tmp_path / "udx.sqlite3"
    shutil.copyfile(sqlite_template, path)
    db = open_database(f"sqlite:///{path}")
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        iid = seed.add_image(conn, silo=True)
        eid = uuid.UUID("ABCDEF01-2345-4789-ABCD-EF0123456789")
        rec = exports.create(conn, eid, ResourceType.SNAPSHOT, sid)
        saga = uuid.uuid4()
        exports.start_assigning(conn, rec.id, saga, 1)
        exports.set_live(conn, rec.id, saga, 1, PANTRY_B, uuid.uuid4())
        exports.mark_for_deletion(conn, rec.id)
        resources.soft_delete(conn, ResourceType.IMAGE, [iid])
    db.dispose()

    raw = sqlite3.connect(path)
    try:
        row = raw.execute(
            "SELECT id, state, resource_id, resource_deleted, pantry_ip, pantry_port, volume_id, "
            "generation, typeof(resource_deleted), typeof(generation) FROM user_data_export"
        ).fetchone()
        eid, state, rid, deleted, ip, port, vol, gen, t_bool, t_gen = row
        for value in (eid, rid, vol):
            assert isinstance(value, str) and UUID_TEXT.match(value), value
        assert eid == "abcdef01-2345-4789-abcd-ef0123456789"  # lower-case
        assert rid == str(sid)
        assert (state, deleted, t_bool, gen, t_gen) == ("live", 1, "integer", 1, "integer")
        assert (ip, port) == ("fd00:1122:3344:101::1", 17000)
        # Plain SQL by UUID text works, as an operator would type it.
        assert raw.execute(
            "SELECT count(*) FROM user_data_export WHERE resource_id = ? AND resource_deleted = 1",
            (str(sid),),
        ).fetchone() == (1,)

        created, deleted_at = raw.execute(
            "SELECT time_created, time_deleted FROM image WHERE id = ?", (str(iid),)
        ).fetchone()
        for ts in (created, deleted_at):
            assert isinstance(ts, str) and TS_TEXT.match(ts), ts
            parsed = dt.datetime.strptime(ts, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.UTC)
            assert before <= parsed <= dt.datetime.now(dt.UTC)  # stored in UTC
        live_snapshot = raw.execute(
            "SELECT time_deleted, typeof(size_bytes) FROM snapshot WHERE id = ?", (str(sid),)
        ).fetchone()
        assert live_snapshot == (None, "integer")
        flags = {r[0] for r in raw.execute("SELECT deleting FROM region_snapshot")}
        assert flags == {0}
        assert raw.execute("SELECT typeof(deleting) FROM region_snapshot LIMIT 1").fetchone() == (
            "integer",
        )
        # Usage rows by hand: which volumes read a region snapshot, in plain SQL.
        users = raw.execute(
            "SELECT u.volume_id, u.usage_type, typeof(u.region_id) FROM volume_resource_usage u "
            "JOIN region_snapshot r ON r.dataset_id = u.region_snapshot_dataset_id "
            "AND r.region_id = u.region_snapshot_region_id "
            "AND r.snapshot_id = u.region_snapshot_snapshot_id"
        ).fetchall()
        assert len(users) == 9  # the snapshot's 3 targets and the image's 6
        for vid, kind, t_region in users:
            assert UUID_TEXT.match(vid) and kind == "region_snapshot" and t_region == "null"
    finally:
        raw.close()


def test_hand_typed_rows_are_read_back(sqlite_template: Path, tmp_path: Path) -> None:
    """Rows an operator inserts with the sqlite3 shell are understood by udx."""
    path = tmp_path / "udx.sqlite3"
    shutil.copyfile(sqlite_template, path)
    sid, eid = uuid.uuid4(), uuid.uuid4()
    raw = sqlite3.connect(path)
    with raw:
        raw.execute(
            "INSERT INTO snapshot (id, name, description, time_created, time_modified, "
            "project_id, disk_id, volume_id, destination_volume_id, gen, state, block_size, "
            "size_bytes) VALUES (?, 'by-hand', '', '2024-05-01 10:00:00', "
            "'2024-05-01 10:00:00.250000', ?, ?, ?, ?, 1, 'ready', 'traditional', 512)",
            (str(sid), str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()),
             str(uuid.uuid4())),
        )
        raw.execute(
            "INSERT INTO user_data_export (id, state, generation, resource_id, resource_type, "
            "resource_deleted) VALUES (?, 'requested', 0, ?, 'snapshot', 0)",
            (str(eid), str(sid)),
        )
    raw.close()
    db = open_database(f"sqlite:///{path}")
    try:
        with db.connect() as conn:
            rec = exports.get_required(conn, eid)
            snap = resources.get_resource(conn, ResourceType.SNAPSHOT, sid)
        assert rec.resource_id == sid and rec.resource_deleted is False
        assert snap is not None
        assert snap.time_created == dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
        assert snap.time_modified.microsecond == 250000
    finally:
        db.dispose()
