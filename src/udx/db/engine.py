"""Engines and transactions.

`Database` wraps an SQLAlchemy engine with what every caller needs: a transaction
helper that retries serialization failures (PostgreSQL runs SERIALIZABLE, as the
CockroachDB deployments upstream always do), errors translated to udx's, and the
schema version check.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url

from udx.db.urls import (
    check_url_authority,
    looks_like_lost_connection,
    mask_secrets,
    normalize_url,
)
from udx.domain.errors import (
    BadInput,
    DatabaseBusy,
    DatabaseError,
    DatabaseMissing,
    DatabaseStorageFull,
    DatabaseUnavailable,
    UdxError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# SQLSTATEs that mean "run the transaction again": serialization failure, deadlock.
_RETRYABLE_SQLSTATES = {"40001", "40P01"}


def _sqlstate(err: BaseException) -> str | None:
    orig = getattr(err, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def is_busy(err: BaseException) -> bool:
    """SQLite's SQLITE_BUSY: another connection holds the lock we need."""
    return isinstance(err, exc.OperationalError) and "database is locked" in str(err)


def is_retryable(err: BaseException) -> bool:
    if _sqlstate(err) in _RETRYABLE_SQLSTATES:
        return True
    return is_busy(err)


# SQLSTATE class 53: insufficient resources (53100 disk_full, 53200 out of memory, ...).
_STORAGE_TEXT = ("database or disk is full", "disk i/o error", "no space left on device")


def is_storage_full(err: BaseException) -> bool:
    if (_sqlstate(err) or "").startswith("53"):
        return True
    return isinstance(err, exc.DBAPIError) and any(s in str(err).lower() for s in _STORAGE_TEXT)


def is_not_a_database(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, exc.DBAPIError) and (
        "file is not a database" in text or "database disk image is malformed" in text
    )


def is_connection_error(err: BaseException) -> bool:
    if isinstance(err, exc.DBAPIError) and err.connection_invalidated:
        return True
    text = str(err) if isinstance(err, exc.OperationalError) else None
    return looks_like_lost_connection(_sqlstate(err), text)


