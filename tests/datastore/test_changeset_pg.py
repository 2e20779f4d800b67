"""`udx changeset --json` piped on PostgreSQL through psycopg alone
(udx.datastore.changeset_pg): the same bytes as the SQLAlchemy path, the same
SQL (generated, and current), and a clean way back to that path for everything
it does not handle."""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from udx.datastore import changeset, changeset_pg, changeset_pg_sql
from udx.db.engine import Database

from .test_changeset import seed_every_state


def _lean(db: Database, isolation: str = "serializable") -> str:
    out = io.StringIO()
    changeset_pg.write_preview_json(db.url, isolation, out)
    return out.getvalue()


def _sqlalchemy_path(db: Database) -> str:
    with db.connect() as conn:
        return changeset.preview_json(conn) + "\n"


def test_the_generated_sql_is_current() -> None:
    assert Path(changeset_pg_sql.__file__).read_text() == changeset.preview_json_sql_module()
    assert [name for name, _ in changeset_pg_sql.STATEMENTS] == [
        "request_required",
        "create_required",
        "delete_required",
        "would_mark_for_deletion",
    ]


@pytest.mark.parametrize("isolation", ["serializable", "repeatable_read", "read_committed"])
def test_the_same_bytes_as_the_sqlalchemy_path(pg_only_db: Database, isolation: str) -> None:
    seed_every_state(pg_only_db, 3)
    lean = _lean(pg_only_db, isolation)
    assert lean == _sqlalchemy_path(pg_only_db)
    data = json.loads(lean)
    assert all(data[k] for k in data), {k: len(v) for k, v in data.items()}
    assert lean.isascii() and "\x7f" not in lean  # the odd pantry_ip texts, escaped


def test_an_empty_database(pg_only_db: Database) -> None:
    assert _lean(pg_only_db) == _sqlalchemy_path(pg_only_db) == (
        '{"request_required": [], "create_required": [], "delete_required": [], '
        '"would_mark_for_deletion": []}\n'
    )


def test_many_rows_come_in_chunks_with_the_same_bytes(
    pg_only_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changeset_pg, "ROWS_PER_CHUNK", 7)
    seed_every_state(pg_only_db, 12)
    assert _lean(pg_only_db) == _sqlalchemy_path(pg_only_db)


def test_a_libpq_without_chunked_rows_streams_row_by_row(
    pg_only_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(psycopg.capabilities, "has_stream_chunked", lambda check=False: False)
    seed_every_state(pg_only_db, 2)
    assert _lean(pg_only_db) == _sqlalchemy_path(pg_only_db)


def test_urls_it_leaves_to_sqlalchemy(tmp_path: Path) -> None:
    assert changeset_pg.conninfo_for(f"sqlite:///{tmp_path}/a.db") is None
    assert changeset_pg.conninfo_for("postgresql+psycopg://u@h/d?sslmode=require") is None
    assert changeset_pg.conninfo_for("cockroachdb://u@h:26257/d") is None
    assert changeset_pg.conninfo_for(" postgres://u:p@h:5/d") == "postgresql://u:p@h:5/d"
    out = io.StringIO()
    with pytest.raises(changeset_pg.NotHere):
        changeset_pg.write_preview_json(f"sqlite:///{tmp_path}/a.db", "serializable", out)
    assert out.getvalue() == ""


def test_a_schema_that_is_not_current_goes_to_sqlalchemy_untouched(pg_only_db: Database) -> None:
    with pg_only_db.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    out = io.StringIO()
    with pytest.raises(changeset_pg.NotHere):
        changeset_pg.write_preview_json(pg_only_db.url, "serializable", out)
    assert out.getvalue() == ""


@pytest.mark.parametrize("how", ["refused", "no such database"])
def test_an_unreachable_database_is_the_same_error_as_on_the_other_path(
    pg_only_db: Database, how: str
) -> None:
    from udx.db import migrate
    from udx.db.engine import open_database
    from udx.domain.errors import DatabaseUnavailable

    url = (
        pg_only_db.url.replace(f":{pg_only_db.engine.url.port}/", ":1/")
        if how == "refused"
        else pg_only_db.url.rpartition("/")[0] + "/no_such_database"
    )
    out = io.StringIO()
    with pytest.raises(DatabaseUnavailable) as lean:
        changeset_pg.write_preview_json(url, "serializable", out)
    assert out.getvalue() == ""
    other = open_database(url)
    try:
        with pytest.raises(DatabaseUnavailable) as theirs:
            migrate.require_current(other)
    finally:
        other.dispose()
    assert str(lean.value) == str(theirs.value)
    assert str(lean.value).startswith("cannot reach the database postgresql+psycopg://")


def test_urls_libpq_and_sqlalchemy_would_read_differently() -> None:
    base = "postgresql+psycopg://u:p%40ss@127.0.0.1:5432/udx"
    assert changeset_pg.conninfo_for(base) == "postgresql://u:p%40ss@127.0.0.1:5432/udx"
    assert changeset_pg.conninfo_for("postgresql://u@%2Fvar%2Frun%2Fpostgresql/udx") is None
    assert changeset_pg.conninfo_for("postgresql://u@h/udx%2Dprod") is None
    assert changeset_pg.conninfo_for("postgresql://u@h1:5432,h2:5432/udx") is None
    assert changeset_pg.conninfo_for("postgresql://u@h:99999/udx") is None  # BadInput there
    assert changeset_pg.conninfo_for("postgresql://u@[fd00::1]:5432/udx") == (
        "postgresql://u@[fd00::1]:5432/udx"
    )


def test_a_reader_that_goes_away_leaves_no_connection_and_no_noise(
    pg_only_db: Database, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changeset_pg, "ROWS_PER_CHUNK", 2)  # the statement is mid-flight
    seed_every_state(pg_only_db, 30)

    class ClosedPipe(io.StringIO):
        writes = 0

        def write(self, s: str) -> int:
            self.writes += 1
            if self.writes == 3:  # inside the first list
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(s)

    def sessions() -> int:
        with pg_only_db.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            )

    pg_only_db.dispose()
    before = sessions()
    with pytest.raises(BrokenPipeError):
        changeset_pg.write_preview_json(pg_only_db.url, "serializable", ClosedPipe())
    gc.collect()
    assert capfd.readouterr().err == ""  # no "error ignored in rollback" line
    assert sessions() == before


