"""Schema versions: init, status, upgrade; the migrations match udx.db.schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from udx.db import migrate
from udx.db.engine import open_database
from udx.db.schema import metadata

from .cli.helpers import Udx, assert_one_line_error


def test_migrations_produce_exactly_the_schema(empty_db_url: str) -> None:
    db = open_database(empty_db_url)
    try:
        migrate.upgrade(db)
        with db.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, metadata)
            assert diff == [], diff
            insp = inspect(conn)
            tables = set(insp.get_table_names()) - {"alembic_version"}
            assert tables == set(metadata.tables)
            for name, table in metadata.tables.items():
                assert [c["name"] for c in insp.get_columns(name)] == [c.name for c in table.c]
                got = {ix["name"] for ix in insp.get_indexes(name)}
                assert got == {ix.name for ix in table.indexes}, name
            # The partial unique index, with its WHERE, exists on both engines.
            if db.dialect == "sqlite":
                sql = conn.execute(text(
                    "SELECT sql FROM sqlite_master WHERE name = 'one_export_record_per_resource'"
                )).scalar_one()
            else:
                sql = conn.execute(text(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = "
                    "'one_export_record_per_resource'"
                )).scalar_one()
            assert "UNIQUE" in sql.upper() and "deleted" in sql and "WHERE" in sql.upper()
    finally:
        db.dispose()


def test_init_status_upgrade(empty_db_url: str, tmp_path: Path) -> None:
    udx = Udx(tmp_path, empty_db_url)
    head = migrate.all_revisions()[-1]
    before = udx.json("db", "status")
    assert before["current"] is None and before["up_to_date"] is False
    assert before["head"] == head and before["pending"] == migrate.all_revisions()

    r = assert_one_line_error(udx("changeset"), 3, "udx db init")
    assert "udx db upgrade" not in r
    assert_one_line_error(udx("export", "list"), 3, "udx db init")

    r = udx.ok("db", "init")
    assert head in r.stdout
    after = udx.json("db", "status")
    assert after["current"] == head and after["up_to_date"] is True and after["pending"] == []
    assert "udx db init" not in udx.ok("db", "status").stdout  # text form works too

    assert "already" in udx.ok("db", "init").stdout
    assert "already" in udx.ok("db", "upgrade").stdout
    assert udx.json("changeset")["request_required"] == []


def test_older_schema_asks_for_upgrade(empty_db_url: str, tmp_path: Path) -> None:
    revisions = migrate.all_revisions()
    db = open_database(empty_db_url)
    try:
        if len(revisions) >= 2:
            migrate.upgrade(db, revisions[-2])  # a real older schema
        else:  # pragma: no cover - only while a single revision exists
            migrate.upgrade(db)
            with db.begin() as conn:
                conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
        older = migrate.status(db).current
    finally:
        db.dispose()
    udx = Udx(tmp_path, empty_db_url)
    status = udx.json("db", "status")
    assert status["current"] == older and status["up_to_date"] is False
    if len(revisions) >= 2:
        assert status["pending"] == revisions[-1:]
        assert_one_line_error(udx("changeset"), 3, "udx db upgrade", str(older))
        assert_one_line_error(udx("export", "list", "--json"), 3, "udx db upgrade")
        # init refuses to touch a database that already has a schema
        assert_one_line_error(udx("db", "init"), 2, "udx db upgrade")
        r = udx.ok("db", "upgrade")
        assert revisions[-1] in r.stdout
        assert udx.json("db", "status")["up_to_date"] is True
        assert udx.json("changeset")["create_required"] == []


def test_unknown_schema_version_asks_to_upgrade_udx(empty_db_url: str, tmp_path: Path) -> None:
    db = open_database(empty_db_url)
    try:
        migrate.upgrade(db)
        with db.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    finally:
        db.dispose()
    udx = Udx(tmp_path, empty_db_url)
    assert_one_line_error(udx("changeset"), 3, "9999_from_the_future", "upgrade udx")


@pytest.mark.parametrize("start", ["empty", "older"])
def test_upgrade_from_scratch_or_older_matches_schema(empty_db_url: str, start: str) -> None:
    revisions = migrate.all_revisions()
    db = open_database(empty_db_url)
    try:
        if start == "older":
            migrate.upgrade(db, revisions[0])
        st = migrate.upgrade(db)
        assert st.up_to_date and st.current == revisions[-1]
        with db.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    finally:
        db.dispose()


def test_schema_head_constant_matches_the_newest_migration() -> None:
    # require_current() compares with this constant to avoid importing Alembic.
    assert migrate.SCHEMA_HEAD == migrate.head_revision() == migrate.all_revisions()[-1]


def test_0006_backfills_the_locks_already_in_the_saga_log(empty_db_url: str) -> None:
    """Records locked before the upgrade are found by lock id after it."""
    import json
    import uuid

    from udx.datastore import export_locks, saga_log
    from udx.db.types import utcnow

    db = open_database(empty_db_url)
    try:
        migrate.upgrade(db, "0005")
        now = utcnow()
        create, delete, corrupt = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        lock_c, lock_d, export = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        outputs = {
            create: ("export-create", "generate_ids", {"lock_id": str(lock_c), "volume_id": "x"}),
            delete: ("export-delete", "generate_lock_id", str(lock_d)),
            corrupt: ("export-delete", "generate_lock_id", "not a uuid"),
        }
        params = json.dumps({"export_id": str(export)})
        with db.begin() as conn:
            for sid, (name, node, out) in outputs.items():
                saga_log.insert(
                    conn, saga_id=sid, name=name, params_json=params,
                    sec_id=uuid.uuid4(), now=now, lease_expires=now,
                )  # fmt: skip
                saga_log.append_event(
                    conn, saga_id=sid, node_id=node, event_type="succeeded",
                    data=json.dumps(out), creator=uuid.uuid4(), now=now,
                )  # fmt: skip
        migrate.upgrade(db)
        with db.connect() as conn:
            assert export_locks.saga_for_lock(conn, lock_c) == create
            assert export_locks.saga_for_lock(conn, lock_d) == delete
            assert export_locks.exports_of_sagas(conn, [create, delete, corrupt]) == {
                create: export,
                delete: export,
            }
    finally:
        db.dispose()
