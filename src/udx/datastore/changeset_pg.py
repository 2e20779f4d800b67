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
before a byte is written: a URL with query parameters or another driver, a
schema that is not current, a connection that fails (the other path then says
what is wrong, in its words: the price is a second connection attempt).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

from udx.datastore.changeset_pg_sql import STATEMENTS
from udx.db.migrate import SCHEMA_HEAD
from udx.db.urls import mask_secrets, normalize_url
from udx.domain.errors import DatabaseError, DatabaseUnavailable
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
    PostgreSQL through psycopg, or query parameters (SQLAlchemy may read them
    differently from libpq)."""
    url = normalize_url(url)
    if not url.startswith(_SCHEME) or "?" in url:
        return None
    return "postgresql://" + url[len(_SCHEME) :]


def write_preview_json(url: str, isolation: str, out: TextIO) -> None:
    """Write `json.dumps(preview(conn).to_json(include_would_mark=True))` and a
    newline to `out`, in one transaction at `isolation` (a [database] isolation
    value), read-only. NotHere before anything is written when the SQLAlchemy path
    must run instead; a database error once writing has begun is a UdxError."""
    conninfo = conninfo_for(url)
    if conninfo is None:
        raise NotHere
    url = normalize_url(url)  # as udx.db.engine.Database shows it in errors
    import psycopg

    try:
        conn = psycopg.connect(conninfo, connect_timeout=CONNECT_TIMEOUT_SECS)
    except psycopg.Error:
        raise NotHere from None
    with conn:
        try:
            conn.isolation_level = _isolation(isolation)
            conn.read_only = True
            stored = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        except psycopg.Error:
            raise NotHere from None
        if stored != [(SCHEMA_HEAD,)]:
            raise NotHere
        cur = conn.cursor()
        fields = [(name, Stream(_texts(cur, sql, url), raw=True)) for name, sql in STATEMENTS]
        write_json(out, fields, transform=ascii_only)


def _isolation(name: str) -> psycopg.IsolationLevel:
    from psycopg import IsolationLevel

    return IsolationLevel[name.upper()]


def _texts(cur: psycopg.Cursor[Any], sql: str, url: str) -> Iterator[str]:
    import psycopg

    # Chunks need libpq 17 (psycopg's binary wheel ships a newer one); an older
    # libpq gets single-row mode: slower, the same bytes.
    size = ROWS_PER_CHUNK if psycopg.capabilities.has_stream_chunked() else 1
    try:
        for row in cur.stream(sql, size=size):
            yield row[0]
    except psycopg.OperationalError as err:
        raise DatabaseUnavailable(
            f"cannot reach the database {mask_secrets(url, url)}: {_line(err, url)}"
        ) from err
    except psycopg.Error as err:
        raise DatabaseError(f"changeset failed: {_line(err, url)}", err.sqlstate) from err


def _line(err: BaseException, url: str) -> str:
    lines = str(err).strip().splitlines()
    return mask_secrets(lines[0] if lines else type(err).__name__, url)
