"""Pooled PostgreSQL connections: pinged only after sitting idle.

`pool_pre_ping` pinged before every checkout (a round trip per transaction, ~15
per export); udx pings a connection only when it has been idle for
IDLE_PING_SECS. These prove both halves: a connection the server dropped while it
sat idle is replaced without an error, and a busy connection is not pinged.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from udx.db import engine as engine_module
from udx.db.engine import Database, open_database
from udx.domain.errors import DatabaseUnavailable
from udx.testing.pgcluster import PostgresCluster


@pytest.fixture
def pg_db(pg_cluster: PostgresCluster) -> Iterator[Database]:
    name = f"idle_{uuid.uuid4().hex[:12]}"
    pg_cluster.admin(f"CREATE DATABASE {name}")
    db = open_database(pg_cluster.url(name))
    yield db
    db.dispose()
    pg_cluster.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def backend_pid(db: Database) -> int:
    return int(db.transaction(lambda c: c.execute(text("SELECT pg_backend_pid()")).scalar_one()))


def test_an_idle_connection_the_server_dropped_is_replaced(
    pg_cluster: PostgresCluster, pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = backend_pid(pg_db)
    pg_cluster.admin(f"SELECT pg_terminate_backend({pid})")
    monkeypatch.setattr(engine_module, "IDLE_PING_SECS", 0.0)  # every checkout counts as idle
    assert backend_pid(pg_db) != pid  # the ping failed, the pool connected afresh


def test_a_connection_used_a_moment_ago_is_not_pinged(
    pg_cluster: PostgresCluster, pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings: list[object] = []
    real_ping = pg_db.engine.dialect.do_ping
    monkeypatch.setattr(pg_db.engine.dialect, "do_ping", lambda c: pings.append(c) or real_ping(c))
    pid = backend_pid(pg_db)
    for _ in range(5):
        assert backend_pid(pg_db) == pid
    assert pings == []
    # ... so a drop while it was busy is seen by the next transaction, as exit 3
    pg_cluster.admin(f"SELECT pg_terminate_backend({pid})")
    with pytest.raises(DatabaseUnavailable):
        backend_pid(pg_db)
    assert backend_pid(pg_db) != pid  # and the pool recovers after it
    monkeypatch.setattr(engine_module, "IDLE_PING_SECS", 0.0)
    backend_pid(pg_db)
    assert len(pings) == 1
