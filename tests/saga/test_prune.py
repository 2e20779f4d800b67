"""`udx saga prune` (issue 13): done sagas and their events go, in bounded batches;
running, unwinding, stuck and abandoned ones stay unless asked (running and
unwinding always stay). Both engines, real sagas aged by moving their times back."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from tests.cli.helpers import Udx, assert_one_line_error
from udx.datastore import retention, saga_log
from udx.db.engine import Database
from udx.db.schema import saga, saga_node_event
from udx.db.types import utcnow
from udx.saga import Node, SagaDefinition, SagaExecutor, abandon


def _fail(ctx: object) -> None:
    raise RuntimeError("refused")


def _undo_fails(ctx: object) -> None:
    raise RuntimeError("undo refused")


DEFS = [
    SagaDefinition("ok", [Node("one", lambda ctx: 1), Node("two", lambda ctx: 2)]),
    SagaDefinition("unwinds", [Node("one", lambda ctx: 1, lambda ctx: None), Node("two", _fail)]),
    SagaDefinition("sticks", [Node("one", lambda ctx: 1, _undo_fails), Node("two", _fail)]),
]


def _age(db: Database, ids: list[uuid.UUID], days: float) -> None:
    """Move the sagas' creation and every event of theirs `days` back."""
    shift = timedelta(days=days)
    with db.begin() as conn:
        for sid in ids:
            rec = saga_log.get_required(conn, sid)
            conn.execute(
                update(saga).where(saga.c.id == sid).values(time_created=rec.time_created - shift)
            )
            for ev in saga_log.events(conn, sid):
                conn.execute(
                    update(saga_node_event)
                    .where(
                        saga_node_event.c.saga_id == sid,
                        saga_node_event.c.node_id == ev.node_id,
                        saga_node_event.c.event_type == ev.event_type,
                    )
                    .values(event_time=ev.event_time - shift)
                )
            if rec.abandon_time is not None:
                moved = rec.abandon_time - shift
                conn.execute(update(saga).where(saga.c.id == sid).values(abandon_time=moved))


@pytest.fixture
def world(db: Database) -> dict[str, list[uuid.UUID]]:
    """Old sagas of every kind, and recent done ones."""
    ids: dict[str, list[uuid.UUID]] = {}
    with SagaExecutor(db, DEFS) as ex:
        ids["succeeded"] = [ex.run("ok", {}).saga_id for _ in range(5)]
        ids["unwound"] = [ex.run("unwinds", {}).saga_id for _ in range(2)]
        ids["stuck"] = [ex.run("sticks", {}).saga_id]
        ids["recent"] = [ex.run("ok", {}).saga_id for _ in range(2)]
    now = utcnow()
    for key in ("running", "abandoned"):
        ids[key] = [uuid.uuid4()]
        with db.begin() as conn:
            saga_log.insert(
                conn,
                saga_id=ids[key][0],
                name="ok",
                params_json="{}",
                sec_id=uuid.uuid4(),
                now=now,
                lease_expires=now - timedelta(seconds=1),
            )
    with db.begin() as conn:
        ids["unwinding"] = [uuid.uuid4()]
        saga_log.insert(
            conn,
            saga_id=ids["unwinding"][0],
            name="ok",
            params_json="{}",
            sec_id=uuid.uuid4(),
            now=now,
            lease_expires=now - timedelta(seconds=1),
        )
        saga_log.set_state(conn, ids["unwinding"][0], "unwinding")
    abandon(db, ids["abandoned"][0], "operator", "by hand")
    old = [i for k, v in ids.items() if k != "recent" for i in v]
    _age(db, old, 40)
    # An old saga with one recent event (recovered yesterday, say) is not old.
    ids["touched"] = [ids["succeeded"].pop()]
    with db.begin() as conn:
        conn.execute(
            update(saga_node_event)
            .where(saga_node_event.c.saga_id == ids["touched"][0])
            .where(saga_node_event.c.node_id == "two")
            .values(event_time=utcnow())
        )
    return ids


