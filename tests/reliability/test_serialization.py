"""`Database.transaction` under PostgreSQL SERIALIZABLE (issue 7): a real
serialization failure (SQLSTATE 40001) is retried with backoff and the work
commits once; an error that is not a serialization failure is never retried."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from sqlalchemy import event, exc, text
from sqlalchemy.engine import make_url

import udx.db.engine as engine_mod
from udx.db.engine import Database
from udx.domain.errors import DatabaseError


@pytest.fixture
def accounts(pg: Database, pg_url: str) -> Database:
    with pg.begin() as conn:
        conn.execute(text("CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL)"))
        conn.execute(text("INSERT INTO acct VALUES (1, 100), (2, 100)"))
    return pg


def _raw_connect(pg_url: str) -> psycopg.Connection:
    u = make_url(pg_url)
    conn = psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database)
    conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
    return conn


class _Counters:
    def __init__(self, db: Database) -> None:
        self.commits = 0
        self.sqlstates: list[str | None] = []
        self.sleeps: list[float] = []
        event.listen(db.engine, "commit", self._commit)
        event.listen(db.engine, "handle_error", self._error)

    def _commit(self, _conn: object) -> None:
        self.commits += 1

    def _error(self, ctx: exc.ExceptionContext) -> None:
        self.sqlstates.append(getattr(ctx.original_exception, "sqlstate", None))


def _record_sleeps(monkeypatch: pytest.MonkeyPatch, counters: _Counters) -> None:
    """Record the retry loop's sleeps (only those of the calling thread)."""
    real_sleep = time.sleep
    me = threading.get_ident()

    def sleep(secs: float) -> None:
        if threading.get_ident() == me:
            counters.sleeps.append(secs)
        real_sleep(secs)

    monkeypatch.setattr(engine_mod.time, "sleep", sleep)


def test_runs_serializable(accounts: Database) -> None:
    level = accounts.transaction(lambda c: c.exec_driver_sql("SHOW transaction_isolation").scalar())
    assert level == "serializable"


def test_write_skew_is_retried_and_commits_once(
    accounts: Database, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The classic write skew: each transaction reads both balances, then takes
    money from a different account so that together they break the rule
    "the sum stays >= 0". Under SERIALIZABLE one of them must fail with 40001.

    The other transaction (a raw connection, no retry) commits first; ours then
    fails at its write or commit, is retried from the start, sees the new
    balances and commits exactly once."""
    counters = _Counters(accounts)
    _record_sleeps(monkeypatch, counters)
    both_read = threading.Barrier(2, timeout=20)
    other_committed = threading.Event()
    attempts: list[int] = []
    other_error: list[BaseException] = []

    def other() -> None:
        try:
            with _raw_connect(pg_url) as conn:
                total = conn.execute("SELECT sum(balance) FROM acct").fetchone()
                assert total is not None and total[0] == 200
                both_read.wait()
                conn.execute("UPDATE acct SET balance = balance - 150 WHERE id = 2")
                conn.commit()
        except BaseException as err:  # surfaced by the main thread
            other_error.append(err)
            both_read.abort()
        finally:
            other_committed.set()

    def withdraw(conn) -> int:
        attempts.append(1)
        total = conn.execute(text("SELECT sum(balance) FROM acct")).scalar_one()
        if len(attempts) == 1:
            both_read.wait()  # both transactions have read the old balances
            assert other_committed.wait(20)
        if total - 150 < 0:
            return 0  # the retry sees the other withdrawal: refuse
        conn.execute(text("UPDATE acct SET balance = balance - 150 WHERE id = 1"))
        return 150

    t = threading.Thread(target=other)
    t.start()
    taken = accounts.transaction(withdraw, name="withdraw")
    t.join(20)
    assert not other_error, other_error
    assert "40001" in counters.sqlstates, counters.sqlstates
    assert len(attempts) == 2  # ran twice
    assert counters.commits == 1  # committed once (the first attempt rolled back)
    assert taken == 0  # the retry read the committed state of the other transaction
    assert len(counters.sleeps) == 1 and 0.005 <= counters.sleeps[0] <= 0.01  # backoff
    with accounts.connect() as conn:
        rows = dict(conn.execute(text("SELECT id, balance FROM acct")).all())
    assert rows == {1: 100, 2: -50}


def _raise_sqlstate(code: str):
    def fn(conn) -> None:
        conn.exec_driver_sql(
            f"DO $$ BEGIN RAISE EXCEPTION 'injected {code}' USING ERRCODE = '{code}'; END $$"
        )

    return fn


@pytest.mark.parametrize("code", ["40001", "40P01"])
def test_retryable_sqlstates_back_off_then_give_up(
    accounts: Database, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    """A transaction that keeps failing with 40001 (or deadlock 40P01) is run
    `retry_attempts` times with doubling sleeps, then the error surfaces."""
    counters = _Counters(accounts)
    _record_sleeps(monkeypatch, counters)
    accounts.retry_attempts = 5
    calls: list[int] = []
    inject = _raise_sqlstate(code)

    def fn(conn) -> None:
        calls.append(1)
        conn.execute(text("UPDATE acct SET balance = 0"))
        inject(conn)

    # The error surfaces as a one-line udx error, the driver's error chained to it.
    with pytest.raises(DatabaseError) as info:
        accounts.transaction(fn)
    assert info.value.sqlstate == code
    assert isinstance(info.value.__cause__, exc.DBAPIError)
    assert getattr(info.value.__cause__.orig, "sqlstate", None) == code
    assert len(calls) == 5
    assert counters.commits == 0
    assert len(counters.sleeps) == 4
    # exponential: each base delay doubles (0.005, 0.01, 0.02, 0.04), jittered up to 2x
    for i, s in enumerate(counters.sleeps):
        base = 0.005 * 2**i
        assert base <= s <= 2 * base, counters.sleeps
    with accounts.connect() as conn:
        assert conn.execute(text("SELECT sum(balance) FROM acct")).scalar_one() == 200


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        ("INSERT INTO acct VALUES (1, 0)", exc.IntegrityError),  # 23505
        ("SELECT 1 / 0", exc.DataError),  # 22012
        ("SELECT no_such_column FROM acct", exc.ProgrammingError),  # 42703
    ],
)
def test_other_errors_are_not_retried(
    accounts: Database, monkeypatch: pytest.MonkeyPatch, statement: str, error: type
) -> None:
    counters = _Counters(accounts)
    _record_sleeps(monkeypatch, counters)
    calls: list[int] = []

    def fn(conn) -> None:
        calls.append(1)
        conn.execute(text("UPDATE acct SET balance = 0 WHERE id = 2"))
        conn.exec_driver_sql(statement)

    with pytest.raises(DatabaseError) as info:
        accounts.transaction(fn)
    assert isinstance(info.value.__cause__, error)
    assert calls == [1]
    assert counters.sleeps == [] and counters.commits == 0
    with accounts.connect() as conn:
        assert conn.execute(text("SELECT balance FROM acct WHERE id = 2")).scalar_one() == 100
