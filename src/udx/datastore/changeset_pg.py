"""`udx changeset --json`, piped, on PostgreSQL: psycopg alone, no SQLAlchemy.

The command is a read of four statements whose rows PostgreSQL already renders as
JSON text (udx.datastore.changeset). Through SQLAlchemy it cost the import of
SQLAlchemy (~0.15 s and ~13 MB on the development machine) and a server-side
cursor's fetches; here it runs the same statements, generated as SQL text
(`changeset_pg_sql`, kept current by scripts/gen_docs.py and CI), and streams
each one with libpq's chunked rows (the server sends rows while udx writes them,
and memory stays flat). Measured in bench/changeset.py.

The output is the same bytes as the SQLAlchemy path's (tests/datastore/
test_changeset_pg.py). Anything this path does not handle goes back to that one,
before a byte is written: a URL with query parameters, a `%` in its host or
database name, or another driver; a schema that is not current; a connection
that fails other than by being unreachable (the other path then says what is
wrong, in its words). An unreachable database is the same one error line as on
that path, without a second attempt.

Errors once output has begun are classified as udx.db.engine does: a lost
connection is DatabaseUnavailable (exit 3), anything else a DatabaseError. One
difference: each list is one statement here, not a cursor's FETCHes, so a
`statement_timeout` set for udx's role bounds a whole list's transfer (a slow
reader of the output can hit it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, TextIO

from udx.datastore.changeset_pg_sql import STATEMENTS
from udx.db.migrate import SCHEMA_HEAD
from udx.db.urls import (
    check_url_authority,
    looks_like_lost_connection,
    mask_secrets,
    normalize_url,
)
from udx.domain.errors import BadInput, DatabaseError, DatabaseUnavailable
from udx.jsonstream import Stream, ascii_only, write_json

if TYPE_CHECKING:
    import psycopg

# Rows per chunk from libpq: a few hundred KB of text at most.
ROWS_PER_CHUNK = 1000
_SCHEME = "postgresql+psycopg://"
# As in udx.db.engine.open_database.
CONNECT_TIMEOUT_SECS = 5


class NotHere(Exception):
    """This command is for the SQLAlchemy path (nothing was written)."""


def conninfo_for(url: str) -> str | None:
    """The libpq URI for `url`, or None when this path does not take it: not
    PostgreSQL through psycopg; query parameters (SQLAlchemy may read them
    differently from libpq); a host or database name with a `%` (libpq decodes
    it, SQLAlchemy does not: they could name two databases) or several hosts; a
    URL SQLAlchemy's path refuses (it then says why)."""
    url = normalize_url(url)
    if not url.startswith(_SCHEME) or "?" in url:
        return None
    rest = url[len(_SCHEME) :]
    where = rest.rpartition("@")[2]  # host, port and database: after the user info
    if "%" in where or "," in where:
        return None
    try:
        check_url_authority(url)
    except BadInput:
        return None
    return "postgresql://" + rest


def write_preview_json(url: str, isolation: str, out: TextIO) -> None:
    """Write `json.dumps(preview(conn).to_json(include_would_mark=True))` and a
    newline to `out`, in one transaction at `isolation` (a [database] isolation
    value), read-only. NotHere before anything is written when the SQLAlchemy path
    must run instead; a database that cannot be reached, or an error once writing
    has begun, is a UdxError."""
    conninfo = conninfo_for(url)
    if conninfo is None:
        raise NotHere
    url = normalize_url(url)  # as udx.db.engine.Database shows it in errors
    import psycopg

    try:
        conn = psycopg.connect(conninfo, connect_timeout=CONNECT_TIMEOUT_SECS)
    except psycopg.Error as err:
        if _is_connection_error(err):  # not twice: a second try would wait as long
            raise _unavailable(err, url) from err
        raise NotHere from None  # the other path says what is wrong, in its words
    streams: list[Generator[str, None, None]] = []
    try:
        try:
            conn.isolation_level = _isolation(isolation)
            conn.read_only = True
            stored = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        except psycopg.Error as err:
            if _is_connection_error(err):
                raise _unavailable(err, url) from err
            raise NotHere from None  # no alembic_version: no udx schema
        if stored != [(SCHEMA_HEAD,)]:
            raise NotHere
        cur = conn.cursor()
        streams = [_texts(cur, sql, url) for _name, sql in STATEMENTS]
        fields = [
            (name, Stream(texts, raw=True))
            for (name, _sql), texts in zip(STATEMENTS, streams, strict=True)
        ]
        write_json(out, fields, transform=ascii_only)
    finally:
        # A write that failed mid-list (a closed pipe, Ctrl-C) leaves a statement
        # running: closing its stream cancels it, so closing the connection
        # (which ends the read-only transaction) does not find it busy.
        for texts in streams:
            with contextlib.suppress(Exception):
                texts.close()
        conn.close()


def _isolation(name: str) -> psycopg.IsolationLevel:
    from psycopg import IsolationLevel

    return IsolationLevel[name.upper()]


def _texts(cur: psycopg.Cursor[Any], sql: str, url: str) -> Generator[str, None, None]:
    import psycopg

    # Chunks need libpq 17 (psycopg's binary wheel ships a newer one); an older
    # libpq gets single-row mode: slower, the same bytes.
    size = ROWS_PER_CHUNK if psycopg.capabilities.has_stream_chunked() else 1
    try:
        for row in cur.stream(sql, size=size):
            yield row[0]
    except psycopg.Error as err:
        if _is_connection_error(err):
            raise _unavailable(err, url) from err
        raise DatabaseError(f"changeset failed: {_line(err, url)}", err.sqlstate) from err


def _is_connection_error(err: psycopg.Error) -> bool:
    """As udx.db.engine.is_connection_error judges the same driver error."""
    import psycopg

    text = str(err) if isinstance(err, psycopg.OperationalError) else None
    return looks_like_lost_connection(err.sqlstate, text)


def _unavailable(err: BaseException, url: str) -> DatabaseUnavailable:
    """The error udx.db.engine.Database.translate gives for a lost connection."""
    return DatabaseUnavailable(
        f"cannot reach the database {mask_secrets(url, url)}: {_line(err, url)}"
    )


def _line(err: BaseException, url: str) -> str:
    lines = str(err).strip().splitlines()
    return mask_secrets(lines[0] if lines else type(err).__name__, url)