@pytest.fixture
def udx(tmp_path: Path, db_url: str) -> Udx:
    return Udx(tmp_path, db_url)


def _present(db: Database) -> set[uuid.UUID]:
    with db.connect() as conn:
        return {r[0] for r in conn.execute(select(saga.c.id))}


def _events_of(db: Database, ids: list[uuid.UUID]) -> int:
    with db.connect() as conn:
        q = select(func.count()).where(saga_node_event.c.saga_id.in_(ids))
        return int(conn.execute(q).scalar_one())


def test_prune_removes_old_done_sagas_and_their_events_only(db: Database, world) -> None:
    gone = world["succeeded"] + world["unwound"]
    cutoff = utcnow() - timedelta(days=30)
    with db.connect() as conn:
        counted = retention.count_sagas(conn, cutoff, ())
    assert counted.sagas == len(gone) == 6 and counted.events == _events_of(db, gone) > 0
    done = retention.prune_sagas(db, cutoff, (), batch=4)
    assert (done.sagas, done.events) == (counted.sagas, counted.events)
    assert done.batches == 2
    kept = _present(db)
    assert not kept & set(gone) and _events_of(db, gone) == 0
    for key in ("stuck", "abandoned", "running", "unwinding", "recent", "touched"):
        assert set(world[key]) <= kept, key
    assert retention.prune_sagas(db, cutoff, ()).sagas == 0  # idempotent


def test_prune_includes_stuck_and_abandoned_when_asked(db: Database, world) -> None:
    cutoff = utcnow() - timedelta(days=30)
    done = retention.prune_sagas(db, cutoff, ("abandoned", "stuck"))
    assert done.sagas == 8
    kept = _present(db)
    assert not kept & set(world["stuck"] + world["abandoned"])
    assert set(world["running"] + world["unwinding"]) <= kept
    with pytest.raises(Exception, match="never pruned"):
        retention.check_include(["running"])


def test_saga_prune_cli(udx: Udx, db: Database, world) -> None:
    r = udx.ok("saga", "prune", "--older-than", "30d", "--dry-run", "--json")
    dry = json.loads(r.stdout)
    assert dry["dry_run"] is True and dry["sagas"] == 6 and dry["events"] > 0
    assert len(_present(db)) == 13  # nothing removed
    r = udx.ok("saga", "prune", "--older-than", "30d")
    assert f"removed 6 sagas and {dry['events']} node events" in r.stdout
    assert len(_present(db)) == 7
    # The default age (30 days) leaves everything else alone.
    r = udx.ok("saga", "prune", "--json", "--include", "stuck")
    assert json.loads(r.stdout)["sagas"] == 1
    assert_one_line_error(udx("saga", "prune", "--older-than", "soon"), 2, "--older-than")
    assert_one_line_error(udx("saga", "prune", "--include", "running"), 2, "never pruned")
    assert len(_present(db)) == 6


def test_pass_prunes_when_asked(udx: Udx, db: Database, world) -> None:
    env = {"UDX_PANTRY_SOURCE": "static", "UDX_PANTRY_ADDRESSES": "127.0.0.1:9"}
    env["UDX_PANTRY_REQUEST_TIMEOUT_SECS"] = "0.5"
    status = json.loads(udx.ok("pass", "--json", env=env).stdout)
    assert "pruned" not in status  # the JSON shape is DESIGN.md's
    assert len(_present(db)) == 13  # not asked: nothing pruned
    r = udx("pass", "--prune-older-than", "30d", env=env)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "sagas pruned (with their events)" in r.stdout
    kept = _present(db)
    assert not kept & set(world["succeeded"] + world["unwound"])
    assert set(world["recent"] + world["touched"] + world["stuck"]) <= kept
    # From the config (here the environment) as well; a bad value is bad config.
    r = udx("pass", env={**env, "UDX_COORDINATOR_PRUNE_OLDER_THAN": "1d"})
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "sagas pruned" in r.stdout
    r = udx("pass", env={**env, "UDX_COORDINATOR_PRUNE_OLDER_THAN": "someday"})
    assert_one_line_error(r, 2, "prune_older_than")
