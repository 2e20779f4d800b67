"""Faults (issue 7): the database going away mid-pass, pantries answering 500s,
timing out, refusing connections and restarting, a corrupt volume row. Each
pass is a `udx pass` subprocess; the invariants are checked after each step."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update

from udx.datastore import exports
from udx.db import migrate
from udx.db.engine import Database, open_database
from udx.db.schema import snapshot, user_data_export, volume
from udx.domain.model import ExportState, ResourceRef
from udx.testing.invariants import check_invariants
from udx.testing.pgcluster import PostgresCluster

from .conftest import (
    assert_converged,
    finish,
    register,
    run_pass,
    seed_resources,
    soft_delete,
    start_udx,
    udx_env,
)
from .pantry_proc import PantryProcess

pytestmark = pytest.mark.slow

FAST = {"pantry_request_timeout_secs": 0.5, "pantry_retry_budget_secs": 2, "saga_lease_secs": 1}


def _records(db: Database) -> list:
    with db.connect() as conn:
        return exports.list_exports(conn)


def _on(db: Database, address: str) -> list:
    return [
        r for r in _records(db) if r.state is ExportState.LIVE and str(r.pantry_address) == address
    ]


def _assert_invariants(db: Database, pantries: PantryProcess, indexes: list[int]) -> None:
    assert check_invariants(db, pantries.attachments(indexes)) == []


# --- the database goes away ------------------------------------------------------------------


class _StoppableCluster(PostgresCluster):
    """A cluster of its own that a test can stop (as a crash) and start again."""

    def halt(self) -> None:
        r = self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
        assert r.returncode == 0, r.stderr

    def resume(self) -> None:
        log = str(self.root / "postgres.log")
        opts = self.server_options()
        r = self._run("pg_ctl", "-D", str(self.datadir), "-o", opts, "-l", log, "-w", "start")
        assert r.returncode == 0, r.stderr


@pytest.fixture
def own_cluster(pg_cluster: PostgresCluster) -> Iterator[_StoppableCluster]:
    # pg_cluster: the session's cluster proves PostgreSQL is available (or skips/fails).
    # Durable: `halt` is a crash, and with synchronous_commit=off PostgreSQL may
    # lose commits it already acknowledged (a logged pantry pick, say), which no
    # real deployment does and no saga can be expected to survive.
    cluster = _StoppableCluster(max_connections=100, durable=True)
    cluster.start()
    yield cluster
    cluster.stop()


def test_database_goes_away_mid_pass(own_cluster: _StoppableCluster, pantries) -> None:
    own_cluster.admin("CREATE DATABASE udx")
    url = own_cluster.url("udx")
    db = open_database(url)
    migrate.upgrade(db)
    register(db, pantries.addresses)
    live = seed_resources(db, snapshots=60)
    db.dispose()
    for i in range(3):
        pantries.call(i, "set_latency", 0.1)
    env = udx_env(url, **FAST)

    proc = start_udx(["pass", "--json", "--concurrency", "8"], env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with db.connect() as conn:
            n = len(conn.execute(select(user_data_export.c.id)).all())
        if n >= 60 and pantries.volumes_over_http(0):
            break  # records requested, sagas attaching
        time.sleep(0.05)
    db.dispose()
    own_cluster.halt()
    t0 = time.monotonic()
    r = finish(proc, timeout=120)
    print(f"pass gave up {time.monotonic() - t0:.1f}s after the database went away")
    assert r.code == 3, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr
    assert lines[-1].startswith("udx: error: cannot reach the database"), lines[-1]
    assert [ln for ln in lines if ln.startswith("udx: error:")] == [lines[-1]]
    # The status still tells what the pass did before it lost the database.
    assert r.status is not None and r.status["errors"]

    # A pass against the stopped database: exit 3 at once, one line, nothing else.
    down = run_pass(env)
    assert down.code == 3 and down.stderr.count("\n") == 1, down.stderr
    assert down.stderr.startswith("udx: error: cannot reach the database")

    own_cluster.resume()
    for i in range(3):
        pantries.call(i, "set_latency", 0.0)
    time.sleep(1.2)  # the dead pass's leases (1 s) expire
    after = run_pass(env)
    assert after.code == 0, (after.status or {}).get("errors") or after.stderr[-2000:]
    db = open_database(url)
    try:
        assert_converged(db, pantries, live, [0, 1, 2])
    finally:
        db.dispose()


# --- pantries misbehave ------------------------------------------------------------------------


def test_pantries_answer_500s_time_out_refuse_and_restart(pg, pg_url, pantries) -> None:
    register(pg, pantries.addresses)
    live = seed_resources(pg, snapshots=20, project_images=10)
    _a0, a1, a2 = pantries.addresses
    env = udx_env(pg_url, **FAST)

    # Pantry 0 answers 500 to everything, pantry 1 is slower than the request
    # timeout, pantry 2 fails its first three attaches (retried within the budget).
    pantries.call(0, "fail_next", 1_000_000, 500)
    pantries.call(1, "set_latency", 1.0)
    pantries.call(2, "fail_next", 3, 500, "POST")
    r = run_pass(env)
    assert r.code == 0, (r.status or {}).get("errors") or r.stderr[-2000:]
    assert r.outcomes() == {"create:succeeded": 30}
    assert len(_on(pg, a2)) == 30  # only pantry 2 answered
    pantries.reset_faults()
    assert_converged(pg, pantries, live, [0, 1, 2])

    # Every pantry answers 500: no pantry to pick, every create saga unwinds, exit 1,
    # and nothing is left behind (records back to requested, no volume copy).
    more = seed_resources(pg, snapshots=5)
    for i in range(3):
        pantries.call(i, "fail_next", 1_000_000, 500)
    r = run_pass(env)
    assert r.code == 1
    assert r.outcomes() == {"create:unwound": 5}
    assert r.status is not None and len(r.status["errors"]) == 5
    pantries.reset_faults()
    _assert_invariants(pg, pantries, [0, 1, 2])
    requested = [x for x in _records(pg) if x.state is ExportState.REQUESTED]
    assert sorted(x.resource_id for x in requested) == sorted(m.resource_id for m in more)
    r = run_pass(env)
    assert r.code == 0 and r.outcomes() == {"create:succeeded": 5}
    live += more
    assert_converged(pg, pantries, live, [0, 1, 2])

    # Pantry 2 restarts and forgets its attachments: the next pass marks its
    # records lost and deletes them (detach of a forgotten volume is fine), the
    # pass after recreates them.
    n2 = len(_on(pg, a2))
    pantries.call(2, "restart")
    r = run_pass(env)
    assert r.code == 0, (r.status or {}).get("errors")
    assert r.status is not None and r.status["records_marked_lost"] == n2
    assert r.outcomes() == {"delete:succeeded": n2}
    r = run_pass(env)
    assert r.code == 0 and r.outcomes() == {"create:succeeded": n2}
    assert_converged(pg, pantries, live, [0, 1, 2])

    # Pantry 1 refuses connections while resources on it are deleted: its detach
    # fails within the budget, the delete sagas unwind (record back to Live, still
    # marked), exit 1; once it listens again the next pass finishes the deletes.
    on1 = _on(pg, a1)
    assert on1, "no export landed on pantry 1"
    gone = [ResourceRef(x.resource_type, x.resource_id) for x in on1[:5]]
    soft_delete(pg, gone)
    pantries.call(1, "refuse_connections", True)
    r = run_pass(env)
    assert r.code == 1
    assert r.outcomes() == {"delete:unwound": len(gone)}
    gone_ids = {g.resource_id for g in gone}
    stuck_live = [
        x for x in _records(pg) if x.resource_id in gone_ids and x.state is not ExportState.DELETED
    ]
    assert len(stuck_live) == len(gone)
    assert all(x.state is ExportState.LIVE and x.resource_deleted for x in stuck_live)
    assert r.status is not None and r.status["records_marked_lost"] == 0  # not answering != lost
    pantries.call(1, "refuse_connections", False)
    _assert_invariants(pg, pantries, [0, 1, 2])
    r = run_pass(env)
    assert r.code == 0 and r.outcomes() == {"delete:succeeded": len(gone)}
    live = [x for x in live if x not in gone]
    assert_converged(pg, pantries, live, [0, 1, 2])


# --- a corrupt volume row ----------------------------------------------------------------------


def test_corrupt_volume_row_fails_only_its_export(pg, pg_url, pantries) -> None:
    register(pg, pantries.addresses)
    live = seed_resources(pg, snapshots=10, project_images=2)
    bad = live[3]
    with pg.begin() as conn:
        vid = conn.execute(
            select(snapshot.c.volume_id).where(snapshot.c.id == bad.resource_id)
        ).scalar_one()
        original = conn.execute(select(volume.c.data).where(volume.c.id == vid)).scalar_one()
        conn.execute(update(volume).where(volume.c.id == vid).values(data="{not json"))
    env = udx_env(pg_url, **FAST)
    r = run_pass(env)
    assert r.code == 1
    assert r.status is not None
    outcomes = {i["resource_id"]: i["outcome"] for i in r.status["create_invoked_ok"]}
    assert outcomes.pop(str(bad.resource_id)) == "unwound"
    assert set(outcomes.values()) == {"succeeded"} and len(outcomes) == 11
    (err,) = r.status["errors"]
    assert str(vid) in err or "JSON" in err or "json" in err, err
    assert "Traceback" not in r.stderr
    problems = check_invariants(pg, pantries.attachments())
    # The only problem: the corrupt row itself (its usage rows, which the checker
    # can no longer attribute, are not reported a second time).
    assert len(problems) == 1 and problems[0].startswith(f"volume {vid}: unreadable data"), problems
    rec = [x for x in _records(pg) if x.resource_id == bad.resource_id]
    assert [x.state for x in rec] == [ExportState.REQUESTED]
    # Repaired by hand, the next pass creates it.
    with pg.begin() as conn:
        conn.execute(update(volume).where(volume.c.id == vid).values(data=original))
    r = run_pass(env)
    assert r.code == 0 and r.outcomes() == {"create:succeeded": 1}
    assert_converged(pg, pantries, live, [0, 1, 2])
