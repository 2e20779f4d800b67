"""Shared fixtures: a database of each engine with the current schema.

`db` runs a test on SQLite and on a real PostgreSQL (a throwaway cluster started
once per session). Without PostgreSQL binaries the postgres half is skipped with
the reason, unless UDX_REQUIRE_POSTGRES=1 (CI), where it fails instead.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from udx.db import migrate
from udx.db.engine import Database, open_database
from udx.testing.pgcluster import PostgresCluster, PostgresUnavailable

REQUIRE_PG = os.environ.get("UDX_REQUIRE_POSTGRES", "") in ("1", "true", "yes")
TEMPLATE_DB = "udx_template"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    try:
        cluster = PostgresCluster().start()
    except PostgresUnavailable as err:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required (UDX_REQUIRE_POSTGRES=1) but: {err}")
        pytest.skip(f"PostgreSQL not available: {err}")
    cluster.admin(f"CREATE DATABASE {TEMPLATE_DB}")
    tmpl = open_database(cluster.url(TEMPLATE_DB))
    migrate.upgrade(tmpl)
    tmpl.dispose()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.sqlite3"
    db = open_database(f"sqlite:///{path}")
    migrate.upgrade(db)
    db.dispose()  # closing the last connection checkpoints the WAL into the file
    return path


def _new_pg_db(cluster: PostgresCluster) -> str:
    name = "t_" + uuid.uuid4().hex[:16]
    cluster.admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    return name


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh database at the current schema, on each engine."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "udx.sqlite3"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
    else:
        cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
        name = _new_pg_db(cluster)
        yield cluster.url(name)
        cluster.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = open_database(db_url)
    yield database
    database.dispose()


@pytest.fixture
def pg_only_db(pg_cluster: PostgresCluster) -> Iterator[Database]:
    """A fresh PostgreSQL database at the current schema, for PostgreSQL-only
    behaviour (isolation levels, SQLSTATEs): no SQLite half to skip."""
    name = _new_pg_db(pg_cluster)
    database = open_database(pg_cluster.url(name))
    yield database
    database.dispose()
    pg_cluster.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database (no schema), on each engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    else:
        cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
        name = "e_" + uuid.uuid4().hex[:16]
        cluster.admin(f"CREATE DATABASE {name}")
        yield cluster.url(name)
        cluster.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
