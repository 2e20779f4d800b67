"""`udx changeset --json` prints exactly what the Python path printed, on both engines.

When stdout is not a terminal the PostgreSQL path has the database render the JSON
(`changeset.preview_json`); these tests hold it to the bytes `print_json` writes for
`preview(...).to_json(include_would_mark=True)`, and to a statement count that does
not grow with the rows.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from udx.cli.common import print_json
from udx.datastore import changeset
from udx.db.engine import Database, open_database
from udx.testing.statements import count_statements

from ..datastore.test_changeset import seed_every_state
from .helpers import Udx


def printed_by_print_json(
    db: Database, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tty: str
) -> bytes:
    """What `print_json` writes for the Python path's changeset (the reference)."""
    with db.connect() as conn:
        data = changeset.preview(conn).to_json(include_would_mark=True)
    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setenv("TTY_COMPATIBLE", tty)
        print_json(data)
    return capsys.readouterr().out.encode()


def every_engine_statement() -> Any:
    """Statements of every engine (the CLI opens its own)."""
    return count_statements(Engine)


@pytest.mark.parametrize("tty", ["0", "1"], ids=["piped", "terminal"])
def test_changeset_json_bytes_equal_the_python_path(
    udx: Udx,
    db_url: str,
    tty: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = open_database(db_url)
    try:
        seed_every_state(db, 2)
        expected = printed_by_print_json(db, capsys, monkeypatch, tty)
    finally:
        db.dispose()
    if tty == "0" and db.dialect == "postgresql":
        # Piped on PostgreSQL, no row object is built: the database wrote the text.
        def no_rows(*args: Any) -> Any:
            raise AssertionError("the Python path ran")

        monkeypatch.setattr(changeset, "preview", no_rows)
        monkeypatch.setattr(changeset, "rows_to_exports", no_rows)
    r = udx.ok("changeset", "--json", env={"TTY_COMPATIBLE": tty})
    assert r.stdout_bytes == expected
    assert r.stdout_bytes.endswith(b"}\n") and r.stdout_bytes.isascii()
    assert (b"\n  " in r.stdout_bytes) is (tty == "1")


def test_changeset_json_statement_count_does_not_grow(
    udx: Udx,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = open_database(db_url)
    counts = []
    # Piped on PostgreSQL the command runs through psycopg alone
    # (udx.datastore.changeset_pg): count what it sends there.
    sent: list[str] = []
    if db.dialect == "postgresql":
        import psycopg

        execute, stream = psycopg.Connection.execute, psycopg.Cursor.stream

        def counted_execute(self, query, *a, **k):  # type: ignore[no-untyped-def]
            sent.append(str(query))
            return execute(self, query, *a, **k)

        def counted_stream(self, query, *a, **k):  # type: ignore[no-untyped-def]
            sent.append(str(query))
            return stream(self, query, *a, **k)

        monkeypatch.setattr(psycopg.Connection, "execute", counted_execute)
        monkeypatch.setattr(psycopg.Cursor, "stream", counted_stream)
    try:
        for n in (1, 30):
            seed_every_state(db, n)
            expected = printed_by_print_json(db, capsys, monkeypatch, "0")
            sent.clear()
            with every_engine_statement() as log:
                r = udx.ok("changeset", "--json", env={"TTY_COMPATIBLE": "0"})
            assert r.stdout_bytes == expected
            statements = [*log.statements, *sent]
            queries = [s for s in statements if "user_data_export" in s]
            counts.append((len(statements), len(queries)))
            if db.dialect == "postgresql":
                assert log.count == 0 and len(sent) == 5  # the schema check, then the four
    finally:
        db.dispose()
    print(f"\n{db.dialect}: statements (all, changeset) at N=1 and N=30: {counts}")
    assert counts[0] == counts[1]
    assert counts[0][1] == 4