def test_a_connection_lost_mid_stream_is_one_clear_error(pg_only_db: Database) -> None:
    from udx.domain.errors import DatabaseUnavailable

    seed_every_state(pg_only_db, 2)

    class KillOnFirstWrite(io.StringIO):
        """Terminates udx's backend when the first piece is written: the first
        statement then runs on a dead connection."""

        killed = False

        def write(self, s: str) -> int:
            if not self.killed:
                self.killed = True
                with pg_only_db.connect() as conn:
                    conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    )
            return super().write(s)

    out = KillOnFirstWrite()
    with pytest.raises(DatabaseUnavailable, match=r"^cannot reach the database postgresql"):
        changeset_pg.write_preview_json(pg_only_db.url, "serializable", out)
    assert out.killed


def test_the_transaction_is_read_only(pg_only_db: Database, monkeypatch) -> None:
    """A statement that writes is refused: the path can never change the database."""
    monkeypatch.setattr(
        changeset_pg,
        "STATEMENTS",
        (("request_required", "UPDATE user_data_export SET generation = 1 RETURNING ''"),),
    )
    from udx.domain.errors import DatabaseError

    with pytest.raises(DatabaseError, match="read-only transaction") as err:
        changeset_pg.write_preview_json(pg_only_db.url, "serializable", io.StringIO())
    assert err.value.sqlstate == psycopg.errors.ReadOnlySqlTransaction.sqlstate


def _run_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`udx changeset --json`, piped, reporting on stderr whether SQLAlchemy was imported."""
    code = (
        "import sys\n"
        "from udx.cli.main import run\n"
        "try:\n"
        "    run()\n"
        "finally:\n"
        "    print('sqlalchemy imported:', 'sqlalchemy' in sys.modules, file=sys.stderr)\n"
    )
    env = dict(os.environ, UDX_DATABASE_URL=url, NO_COLOR="1")
    env.pop("UDX_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_the_command_runs_without_sqlalchemy(pg_only_db: Database) -> None:
    seed_every_state(pg_only_db, 1)
    r = _run_cli(pg_only_db.url, "changeset", "--json")
    assert r.returncode == 0, r.stderr
    assert r.stdout == _sqlalchemy_path(pg_only_db)
    assert "sqlalchemy imported: False" in r.stderr


def test_the_command_falls_back_and_says_what_is_wrong(pg_only_db: Database) -> None:
    with pg_only_db.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    r = _run_cli(pg_only_db.url, "changeset", "--json")
    assert r.returncode == 3, r.stderr
    assert r.stdout == ""
    assert "run `udx db upgrade`" in r.stderr and "sqlalchemy imported: True" in r.stderr
    assert "Traceback" not in r.stderr
