"""CockroachDB (issue 7, "Distributed engine"), as far as it can be checked here.

CockroachDB itself cannot run on this machine, so these tests check what can be
checked without a server, through the maintained dialect (sqlalchemy-cockroachdb):
- a `cockroachdb://` URL makes a SERIALIZABLE engine on psycopg 3;
- the migrations, run by Alembic in offline mode for the cockroachdb dialect,
  give the intended DDL: native UUID and TIMESTAMPTZ columns, the partial
  unique index with its WHERE clause;
- every statement udx issues during real passes (on PostgreSQL: requests,
  create and delete sagas, marking, the changeset in both forms, the saga log)
  compiles for the cockroachdb dialect exactly as it does for PostgreSQL's, and
  uses nothing CockroachDB lacks.
What is NOT verified: running against a CockroachDB server (its planner, its
transaction retries in practice, its handling of DDL inside one transaction).
"""

from __future__ import annotations

import importlib.util
import io
import re
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.ddl import CreateIndex, CreateTable

from udx import seed
from udx.config import Settings
from udx.datastore import changeset as changeset_sql
from udx.datastore import pantries as pantry_sql
from udx.db import migrate
from udx.db.engine import Database, open_database
from udx.db.schema import metadata
from udx.pantry.sim import start_simulated_pantries
from udx.runtime import build_runtime

CRDB_URL = "cockroachdb://root@127.0.0.1:26257/udx?sslmode=disable"

# Things CockroachDB does not have (or udx must not rely on there).
UNSUPPORTED = [
    r"\bpg_advisory",
    r"\bLISTEN\b",
    r"\bNOTIFY\b",
    r"\bctid\b",
    r"\bxmin\b",
    r"\bAUTOINCREMENT\b",
    r"\bPRAGMA\b",
    r"\bBEGIN IMMEDIATE\b",
    r"\bINSERT OR\b",
    r"\bsqlite_",
    r"\bdatetime\(",
    r"\bjulianday\(",
]


def crdb_dialect() -> Any:
    return make_url("cockroachdb+psycopg://").get_dialect()()


def pg_dialect() -> Any:
    return make_url("postgresql+psycopg://").get_dialect()()


def test_cockroachdb_url_makes_a_serializable_psycopg_engine() -> None:
    db = open_database(CRDB_URL)  # does not connect
    try:
        assert db.dialect == "cockroachdb"
        assert db.engine.dialect.driver == "psycopg"
        assert db.url.startswith("cockroachdb+psycopg://")
        assert db.engine.dialect._on_connect_isolation_level == "SERIALIZABLE"
    finally:
        db.dispose()


def _offline_migration_sql() -> str:
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    buf = io.StringIO()
    ctx = MigrationContext.configure(
        dialect_name="cockroachdb+psycopg", opts={"as_sql": True, "output_buffer": buf}
    )
    assert ctx.dialect.name == "cockroachdb"
    versions = Path(migrate.__file__).parent / "migrations" / "versions"
    files = sorted(versions.glob("0*.py"))
    assert [f.stem[:4] for f in files] == [f"{i:04d}" for i in range(1, len(files) + 1)]
    with Operations.context(ctx):
        for f in files:
            spec = importlib.util.spec_from_file_location(f"crdb_{f.stem}", f)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.upgrade()
    return buf.getvalue()


def test_migrations_give_native_types_and_the_partial_unique_index() -> None:
    sql = _offline_migration_sql()
    assert "VARCHAR(36)" not in sql, "uuid columns must be native UUID on CockroachDB"
    assert re.search(r"CREATE TABLE user_data_export \(\s*id UUID NOT NULL", sql), sql[:2000]
    assert "time_created TIMESTAMP WITH TIME ZONE NOT NULL" in sql
    assert "deleting BOOLEAN DEFAULT false NOT NULL" in sql
    assert (
        "CREATE UNIQUE INDEX one_export_record_per_resource ON user_data_export "
        "(resource_id) WHERE state != 'deleted'"
    ) in sql
    for pattern in UNSUPPORTED:
        assert not re.search(pattern, sql, re.IGNORECASE), pattern


def test_schema_metadata_compiles_like_postgresql() -> None:
    crdb, pg = crdb_dialect(), pg_dialect()
    for table in metadata.sorted_tables:
        assert str(CreateTable(table).compile(dialect=crdb)) == str(
            CreateTable(table).compile(dialect=pg)
        )
        for index in table.indexes:
            assert str(CreateIndex(index).compile(dialect=crdb)) == str(
                CreateIndex(index).compile(dialect=pg)
            )
    (partial,) = [
        i
        for i in metadata.tables["user_data_export"].indexes
        if i.name == "one_export_record_per_resource"
    ]
    assert str(CreateIndex(partial).compile(dialect=crdb)).endswith("WHERE state != 'deleted'")


def _capture(db: Database) -> tuple[list[ClauseElement], list[str]]:
    statements: list[ClauseElement] = []
    driver_sql: list[str] = []

    @event.listens_for(db.engine, "before_execute")
    def _stmt(conn, clauseelement, multiparams, params, execution_options):
        if isinstance(clauseelement, ClauseElement):
            statements.append(clauseelement)
        else:
            driver_sql.append(str(clauseelement))

    return statements, driver_sql


def test_every_statement_of_real_passes_compiles_for_cockroachdb(pg: Database) -> None:
    sims = start_simulated_pantries(3)
    try:
        with pg.begin() as conn:
            for s in sims:
                pantry_sql.add(conn, s.address)
            refs = seed.seed_fleet(conn, snapshots=4, project_images=2, silo_images=1)
        statements, driver_sql = _capture(pg)
        settings = Settings()
        settings.pantry.request_timeout_secs = 2
        settings.pantry.retry_budget_secs = 2
        rt = build_runtime(pg, settings)
        try:
            assert not rt.coordinator.run_pass().failed
            # Resources deleted and a pantry expunged: marking, bypass-free deletes.
            from .conftest import expunge, soft_delete

            soft_delete(pg, refs[:2])
            expunge(pg, str(sims[0].address))
            with pg.connect() as conn:
                changeset_sql.preview(conn)
            rt.coordinator.plan()
            assert not rt.coordinator.run_pass().failed
            assert not rt.coordinator.run_pass().failed
        finally:
            rt.close()
    finally:
        for s in sims:
            s.stop()

    crdb, pg_d = crdb_dialect(), pg_dialect()
    compiled: list[str] = []
    for stmt in statements:
        crdb_sql = str(stmt.compile(dialect=crdb))
        assert crdb_sql == str(stmt.compile(dialect=pg_d))
        compiled.append(crdb_sql)
    for sql in compiled + driver_sql:
        for pattern in UNSUPPORTED:
            assert not re.search(pattern, sql, re.IGNORECASE), (pattern, sql)
    text = "\n".join(compiled)
    # The shared path was exercised: changeset, transitions, saga log, volumes.
    for needle in (
        "UPDATE user_data_export SET resource_deleted",  # marking
        "UPDATE user_data_export SET state",  # transitions
        "RETURNING",
        "INSERT INTO user_data_export",
        "INSERT INTO saga_node_event",
        "UPDATE saga SET",
        "INSERT INTO volume",
        "INSERT INTO volume_resource_usage",  # copies take usage rows
        "DELETE FROM volume_resource_usage",  # soft deletes give them back
        "UNION ALL",  # target resolution

    ):
        assert needle in text, needle
    print(f"{len(statements)} statements ({len(set(compiled))} distinct) compiled for CockroachDB")
