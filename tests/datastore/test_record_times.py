"""`user_data_export.time_created` / `time_modified` (migration 0005): set on
insert, advanced by every transition (single-row and set-based), left alone by a
transition run twice; older records get the upgrade's time."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import Connection, insert, select, text

from udx import seed
from udx.datastore import changeset, exports, resources
from udx.db import migrate
from udx.db.engine import Database, open_database
from udx.db.schema import user_data_export
from udx.domain.model import ExportState, ResourceRef, ResourceType, UserDataExport

from .helpers import PANTRY_A, PANTRY_B

SNAP = ResourceType.SNAPSHOT


def _read(db: Database, export_id: uuid.UUID) -> UserDataExport:
    with db.connect() as conn:
        return exports.get_required(conn, export_id)


def _times(rec: UserDataExport) -> tuple[dt.datetime, dt.datetime]:
    assert rec.time_created is not None and rec.time_modified is not None
    assert rec.time_created.tzinfo is not None and rec.time_modified.tzinfo is not None
    return rec.time_created, rec.time_modified


def test_every_transition_advances_time_modified(db: Database) -> None:
    before = dt.datetime.now(dt.UTC)
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        rec = exports.create(conn, uuid.uuid4(), SNAP, sid)
    created, modified = _times(_read(db, rec.id))
    assert before <= created == modified <= dt.datetime.now(dt.UTC)
    saga, vol = uuid.uuid4(), uuid.uuid4()
    steps = [
        lambda c: exports.start_assigning(c, rec.id, saga, 1),
        lambda c: exports.unassign(c, rec.id, saga, 1),
        lambda c: exports.start_assigning(c, rec.id, saga, 2),
        lambda c: exports.set_live(c, rec.id, saga, 2, PANTRY_A, vol),
        lambda c: exports.mark_for_deletion(c, rec.id),
        lambda c: exports.start_deleting(c, rec.id, saga, 3),
        lambda c: exports.undelete(c, rec.id, saga, 3),
        lambda c: exports.start_deleting(c, rec.id, saga, 4),
        lambda c: exports.set_deleted(c, rec.id, saga, 4),
    ]
    last = modified
    for step in steps:
        with db.begin() as conn:
            step(conn)
        now_created, now_modified = _times(_read(db, rec.id))
        assert now_created == created  # never moves
        assert now_modified > last, step
        last = now_modified
        # Run twice (a saga action retried): it succeeds and writes nothing.
        with db.begin() as conn:
            step(conn)
        assert _times(_read(db, rec.id))[1] == last


def test_bypass_and_set_based_marks_stamp_time_modified(db: Database) -> None:
    with db.begin() as conn:
        gone, lost, expunged, untouched = (seed.add_snapshot(conn) for _ in range(4))
        bypass = exports.create(conn, uuid.uuid4(), SNAP, gone)
        recs = {}
        for name, sid, pantry in (
            ("lost", lost, PANTRY_A), ("expunged", expunged, PANTRY_B), ("untouched", untouched,
                                                                        PANTRY_A)
        ):
            rec = exports.create(conn, uuid.uuid4(), SNAP, sid)
            saga = uuid.uuid4()
            exports.start_assigning(conn, rec.id, saga, 1)
            recs[name] = exports.set_live(conn, rec.id, saga, 1, pantry, uuid.uuid4())
        resources.soft_delete(conn, SNAP, [gone])
    stamps = {n: _times(_read(db, r.id))[1] for n, r in recs.items()}
    bypass_stamp = _times(_read(db, bypass.id))[1]
    with db.begin() as conn:
        changeset.compute(conn)  # marks `bypass` (its snapshot is gone), set-based
        exports.mark_lost(conn, [recs["lost"].id])
        exports.mark_expunged_pantries(conn, [PANTRY_A])
    assert _times(_read(db, bypass.id))[1] > bypass_stamp
    assert _times(_read(db, recs["lost"].id))[1] > stamps["lost"]
    assert _times(_read(db, recs["expunged"].id))[1] > stamps["expunged"]
    assert _times(_read(db, recs["untouched"].id))[1] == stamps["untouched"]
    stamp = _times(_read(db, bypass.id))[1]
    with db.begin() as conn:
        exports.bypass_delete(conn, bypass.id)
    done = _read(db, bypass.id)
    assert done.state is ExportState.DELETED and _times(done)[1] > stamp


def test_request_many_sets_both_times(db: Database) -> None:
    with db.begin() as conn:
        sids = [seed.add_snapshot(conn) for _ in range(3)]
        out = exports.request_many(
            conn, [(uuid.uuid4(), ResourceRef(SNAP, sid)) for sid in sids]
        )
    assert len(out.created) == 3
    for rec in out.created:
        created, modified = _times(rec)
        assert created == modified


def test_rows_written_by_other_tools_get_the_server_default(db: Database) -> None:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        eid = uuid.uuid4()
        conn.execute(insert(user_data_export).values(
            id=eid, state="requested", generation=0, resource_id=sid,
            resource_type="snapshot", resource_deleted=False,
        ))
    created, modified = _times(_read(db, eid))
    assert abs((dt.datetime.now(dt.UTC) - created).total_seconds()) < 120
    assert created == modified


def _count(conn: Connection) -> int:
    return int(conn.execute(text("SELECT count(*) FROM user_data_export")).scalar_one())


def test_upgrade_from_0004_backfills_existing_records(empty_db_url: str) -> None:
    db = open_database(empty_db_url)
    try:
        migrate.upgrade(db, "0004")
        sid, eid = uuid.uuid4(), uuid.uuid4()
        with db.begin() as conn:
            conn.execute(text(
                "INSERT INTO user_data_export (id, state, generation, resource_id, "
                "resource_type, resource_deleted) VALUES (:id, 'live', 1, :rid, 'snapshot', "
                "false)"
            ), {"id": str(eid), "rid": str(sid)})
        before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
        migrate.upgrade(db)
        with db.connect() as conn:
            assert _count(conn) == 1
            row = conn.execute(select(user_data_export)).one()
        rec = exports.row_to_export(row)
        created, modified = _times(rec)
        assert created == modified and created >= before.replace(microsecond=0)
        assert rec.id == eid and rec.state is ExportState.LIVE
        # The partial unique index survived the rebuild: a second live record for
        # the same resource is refused.
        with db.begin() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(insert(user_data_export).values(
                        id=uuid.uuid4(), state="requested", generation=0, resource_id=sid,
                        resource_type="snapshot", resource_deleted=False,
                    ))
            except Exception as err:  # IntegrityError on either engine
                assert "unique" in str(err).lower() or "duplicate" in str(err).lower()
            else:
                raise AssertionError("the partial unique index is gone")
    finally:
        db.dispose()