class Database:
    """One database: an engine plus udx's transaction discipline."""

    def __init__(
        self,
        engine: Engine,
        url: str,
        *,
        busy_timeout_secs: float = 30.0,
        isolation: str = "SERIALIZABLE",
    ) -> None:
        self.engine = engine
        self.url = url
        # As opened (PostgreSQL's level; SQLite ignores it): saga worker
        # processes open the same database the same way.
        self.isolation = isolation
        self.dialect = engine.dialect.name
        # SQLite: how long a statement waits for another process's lock (the
        # busy handler), after which a busy database is DatabaseBusy, exit 3.
        self.busy_timeout_secs = busy_timeout_secs
        # Under contention (16 sagas at once, SERIALIZABLE) a transaction may lose
        # several times in a row; 20 attempts with the delay capped at 0.25 s give
        # up after roughly 4-7 s rather than failing a saga node on a busy moment.
        self.retry_attempts = 20

    @property
    def display_url(self) -> str:
        return mask_secrets(self.url, self.url)

    def dispose(self) -> None:
        self.engine.dispose()

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite file, or None (PostgreSQL, or an in-memory database)."""
        if self.dialect != "sqlite":
            return None
        path = make_url(self.url).database
        return path if path and path != ":memory:" else None

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads (autobegun, rolled back at the end).

        On SQLite its transaction is a plain (deferred) BEGIN: under WAL a reader
        never waits for a writer, where BEGIN IMMEDIATE would queue behind it.
        """
        try:
            with self.engine.connect() as conn:
                conn.execution_options(udx_read_only=True)
                yield conn
        except exc.DBAPIError as err:
            raise self.translate(err) from err

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction, committed at the end. No retry: see `transaction`."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except exc.DBAPIError as err:
            raise self.translate(err) from err

    def transaction(
        self,
        fn: Callable[[Connection], T],
        *,
        name: str = "transaction",
        isolation: str | None = None,
        wait: bool = True,
    ) -> T:
        """Run `fn` in one transaction, re-running it on serialization failures.

        `fn` must be safe to run again from the start (it only touches the
        database through `conn`, which is rolled back before a retry).
        `isolation` (e.g. "READ COMMITTED") overrides the engine's level on
        PostgreSQL, for writes whose safety rests on row locks alone.
        `wait=False`: on SQLite, a database another process is writing is
        DatabaseBusy at once instead of after busy_timeout_secs (a write a
        reading command makes on the side, which must not hold it up).
        """
        delay = 0.005
        start = time.monotonic()
        for attempt in range(1, self.retry_attempts + 1):
            try:
                with self._begin(isolation, wait=wait) as conn:
                    return fn(conn)
            except exc.DBAPIError as err:
                # A busy SQLite database already waited in SQLite's busy handler:
                # retry only a busy answer that came early (not after the wait).
                waited_out = is_busy(err) and (
                    not wait or time.monotonic() - start >= self.busy_timeout_secs
                )
                if is_retryable(err) and attempt < self.retry_attempts and not waited_out:
                    log.debug("%s: retrying after %s (attempt %d)", name, _sqlstate(err), attempt)
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 0.25)
                    continue
                raise self._failure(err, name) from err
        raise AssertionError("unreachable")

    def _failure(self, err: exc.DBAPIError, name: str) -> UdxError:
        translated = self.translate(err)
        if isinstance(translated, UdxError):
            return translated
        # Callers (the pass above all) handle UdxError per item and go on.
        detail = str(getattr(err, "orig", err)).strip().splitlines()[0]
        return DatabaseError(f"{name} failed: {mask_secrets(detail, self.url)}", _sqlstate(err))

    def bound_to(self, conn: Connection) -> Database:
        """This database as seen from inside a transaction already open on `conn`.

        `transaction`, `begin` and `connect` of the result all run on `conn`, in
        the enclosing transaction: code written against a `Database` (a saga
        action) becomes part of its caller's transaction unchanged. Errors are
        translated as `transaction` does, except serialization failures, which are
        re-raised as they are so the enclosing `transaction` retries from its start.
        """
        return _BoundDatabase(self, conn)

    @contextmanager
    def _begin(self, isolation: str | None, *, wait: bool = True) -> Iterator[Connection]:
        if not wait and self.dialect == "sqlite":
            with self.engine.connect() as conn:
                # On the driver's connection: through `conn` it would begin the
                # transaction (BEGIN IMMEDIATE, which is what waits) first.
                raw = conn.connection.driver_connection
                assert raw is not None
                raw.execute("PRAGMA busy_timeout=0")
                try:
                    with conn.begin():
                        yield conn
                finally:
                    raw.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_secs * 1000)}")
            return
        if isolation is None or self.dialect != "postgresql":
            with self.engine.begin() as conn:
                yield conn
            return
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level=isolation)
            with conn.begin():
                yield conn

    def translate(self, err: BaseException) -> UdxError | BaseException:
        """Map a driver error to a udx error (with the password masked)."""
        if isinstance(err, UdxError):
            return err
        where = self.sqlite_path or self.display_url
        if is_busy(err):
            return DatabaseBusy(
                f"the database {where} is busy: another process held its lock for more than "
                f"{self.busy_timeout_secs:g} s ([database] busy_timeout_secs, "
                "UDX_DATABASE_BUSY_TIMEOUT_SECS)"
            )
        detail_line = str(getattr(err, "orig", err)).strip().splitlines()
        detail = mask_secrets(detail_line[0] if detail_line else type(err).__name__, self.url)
        if is_storage_full(err):
            return DatabaseStorageFull(
                f"cannot write to the database {where}: {detail} (is its file system full? "
                "nothing was half-written: run the command again once it has room)"
            )
        if is_not_a_database(err):
            return DatabaseUnavailable(
                f"cannot use the database {where}: {detail} (is it an SQLite database file?)"
            )
        if is_connection_error(err):
            detail = str(getattr(err, "orig", err)).strip().splitlines()[0]
            return DatabaseUnavailable(
                f"cannot reach the database {self.display_url}: {mask_secrets(detail, self.url)}"
            )
        return err


class _BoundDatabase(Database):
    """See `Database.bound_to`."""

    def __init__(self, outer: Database, conn: Connection) -> None:
        super().__init__(outer.engine, outer.url, busy_timeout_secs=outer.busy_timeout_secs)
        self._outer = outer
        self._conn = conn

    def bound_to(self, conn: Connection) -> Database:
        return self._outer.bound_to(conn)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        try:
            yield self._conn
        except exc.DBAPIError as err:
            if is_retryable(err):
                raise
            raise self._failure(err, "query") from err

    begin = connect

    def transaction(
        self,
        fn: Callable[[Connection], T],
        *,
        name: str = "transaction",
        isolation: str | None = None,
        wait: bool = True,
    ) -> T:
        # `isolation` and `wait` cannot change mid-transaction: the enclosing one's hold.
        try:
            return fn(self._conn)
        except exc.DBAPIError as err:
            if is_retryable(err):
                raise
            raise self._failure(err, name) from err


