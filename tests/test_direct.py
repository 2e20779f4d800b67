"""udx.db.direct: statements sent straight to the driver give what
Connection.execute gives (types converted both ways), fire the engine's events,
and fail the way SQLAlchemy fails, on both engines."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    Table,
    bindparam,
    event,
    exc,
    insert,
    select,
    text,
    update,
)

from udx.db.direct import DirectStatement
from udx.db.engine import Database
from udx.db.schema import saga
from udx.db.types import utcnow
from udx.testing.statements import count_statements

_INSERT = DirectStatement(
    insert(saga).values(
        id=bindparam("b_id"),
        creator=bindparam("b_sec"),
        time_created=bindparam("b_now"),
        name="export-create",
        params="{}",
        saga_state="running",
        current_sec=bindparam("b_sec"),
        adopt_generation=1,
        adopt_time=bindparam("b_now"),
        lease_expires=None,
    )
)
_GET = DirectStatement(
    select(saga.c.id, saga.c.time_created, saga.c.adopt_generation, saga.c.lease_expires).where(
        saga.c.id == bindparam("b_id")
    )
)
_RENAME = DirectStatement(
    update(saga)
    .where(saga.c.id == bindparam("b_id"))
    .values(name=bindparam("b_name"))
    .returning(saga.c.id, saga.c.name, saga.c.current_sec)
)


def _insert(db: Database) -> tuple[uuid.UUID, uuid.UUID, dt.datetime]:
    sid, sec, now = uuid.uuid4(), uuid.uuid4(), utcnow()
    with db.begin() as conn:
        _INSERT.execute(conn, {"b_id": sid, "b_sec": sec, "b_now": now})
    return sid, sec, now


def test_rows_come_back_as_execute_gives_them(db: Database) -> None:
    sid, _sec, now = _insert(db)
    with db.connect() as conn:
        got = _GET.execute(conn, {"b_id": sid}).first()
        want = conn.execute(_GET.stmt, {"b_id": sid}).first()
    assert got is not None and want is not None
    assert tuple(got) == tuple(want) == (sid, now, 1, None)
    assert isinstance(got.id, uuid.UUID) and got.time_created.tzinfo is not None
    assert got._mapping == dict(want._mapping)


def test_returning_rows_and_rowcount(db: Database) -> None:
    sid, sec, _ = _insert(db)
    with db.begin() as conn:
        res = _RENAME.execute(conn, {"b_id": sid, "b_name": "export-delete"})
        assert res.rowcount == 1
        assert [tuple(r) for r in res] == [(sid, "export-delete", sec)]
        none = _RENAME.execute(conn, {"b_id": uuid.uuid4(), "b_name": "x"})
        assert none.rowcount == 0 and none.first() is None and none.scalar() is None


def test_text_statements_and_scalar(db: Database) -> None:
    sid, _, _ = _insert(db)
    stmt = DirectStatement(
        text("SELECT name FROM saga WHERE id = :b_id").bindparams(
            bindparam("b_id", type_=saga.c.id.type)
        )
    )
    with db.connect() as conn:
        assert stmt.execute(conn, {"b_id": sid}).scalar() == "export-create"


def test_the_engines_events_see_each_statement(db: Database) -> None:
    sid, _, _ = _insert(db)
    seen: list[object] = []

    def before_execute(conn: object, stmt: object, *args: object) -> None:
        seen.append(stmt)

    event.listen(db.engine, "before_execute", before_execute)
    try:
        with count_statements(db.engine) as log, db.connect() as conn:
            _GET.execute(conn, {"b_id": sid})
            _GET.execute(conn, {"b_id": sid})
    finally:
        event.remove(db.engine, "before_execute", before_execute)
    assert log.count == 2 and log.transactions == 1
    assert seen[-2:] == [_GET.stmt, _GET.stmt]


def test_outside_a_transaction_it_begins_one_as_execute_would(db: Database) -> None:
    sid, _, _ = _insert(db)
    with db.engine.connect() as conn:
        assert not conn.in_transaction()
        assert _GET.execute(conn, {"b_id": sid}).first() is not None
        assert conn.in_transaction()


def test_a_missing_parameter_is_refused_before_anything_is_sent(db: Database) -> None:
    with (
        count_statements(db.engine) as log,
        db.connect() as conn,
        pytest.raises(TypeError, match="missing bind parameters: b_id"),
    ):
        _GET.execute(conn, {})
    assert log.count == 0


def test_python_side_defaults_and_expanding_parameters_are_refused(db: Database) -> None:
    # A column default computed in Python is SQLAlchemy's execution context's
    # job, which a direct statement skips: refused when compiled, before any SQL.
    with_default = Table(
        "with_default", MetaData(), Column("id", Integer, primary_key=True),
        Column("n", Integer, default=1),
    )
    partial = DirectStatement(insert(with_default).values(id=bindparam("b_id")))
    expanding = DirectStatement(
        select(saga.c.id).where(saga.c.id.in_(bindparam("b_ids", expanding=True)))
    )
    with count_statements(db.engine) as log, db.connect() as conn:
        with pytest.raises(TypeError, match="every column's value"):
            partial.execute(conn, {"b_id": 1})
        with pytest.raises(TypeError, match="expanding"):
            expanding.execute(conn, {"b_ids": [uuid.uuid4()]})
    assert log.count == 0


def test_a_driver_error_is_sqlalchemys_error(db: Database) -> None:
    sid, sec, now = _insert(db)
    with pytest.raises(exc.IntegrityError), db.begin() as conn:
        _INSERT.execute(conn, {"b_id": sid, "b_sec": sec, "b_now": now})
    # The connection went back to the pool in a usable state.
    with db.connect() as conn:
        assert _GET.execute(conn, {"b_id": sid}).first() is not None


def test_a_lost_connection_is_invalidated_and_the_pool_recovers(pg_only_db: Database) -> None:
    db = pg_only_db
    sid, _, _ = _insert(db)
    with db.engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        conn.rollback()
        with db.engine.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
            other.commit()
        with pytest.raises(exc.DBAPIError) as err:
            _GET.execute(conn, {"b_id": sid})
        assert err.value.connection_invalidated
    with db.connect() as conn:
        assert _GET.execute(conn, {"b_id": sid}).first() is not None


def test_a_text_statement_told_it_returns_rows_gives_them(db: Database) -> None:
    sid, _, _ = _insert(db)
    q = "SELECT name FROM saga WHERE id = :b_id"
    told = DirectStatement(
        text(q).bindparams(bindparam("b_id", type_=saga.c.id.type)), returns_rows=True
    )
    told_not = DirectStatement(
        text(q).bindparams(bindparam("b_id", type_=saga.c.id.type)), returns_rows=False
    )
    with db.connect() as conn:
        assert [tuple(r) for r in told.execute(conn, {"b_id": sid})] == [("export-create",)]
        assert told_not.execute(conn, {"b_id": sid}).rows == []


def test_bad_values_fail_as_connection_execute_fails(db: Database) -> None:
    # Going in, a value the type refuses (a naive time) is a StatementError;
    # nothing is sent and the transaction stays usable.
    with db.begin() as conn:
        with count_statements(db.engine) as log, pytest.raises(exc.StatementError, match="naive"):
            naive = dt.datetime(2026, 1, 1)  # no tzinfo: the point of the test
            _INSERT.execute(conn, {"b_id": uuid.uuid4(), "b_sec": uuid.uuid4(), "b_now": naive})
        assert log.count == 0
        sid, sec, now = uuid.uuid4(), uuid.uuid4(), utcnow()
        _INSERT.execute(conn, {"b_id": sid, "b_sec": sec, "b_now": now})
    with db.connect() as conn:
        assert _GET.execute(conn, {"b_id": sid}).first() is not None


def test_a_garbage_row_is_a_plain_value_error_and_the_connection_stays_usable(
    tmp_path: object,
) -> None:
    # Only SQLite lets a hand edit put a non-UUID into a uuid column.
    from udx.db.engine import open_database
    from udx.db.migrate import upgrade

    db = open_database(f"sqlite:///{tmp_path}/garbage.db")
    try:
        upgrade(db)
        sid, _, _ = _insert(db)
        with db.begin() as conn:
            conn.exec_driver_sql("UPDATE saga SET current_sec = 'not-a-uuid'")
        with db.connect() as conn:
            with pytest.raises(ValueError, match="hexadecimal UUID"):
                _RENAME.execute(conn, {"b_id": sid, "b_name": "x"})
            assert _GET.execute(conn, {"b_id": sid}).first() is not None
    finally:
        db.dispose()


def test_callable_and_literal_execute_parameters_are_refused(db: Database) -> None:
    from sqlalchemy import literal

    computed = DirectStatement(
        select(saga.c.id).where(saga.c.name == bindparam("b_n", callable_=lambda: "x"))
    )
    literal_exec = DirectStatement(
        select(saga.c.id).where(saga.c.name == literal("x", literal_execute=True))
    )
    with db.connect() as conn:
        with pytest.raises(TypeError, match="callable"):
            computed.execute(conn, {})
        with pytest.raises(TypeError, match="expanding"):
            literal_exec.execute(conn, {})
