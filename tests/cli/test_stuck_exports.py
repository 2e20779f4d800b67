"""Stuck and abandoned export sagas, by the operator's commands (issue 12):
`udx saga abandon` safety, `udx export release`, `udx saga retry-undo`, through
the real CLI on both engines, with simulated pantries. A killed pass is a real
`udx pass` subprocess sent SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from udx import seed
from udx.datastore import exports, saga_log, volumes
from udx.db.engine import Database
from udx.db.schema import saga_node_event
from udx.db.types import utcnow
from udx.domain.model import ExportState, UserDataExport
from udx.pantry.inventory import DbInventory
from udx.pantry.sim import SimulatedPantry
from udx.saga import ActionContext, Node, SagaDefinition, SagaExecutor
from udx.sagas import CREATE_SAGA
from udx.sagas.deps import ExportSagaDeps
from udx.testing.invariants import check_invariants

from .helpers import Udx, assert_one_line_error
from .two_pantries import SNAP


def attachments(sims: list[SimulatedPantry]) -> dict[str, list[str]]:
    return {str(s.address): list(s.attachments) for s in sims}


def record(db: Database, export_id: uuid.UUID) -> UserDataExport:
    with db.connect() as conn:
        return exports.get_required(conn, export_id)


def requested_record(db: Database) -> uuid.UUID:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        return exports.create(conn, uuid.uuid4(), SNAP, sid).id


def stuck_create(db: Database, sims: list[SimulatedPantry], export_id: uuid.UUID) -> uuid.UUID:
    """A real export-create saga that attached, then failed at go_live while its
    pantry stopped answering: the detach undo fails and the saga is stuck, its
    record locked in Assigning, the copy attached."""

    def go_live_fails(ctx: ActionContext) -> None:
        for sim in sims:
            sim.refuse_connections()
        raise RuntimeError("injected: the database refused go_live")

    nodes = [n for n in CREATE_SAGA.nodes if n.name != "go_live"]
    broken = SagaDefinition(
        CREATE_SAGA.name,
        [*nodes, Node("go_live", go_live_fails, in_log_transaction=True)],
        validate_params=CREATE_SAGA.validate_params,
    )
    deps = ExportSagaDeps(DbInventory(db), request_timeout_secs=0.5, retry_budget_secs=0.5)
    with SagaExecutor(db, [broken], deps=deps) as ex:
        result = ex.run(CREATE_SAGA.name, {"export_id": str(export_id)})
    assert result.outcome == "stuck", result
    for sim in sims:
        sim.refuse_connections(False)
    return result.saga_id


def copy_volume_of(db: Database, saga_id: uuid.UUID) -> uuid.UUID:
    with db.connect() as conn:
        out = {e.node_id: e for e in saga_log.events(conn, saga_id)}["generate_ids"]
    return uuid.UUID(out.decoded()["volume_id"])


def volume_deleted(db: Database, volume_id: uuid.UUID) -> bool:
    with db.connect() as conn:
        row = volumes.get(conn, volume_id)
    return row is not None and row.time_deleted is not None


# --- release of a stuck create saga -----------------------------------------------------------


def test_release_a_stuck_create_saga_then_the_next_pass_makes_it_live(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    eid = requested_record(db)
    sid = stuck_create(db, sims, eid)
    rec = record(db, eid)
    assert rec.state is ExportState.ASSIGNING and rec.operating_saga_id is not None
    vid = copy_volume_of(db, sid)
    assert sum(str(vid) in s.attachments for s in sims) == 1
    # The dry run says the record is held, and how to get it out.
    # (The orphan sweep may also plan to detach the stuck saga's copy.)
    plan = cli.json("pass", "--dry-run")["steps"]
    held = [p for p in plan if p["step"] == "0-held"]
    assert [p["export_id"] for p in held] == [str(eid)]
    assert held[0]["detail"] == f"saga {sid}: udx export diagnose {eid}"
    assert {p["step"] for p in plan} <= {"0-held", "1-orphans"}
    out = cli.ok("changeset").stdout
    assert "held by stuck or abandoned sagas (1): no pass moves these" in out
    assert f"udx export diagnose {eid}" in out
    # Shown by the saga id, not the lock id.
    assert cli.json("saga", "list", "--export", str(eid))[0]["id"] == str(sid)

    # A wrong saga id: refused, nothing changed.
    other = cli.json("saga", "list")  # only one saga so far
    assert [s["id"] for s in other] == [str(sid)]
    wrong = str(uuid.uuid4())
    assert_one_line_error(
        cli("export", "release", str(eid), "--saga", wrong, "--yes"), 2, "no saga with id"
    )
    assert record(db, eid) == rec

    # Without --yes and no terminal: refused before anything.
    assert_one_line_error(cli("export", "release", str(eid), "--saga", str(sid)), 2, "--yes")
    assert record(db, eid) == rec

    r = cli.ok("export", "release", str(eid), "--saga", str(sid), "--yes")
    assert f"detach volume {vid}" in r.stdout and "give back the volume copy" in r.stdout
    assert f"export {eid} released: now requested" in r.stdout
    assert f"volume {vid} on pantry" in r.stdout and ": detached" in r.stdout
    after = record(db, eid)
    assert (after.state, after.operating_saga_id) == (ExportState.REQUESTED, None)
    assert not any(str(vid) in s.attachments for s in sims)
    assert volume_deleted(db, vid)
    # The usage is exact and nothing is orphaned.
    assert check_invariants(db, attachments(sims)) == []

    # A second release: nothing to release (the record is no longer locked).
    assert_one_line_error(
        cli("export", "release", str(eid), "--saga", str(sid), "--yes"), 1, "not locked"
    )

    status = cli.json("pass")
    assert [i["outcome"] for i in status["create_invoked_ok"]] == ["succeeded"]
    live = record(db, eid)
    assert live.state is ExportState.LIVE and live.generation == rec.generation + 1
    assert check_invariants(db, attachments(sims)) == []


def test_release_json_and_a_lock_that_is_not_the_sagas(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    first = requested_record(db)
    second = requested_record(db)
    s1 = stuck_create(db, sims, first)
    s2 = stuck_create(db, sims, second)
    line = assert_one_line_error(
        cli("export", "release", str(first), "--saga", str(s2), "--yes"), 1, str(s1)
    )
    assert "not by saga" in line and str(s2) in line
    assert record(db, first).state is ExportState.ASSIGNING
    out = cli.json("export", "release", str(first), "--saga", str(s1), "--yes")
    assert out["saga_id"] == str(s1) and out["record"]["state"] == "requested"
    assert any("detached" in line for line in out["cleaned_up"])
    assert record(db, second).state is ExportState.ASSIGNING


def test_release_when_the_pantry_still_fails_changes_nothing(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    eid = requested_record(db)
    sid = stuck_create(db, sims, eid)
    vid = copy_volume_of(db, sid)
    before = record(db, eid)
    for sim in sims:
        sim.fail_next(50, 500)
    line = assert_one_line_error(
        cli("export", "release", str(eid), "--saga", str(sid), "--yes"), 1, "nothing was released"
    )
    assert str(vid) in line
    assert record(db, eid) == before and not volume_deleted(db, vid)
    for sim in sims:
        sim.fail_next(0)
    cli.ok("export", "release", str(eid), "--saga", str(sid), "--yes")
    assert record(db, eid).state is ExportState.REQUESTED
    assert check_invariants(db, attachments(sims)) == []


# --- retry-undo -------------------------------------------------------------------------------


def test_retry_undo_after_fixing_the_pantry(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    eid = requested_record(db)
    sid = stuck_create(db, sims, eid)
    vid = copy_volume_of(db, sid)
    # Still broken: stuck again, exit 1, the record still locked.
    for sim in sims:
        sim.refuse_connections()
    r = cli("saga", "retry-undo", str(sid))
    assert r.exit_code == 1, r.stdout + r.stderr
    assert "earlier undo error: PantryError" in r.stdout and f"saga {sid}: stuck" in r.stdout
    assert record(db, eid).state is ExportState.ASSIGNING
    assert cli.json("saga", "show", str(sid))["outcome"] == "stuck"

    for sim in sims:
        sim.refuse_connections(False)
    out = cli.json("saga", "retry-undo", str(sid))
    assert out["outcome"] == "unwound" and "PantryError" in out["previous_undo_error"]
    shown = cli.json("saga", "show", str(sid))
    assert (shown["saga_state"], shown["outcome"]) == ("done", "unwound")
    assert record(db, eid).state is ExportState.REQUESTED
    assert not any(str(vid) in s.attachments for s in sims) and volume_deleted(db, vid)
    assert check_invariants(db, attachments(sims)) == []

    # Not stuck any more: nothing to retry.
    assert_one_line_error(cli("saga", "retry-undo", str(sid)), 1, "not stuck")
    assert_one_line_error(cli("saga", "retry-undo", str(uuid.uuid4())), 2, "no saga with id")
    cli.ok("pass")
    assert record(db, eid).state is ExportState.LIVE
    assert check_invariants(db, attachments(sims)) == []


# --- a killed pass: abandon (safely) and release ------------------------------------------


def _udx_subprocess(home: Path, db_url: str, args: list[str], **env: str) -> subprocess.Popen[str]:
    import os

    script = Path(sys.executable).parent / "udx"
    full = {k: v for k, v in os.environ.items() if not k.startswith("UDX_")}
    full.update(
        UDX_DATABASE_URL=db_url,
        UDX_CONFIG=os.devnull,
        XDG_DATA_HOME=str(home / "data"),
        XDG_CONFIG_HOME=str(home / "config"),
        **env,
    )
    return subprocess.Popen(
        [str(script), *args], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _in_attach(db: Database) -> list[uuid.UUID]:
    """Sagas whose attach started and did not finish."""
    with db.connect() as conn:
        rows = conn.execute(
            select(saga_node_event.c.saga_id, saga_node_event.c.event_type).where(
                saga_node_event.c.node_id == "attach"
            )
        ).all()
    started = {r[0] for r in rows if r[1] == "started"}
    done = {r[0] for r in rows if r[1] == "succeeded"}
    return sorted(started - done)


def _wait_lease_expired(db: Database, saga_id: uuid.UUID, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.connect() as conn:
            rec = saga_log.get_required(conn, saga_id)
        if rec.lease_expires is None or rec.lease_expires < utcnow():
            return
        time.sleep(0.1)
    pytest.fail(f"the lease of saga {saga_id} never expired")


def test_killed_pass_abandon_release_then_the_next_pass_converges(
    cli: Udx, db: Database, db_url: str, sims: list[SimulatedPantry], tmp_path: Path
) -> None:
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=4)
    for sim in sims:
        sim.set_latency(0.5)  # keeps sagas inside their attach call
    lease = "4"
    proc = _udx_subprocess(
        tmp_path, db_url, ["pass", "--json", "--concurrency", "4"], UDX_SAGA_LEASE_SECS=lease
    )
    deadline = time.monotonic() + 60
    while not _in_attach(db):
        assert proc.poll() is None, f"the pass ended before it could be killed: {proc.stderr}"
        assert time.monotonic() < deadline, "no saga ever reached attach"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    sid = _in_attach(db)[0]
    (listed,) = cli.json("saga", "list", "--name", "export-create", "--all", "--since", "1h")[:1]
    assert listed["export_id"] is not None
    eid = uuid.UUID(
        next(s["export_id"] for s in cli.json("saga", "list", "--all") if s["id"] == str(sid))
    )
    rec = record(db, eid)
    assert rec.state is ExportState.ASSIGNING

    # While the dead pass's lease is still alive, both refuse.
    with db.connect() as conn:
        alive = saga_log.get_required(conn, sid).lease_expires > utcnow()
    if alive:  # (a slow machine may have let it run out already)
        args = ("--reason", "operator", "--comment", "killed pass", "--yes")
        line = assert_one_line_error(cli("saga", "abandon", str(sid), *args), 1, "--force")
        assert "lease" in line
        line = assert_one_line_error(
            cli("export", "release", str(eid), "--saga", str(sid), "--yes"), 1, "live lease"
        )
        assert record(db, eid) == rec
    _wait_lease_expired(db, sid)
    # The owner died but the saga is still running: release wants it abandoned first.
    line = assert_one_line_error(
        cli("export", "release", str(eid), "--saga", str(sid), "--yes"), 1, "abandon"
    )
    r = cli.ok("saga", "abandon", str(sid), "--reason", "operator", "--comment", "killed", "--yes")
    assert f"udx export release {eid} --saga {sid}" in r.stdout
    assert "stays locked" in r.stdout

    for sim in sims:
        sim.set_latency(0.0)
    # The pass history shows the killed pass as unfinished.
    history = cli.json("pass", "history")
    assert history[0]["finished"] is None and history[0]["result"] == "did not finish"
    r = cli("status")  # the killed pass is the last pass: needs attention
    assert r.exit_code == 1 and "did not finish  ->  udx pass history" in r.stdout
    assert f"is held by abandoned saga {sid}" in r.stdout

    r = cli.ok("export", "release", str(eid), "--saga", str(sid), "--yes")
    assert "now requested" in r.stdout
    assert record(db, eid).state is ExportState.REQUESTED

    status = cli.json("pass")  # adopts the other sagas of the dead pass, recreates eid
    assert status["errors"] == [], status["errors"]
    with db.connect() as conn:
        records = exports.list_exports(conn)
    assert {r.state for r in records} == {ExportState.LIVE}, records
    assert len(records) == 4
    assert check_invariants(db, attachments(sims)) == []
    assert sum(len(v) for v in attachments(sims).values()) == 4


def test_abandon_force_while_the_lease_is_alive(cli: Udx, db: Database) -> None:
    sid = uuid.uuid4()
    now = utcnow()
    with db.begin() as conn:
        saga_log.insert(
            conn,
            saga_id=sid,
            name="export-create",
            params_json=json.dumps({"export_id": str(uuid.uuid4())}),
            sec_id=uuid.uuid4(),
            now=now,
            lease_expires=now + timedelta(minutes=5),
        )
    args = ("--reason", "operator", "--comment", "c", "--yes")
    assert_one_line_error(cli("saga", "abandon", str(sid), *args), 1, "--force")
    assert cli.json("saga", "show", str(sid))["saga_state"] == "running"
    r = cli.ok("saga", "abandon", str(sid), *args, "--force")
    assert "holds this saga until" in r.stdout and "udx export release" in r.stdout
    assert cli.json("saga", "show", str(sid))["saga_state"] == "abandoned"


# --- a pantry already out of service: no timeout first (issue 12) -----------------------------


SLOW_PANTRY = {"UDX_PANTRY_REQUEST_TIMEOUT_SECS": "5", "UDX_PANTRY_RETRY_BUDGET_SECS": "5"}


def _expunge_and_hang(cli: Udx, sim: SimulatedPantry) -> int:
    """Take `sim` out of service and make it hang: any call would cost a timeout."""
    cli.ok("pantry", "expunge", str(sim.address), "--yes")
    sim.set_latency(30)
    return len(sim.requests)


def test_release_against_a_pantry_out_of_service_does_not_wait(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    eid = requested_record(db)
    sid = stuck_create(db, sims, eid)
    vid = copy_volume_of(db, sid)
    (holder,) = [s for s in sims if str(vid) in s.attachments]
    before = _expunge_and_hang(cli, holder)
    start = time.monotonic()
    r = cli.ok("export", "release", str(eid), "--saga", str(sid), "--yes", env=SLOW_PANTRY)
    took = time.monotonic() - start
    holder.set_latency(0)
    assert took < 3.0, took
    assert len(holder.requests) == before  # not called at all
    assert "pantry out of service: nothing to detach" in r.stdout
    assert record(db, eid).state is ExportState.REQUESTED and volume_deleted(db, vid)


def test_export_delete_against_a_pantry_out_of_service_does_not_wait(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    eid = requested_record(db)
    cli.ok("pass")
    rec = record(db, eid)
    (holder,) = [s for s in sims if s.address == rec.pantry_address]
    before = _expunge_and_hang(cli, holder)
    start = time.monotonic()
    out = cli.json("export", "delete", str(eid), "--yes", env=SLOW_PANTRY)
    took = time.monotonic() - start
    holder.set_latency(0)
    assert out["outcome"] == "succeeded" and out["record"]["state"] == "deleted"
    assert took < 3.0, took
    assert len(holder.requests) == before