def _sqlite_setup(engine: Engine, busy_timeout_secs: float) -> None:
    # pysqlite's implicit transactions begin lazily and upgrade read locks to write
    # locks mid-transaction, which deadlocks concurrent writers. Take control:
    # every writing transaction is BEGIN IMMEDIATE, so writers queue on
    # busy_timeout; reads (`Database.connect`) are a deferred BEGIN, which under WAL
    # reads a snapshot without waiting for any writer.
    busy_ms = int(busy_timeout_secs * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")  # first: the next one may wait
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get("udx_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


# A pooled connection unused for this long is pinged before it is handed out.
IDLE_PING_SECS = 2.0


def _ping_idle_connections(engine: Engine) -> None:
    """SQLAlchemy's pessimistic disconnect handling, for idle connections only.

    `pool_pre_ping` pings on every checkout: a round trip before each of the ~15
    transactions of an export saga, for connections that answered milliseconds
    ago. A connection goes stale by sitting idle (a server restart, a proxy's idle
    timeout); one reused at once is as alive as a ping would show. A failed ping
    raises DisconnectionError, which makes the pool discard the connection and
    check out another (the documented recipe).
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["udx_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("udx_idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECS:
            return  # fresh from connect, or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as err:
            if engine.dialect.is_disconnect(err, dbapi_conn, None):  # type: ignore[arg-type]
                raise exc.DisconnectionError(str(err)) from err
            raise


def open_database(
    url: str,
    *,
    isolation: str = "SERIALIZABLE",
    create: bool = True,
    busy_timeout_secs: float = 30.0,
) -> Database:
    """Create a `Database` for `url`. Does not connect yet.

    `create=False`: an SQLite file that does not exist is DatabaseMissing (exit 3)
    rather than created, with its directories, by merely looking at it.
    """
    url = normalize_url(url)
    check_url_authority(url)
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError):
        raise BadInput(f"malformed database URL {mask_secrets(url, url)!r}") from None
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"future": True}
    if backend == "sqlite":
        db_path = parsed.database
        if db_path and db_path != ":memory:" and not db_path.startswith("file:"):
            _prepare_sqlite_path(Path(db_path).expanduser(), create)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout_secs}
    elif backend in ("postgresql", "cockroachdb"):
        from udx.db.schema import add_postgresql_options

        add_postgresql_options()
        kwargs["isolation_level"] = isolation
        kwargs["connect_args"] = {"connect_timeout": 5}
        kwargs["pool_size"] = 20
        kwargs["max_overflow"] = 20
    else:
        raise BadInput(
            f"unsupported database URL scheme {parsed.drivername!r}: "
            "use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
        )
    try:
        engine = create_engine(url, **kwargs)
    except (exc.ArgumentError, exc.NoSuchModuleError) as err:
        raise BadInput(f"unusable database URL {mask_secrets(url, url)!r}: {err}") from None
    if backend == "sqlite":
        _sqlite_setup(engine, busy_timeout_secs)
    else:
        _ping_idle_connections(engine)
    return Database(engine, url, busy_timeout_secs=busy_timeout_secs, isolation=isolation)


def _prepare_sqlite_path(path: Path, create: bool) -> None:
    """Check (and with `create`, make) the directory of an SQLite file."""
    try:
        exists = path.exists()
    except OSError as err:  # a name too long, a path through a regular file
        raise DatabaseUnavailable(
            f"cannot open the database {_shown(path)}: {err.strerror or err}"
        ) from None
    if exists:
        if path.is_dir():
            raise DatabaseUnavailable(f"cannot open the database {path}: it is a directory")
        return
    if not create:
        raise DatabaseMissing(
            f"no database at {_shown(path)}: run `udx db init` to create it "
            "(or point --db / UDX_DATABASE_URL at the right one)"
        )
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        # As SQLite's own "unable to open database file": unreachable, exit 3.
        raise DatabaseUnavailable(
            f"cannot open the database {_shown(path)}: cannot create {_shown(parent)}: "
            f"{err.strerror or err}"
        ) from None


def _shown(path: Path, limit: int = 200) -> str:
    text = str(path)
    return text if len(text) <= limit else f"{text[: limit // 2]}...({len(text)} characters)"
