"""A busy, full or missing database through the real CLI (issue 14 items 7, 9, 10).

- SQLite reads never wait for another process's write lock; a write that waits
  longer than [database] busy_timeout_secs is one line naming the file, exit 3.
- A database that cannot grow (disk full) is one line, exit 3, nothing written.
- A command other than `udx db init` never creates the SQLite file or its
  directories just by looking.
"""

from __future__ import annotations

import resource
import shutil
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from udx import seed
from udx.datastore import exports
from udx.datastore import pantries as pantry_sql
from udx.db.engine import open_database
from udx.db.schema import snapshot
from udx.domain.address import PantryAddress
from udx.domain.errors import DatabaseStorageFull
from udx.domain.model import ResourceType

from ..cli.helpers import Udx, assert_one_line_error
from .conftest import UDX


@pytest.fixture
def sqlite_path(sqlite_template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "udx.sqlite3"
    shutil.copyfile(sqlite_template, path)
    db = open_database(f"sqlite:///{path}")
    with db.begin() as conn:
        refs = seed.seed_fleet(conn, snapshots=3, project_images=1)
        pantry_sql.add(conn, PantryAddress.parse("127.0.0.1:17000"))
        exports.create(conn, uuid.uuid4(), ResourceType.SNAPSHOT, refs[0].resource_id)
    db.dispose()
    return path


@pytest.fixture
def writer(sqlite_path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's open write transaction (a pass in the middle of a write)."""
    conn = sqlite3.connect(sqlite_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE pantry SET time_expunged = NULL")
    yield conn
    conn.execute("ROLLBACK")
    conn.close()


READ_COMMANDS = [
    ["export", "list"],
    ["export", "list", "--json"],
    ["changeset"],
    ["changeset", "--json"],
    ["pantry", "list", "--no-check"],
    ["pantry", "affected"],
    ["saga", "list"],
    ["db", "status"],
    ["pass", "--dry-run"],
]


def test_sqlite_reads_do_not_wait_for_a_writer(
    sqlite_path: Path, writer: sqlite3.Connection, tmp_path: Path
) -> None:
    udx = Udx(tmp_path, f"sqlite:///{sqlite_path}")
    # A long wait: a read that queued behind the writer would take 20 s per command.
    env = {"UDX_DATABASE_BUSY_TIMEOUT_SECS": "20"}
    for argv in READ_COMMANDS:
        start = time.monotonic()
        r = udx(*argv, env=env)
        took = time.monotonic() - start
        assert r.exit_code == 0, f"{argv}: exit {r.exit_code}: {r.stderr}"
        assert took < 15, f"{argv} waited {took:.1f} s for the writer"


def test_busy_sqlite_write_is_one_line_exit_3_after_the_configured_wait(
    sqlite_path: Path, writer: sqlite3.Connection, tmp_path: Path
) -> None:
    udx = Udx(tmp_path, f"sqlite:///{sqlite_path}")
    for env in ({"UDX_DATABASE_BUSY_TIMEOUT_SECS": "1"}, {}):
        if not env:  # the same through the config file
            cfg = tmp_path / "udx.toml"
            cfg.write_text("[database]\nbusy_timeout_secs = 1\n")
            env = {"UDX_CONFIG": str(cfg)}
        start = time.monotonic()
        r = udx("pantry", "add", "127.0.0.9:17000", env=env)
        took = time.monotonic() - start
        line = assert_one_line_error(r, 3, str(sqlite_path), "busy", "busy_timeout_secs")
        assert "internal error" not in line
        assert 0.9 <= took < 10, took  # waited the configured second, not 30 s or 20 retries
    with sqlite3.connect(sqlite_path) as check:  # the writer still holds it; nothing added
        assert check.execute("SELECT count(*) FROM pantry").fetchone() == (1,)


def test_sqlite_disk_full_is_one_line_exit_3_and_nothing_half_written(
    sqlite_path: Path, tmp_path: Path
) -> None:
    """A real "disk full": udx in a subprocess whose file-size limit (RLIMIT_FSIZE)
    stops the database from growing, as a full file system would."""
    url = f"sqlite:///{sqlite_path}"
    size = sqlite_path.stat().st_size
    db = open_database(url)
    with db.connect() as conn:
        before = conn.execute(select(func.count()).select_from(snapshot)).scalar_one()
    limit = size + 64 * 1024

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_DATA_HOME": str(tmp_path / "data")}
    r = subprocess.run(
        [UDX, "--db", url, "db", "seed", "--snapshots", "3000"],
        capture_output=True,
        text=True,
        env={**_base_env(), **env},
        preexec_fn=small_files,
        timeout=120,
    )
    lines = r.stderr.splitlines()
    assert r.returncode == 3, r.stderr
    assert len(lines) == 1 and lines[0].startswith("udx: error: "), r.stderr
    assert str(sqlite_path) in lines[0] and "internal error" not in lines[0], lines[0]
    with db.connect() as conn:  # the seed transaction was rolled back as a whole
        assert conn.execute(select(func.count()).select_from(snapshot)).scalar_one() == before
    db.dispose()


def test_sqlite_full_database_is_storage_full_not_a_statement_error(sqlite_path: Path) -> None:
    """SQLite's own SQLITE_FULL ("database or disk is full"), made honestly with
    max_page_count: the database may not grow past its current size."""
    db = open_database(f"sqlite:///{sqlite_path}")

    @event.listens_for(db.engine, "connect")
    def _cap(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    db.engine.dispose()  # reconnect through the listener
    with pytest.raises(DatabaseStorageFull) as err:
        db.transaction(
            lambda c: seed.seed_fleet(c, snapshots=2000, project_images=0, silo_images=0),
            name="seed",
        )
    assert err.value.exit_code == 3
    assert "database or disk is full" in str(err.value) and str(sqlite_path) in str(err.value)
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(snapshot)).scalar_one() == 3
    db.dispose()


# --- no side effects from reading (item 10) ---------------------------------------------------

LOOKING_COMMANDS = [
    (["changeset"], 3),
    (["export", "list"], 3),
    (["export", "show", str(uuid.uuid4())], 3),
    (["pantry", "list"], 3),
    (["pantry", "affected"], 3),
    (["pantry", "add", "127.0.0.1:17000"], 3),
    (["saga", "list"], 3),
    (["pass"], 3),
    (["pass", "--dry-run"], 3),
    (["db", "upgrade"], 3),
    (["db", "seed"], 3),
]


def test_commands_other_than_db_init_do_not_create_the_sqlite_file(tmp_path: Path) -> None:
    target = tmp_path / "not" / "yet" / "udx.sqlite3"
    udx = Udx(tmp_path, f"sqlite:///{target}")
    for argv, code in LOOKING_COMMANDS:
        r = udx(*argv)
        assert_one_line_error(r, code, str(target), "udx db init")
        assert not (tmp_path / "not").exists(), f"{argv} created {tmp_path / 'not'}"
    r = udx.ok("db", "status")
    assert "none" in r.stdout
    assert udx.json("db", "status")["current"] is None
    assert not (tmp_path / "not").exists()
    # The default database (no --db) is not created either.
    default = Udx(tmp_path)
    assert_one_line_error(default("export", "list"), 3, "udx db init")
    assert not (tmp_path / "data").exists()
    # `udx db init` is the one command that creates it.
    udx.ok("db", "init")
    assert target.exists()
    udx.ok("export", "list")


def test_unknown_udx_environment_variable_is_refused_by_the_cli(tmp_path: Path) -> None:
    udx = Udx(tmp_path)
    r = udx("export", "list", env={"UDX_PANTRY_RETRY_BUDGET": "5"})
    assert_one_line_error(r, 2, "UDX_PANTRY_RETRY_BUDGET", "UDX_PANTRY_RETRY_BUDGET_SECS")
    r = udx("db", "status", env={"UDX_SAGA_LEASE_SECS": "inf"})
    assert_one_line_error(r, 2, "lease_secs", "seconds")


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("UDX_")}
