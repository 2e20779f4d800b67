"""The operator's day (issue 12): `udx export diagnose` verdicts per record state
and saga outcome, `udx status` exit codes, `udx whatis`, `udx saga list` options,
`udx pass history`, release of a delete saga; real CLI, both engines, simulated
pantries."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, update

from udx import seed
from udx.datastore import exports, saga_log
from udx.db.engine import Database
from udx.db.schema import pass_run, saga
from udx.db.types import utcnow
from udx.domain.model import ExportState
from udx.pantry.inventory import DbInventory
from udx.pantry.sim import SimulatedPantry
from udx.saga import SagaExecutor
from udx.saga.executor import Checkpoint
from udx.sagas import CREATE_SAGA, DELETE_SAGA
from udx.sagas.deps import ExportSagaDeps
from udx.testing.invariants import check_invariants

from .helpers import Udx, assert_one_line_error
from .test_stuck_exports import requested_record, stuck_create


class Crash(Exception):
    """Stands for the process dying at a checkpoint."""


def crash_at(db: Database, name: str, params: dict[str, str], node: str) -> uuid.UUID:
    """Run a real export saga and 'die' right after `node`'s action returned
    (before its completion is logged): the saga stays running, its lease alive."""
    sid = uuid.uuid4()

    def hook(cp: Checkpoint) -> None:
        if cp.kind == "action_returned" and cp.node == node:
            raise Crash(node)

    deps = ExportSagaDeps(DbInventory(db), request_timeout_secs=1, retry_budget_secs=1)
    ex = SagaExecutor(db, [CREATE_SAGA, DELETE_SAGA], deps=deps, lease_secs=60, on_checkpoint=hook)
    with pytest.raises(Crash):
        ex.run(name, params, saga_id=sid)
    ex.close()
    return sid


def expire_lease(db: Database, sid: uuid.UUID) -> None:
    with db.begin() as conn:
        conn.execute(
            update(saga)
            .where(saga.c.id == sid)
            .values(lease_expires=utcnow() - timedelta(seconds=5))
        )


def diagnose(cli: Udx, eid: uuid.UUID, code: int) -> dict[str, Any]:
    r = cli("export", "diagnose", str(eid), "--json")
    assert r.exit_code == code, r.stdout + r.stderr
    import json

    return json.loads(r.stdout)


def verdict_line(cli: Udx, eid: uuid.UUID) -> str:
    r = cli("export", "diagnose", str(eid))
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("verdict: ")]
    return line


# --- diagnose -------------------------------------------------------------------------------------


def test_diagnose_requested_live_lost_marked_deleted(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    eid = requested_record(db)
    d = diagnose(cli, eid, 0)
    assert d["verdict"].startswith("not exported yet") and d["command"] == "udx pass"
    assert d["next_pass"] == "run the create saga" and d["saga"] is None
    cli.ok("pass")
    d = diagnose(cli, eid, 0)
    assert d["verdict"].startswith("healthy: live on") and d["command"] is None
    assert d["pantry_view"]["attached"] is True and d["pantry_view"]["in_service"] is True
    assert d["volume"]["exists"] and not d["volume"]["deleted"]
    assert "verdict: healthy" in verdict_line(cli, eid)
    # Diagnose by resource finds the same record.
    rec = exports_get(db, eid)
    by_res = cli(
        "export", "diagnose", "--resource-type", "snapshot", "--resource-id", str(rec.resource_id)
    )
    assert by_res.exit_code == 0 and f"id                   {eid}" in by_res.stdout

    # The pantry restarted and lost it: the next pass re-exports it by itself.
    holder = next(s for s in sims if s.address == rec.pantry_address)
    holder.restart()
    d = diagnose(cli, eid, 0)
    assert "no longer holds the volume" in d["verdict"] and d["pantry_view"]["attached"] is False
    # The pantry does not answer: a person must look.
    holder.refuse_connections()
    d = diagnose(cli, eid, 1)
    assert "does not answer" in d["verdict"] and d["command"] == "udx pantry list"
    holder.refuse_connections(False)
    holder.attach(rec.volume_id, {})  # (as it was)

    with db.begin() as conn:
        exports.mark_for_deletion(conn, eid)
    d = diagnose(cli, eid, 0)
    assert d["next_pass"] == "run the delete saga"
    cli.ok("pass")
    d = diagnose(cli, eid, 0)
    assert d["record"]["state"] == "deleted" and d["verdict"].startswith("deleted")


def exports_get(db: Database, eid: uuid.UUID) -> Any:
    with db.connect() as conn:
        return exports.get_required(conn, eid)


def test_diagnose_after_an_unwound_create_needs_a_person(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    eid = requested_record(db)
    for sim in sims:
        sim.refuse_connections()
    assert cli("pass").exit_code == 1  # no pantry answers: the create saga unwinds
    d = diagnose(cli, eid, 1)
    assert d["latest_saga"]["outcome"] == "unwound"
    assert "unwound" in d["verdict"] and d["command"].startswith("udx saga show ")


def test_diagnose_a_held_record_running_dead_abandoned_released(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    eid = requested_record(db)
    sid = crash_at(db, "export-create", {"export_id": str(eid)}, "attach")
    d = diagnose(cli, eid, 0)
    assert d["saga"]["id"] == str(sid) and d["saga"]["lease_alive"] is True
    assert d["saga"]["last_event"] == "attach started"
    assert "wait for it" in d["verdict"]
    # The copy is attached on the picked pantry: diagnose asks that pantry.
    assert d["pantry_view"]["attached"] is True
    expire_lease(db, sid)
    d = diagnose(cli, eid, 0)
    assert "owner died" in d["verdict"] and d["command"] == f"udx saga resume {sid}"
    cli.ok("saga", "abandon", str(sid), "--reason", "operator", "--comment", "test", "--yes")
    d = diagnose(cli, eid, 1)
    assert "abandoned" in d["verdict"]
    assert d["command"] == f"udx export release {eid} --saga {sid}"
    assert f"udx export release {eid} --saga {sid}" in verdict_line(cli, eid)
    # status names it too, and fails.
    st = cli("status", "--json")
    assert st.exit_code == 1
    cli.ok(*d["command"].split()[1:], "--yes")
    assert check_invariants(db, {str(s.address): list(s.attachments) for s in sims}) == []
    cli.ok("pass")
    assert diagnose(cli, eid, 0)["verdict"].startswith("healthy")


def test_diagnose_a_stuck_saga_names_retry_undo(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    eid = requested_record(db)
    sid = stuck_create(db, sims, eid)
    d = diagnose(cli, eid, 1)
    assert d["saga"]["outcome"] == "stuck" and d["saga"]["failed_node"] == "attach"
    assert d["saga"]["error"].startswith("undo failed: PantryError")
    assert d["command"] == f"udx saga retry-undo {sid}"
    assert_one_line_error(cli("export", "diagnose", str(uuid.uuid4())), 2, "no export record")
    assert_one_line_error(cli("export", "diagnose"), 2, "either an export ID")


def test_release_an_abandoned_delete_saga_back_to_live_marked(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    eid = requested_record(db)
    cli.ok("pass")
    with db.begin() as conn:
        exports.mark_for_deletion(conn, eid)
    rec = exports_get(db, eid)
    params = {"export_id": str(eid), "volume_id": str(rec.volume_id)}
    sid = crash_at(db, "export-delete", params, "detach")
    assert exports_get(db, eid).state is ExportState.DELETING
    assert_one_line_error(
        cli("export", "release", str(eid), "--saga", str(sid), "--yes"), 1, "live lease"
    )
    cli.ok("saga", "abandon", str(sid), "--reason", "r", "--comment", "c", "--force", "--yes")
    r = cli.ok("export", "release", str(eid), "--saga", str(sid), "--yes")
    assert "deleting -> live (still marked for deletion)" in r.stdout
    after = exports_get(db, eid)
    assert after.state is ExportState.LIVE and after.resource_deleted
    status = cli.json("pass")
    assert [d["outcome"] for d in status["delete_invoked_ok"]] == ["succeeded"]
    assert exports_get(db, eid).state is ExportState.DELETED
    assert check_invariants(db, {str(s.address): list(s.attachments) for s in sims}) == []


# --- status ---------------------------------------------------------------------------------


def test_status_exit_codes(cli: Udx, db: Database, sims: list[SimulatedPantry]) -> None:
    r = cli("status")
    assert r.exit_code == 1 and "problem: no pass has run yet  ->  udx pass" in r.stdout
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=2)
    cli.ok("pass")
    r = cli.ok("status")
    assert "healthy" in r.stdout.splitlines()
    out = cli.json("status")
    assert out["healthy"] is True and out["records"]["live"] == 2
    assert out["pass_totals"]["passes"] == 1 and out["pass_totals"]["ok"] == 1
    assert out["pantries_in_service"] == out["pantries_answering"] == 2
    assert out["last_pass"]["result"] == "ok"

    sims[0].refuse_connections()
    out = cli("status", "--json")
    assert out.exit_code == 1 and f"pantry {sims[0].address} does not answer" in out.stdout
    sims[0].refuse_connections(False)

    eid = requested_record(db)
    sid = stuck_create(db, sims, eid)
    r = cli("status")
    assert r.exit_code == 1
    assert f"is held by stuck saga {sid}" in r.stdout
    assert f"udx export diagnose {eid}" in r.stdout
    cli.ok("export", "release", str(eid), "--saga", str(sid), "--yes")
    cli.ok("pass")
    cli.ok("status")  # healthy again: a released stuck saga is history


def test_status_unreachable_database_is_exit_3(tmp_path: Any) -> None:
    udx = Udx(tmp_path, "postgresql://udx@127.0.0.1:1/omicron")
    assert_one_line_error(udx("status"), 3, "cannot reach the database")


# --- whatis ---------------------------------------------------------------------------------


def test_whatis_every_kind_of_id(cli: Udx, db: Database, sims: list[SimulatedPantry]) -> None:
    eid = requested_record(db)
    cli.ok("pass")
    rec = exports_get(db, eid)
    (created,) = cli.json("saga", "list", "--export", str(eid))
    sid = uuid.UUID(created["id"])
    with db.connect() as conn:
        ev = {e.node_id: e for e in saga_log.events(conn, sid)}
    lock = ev["generate_ids"].decoded()["lock_id"]
    (run,) = cli.json("pass", "history")

    def kinds(the_id: object) -> list[str]:
        return [m["kind"] for m in cli.json("whatis", str(the_id))["is"]]

    assert kinds(eid) == ["export"]
    assert kinds(rec.resource_id) == ["snapshot"]
    assert kinds(sid) == ["saga"]
    assert kinds(lock) == ["lock"]
    assert kinds(rec.volume_id) == ["volume", "attachment"]
    assert kinds(run["id"]) == ["pass"]
    cli.ok("pass", "--dry-run")
    dry = cli.json("pass", "history", "--limit", "1")[0]
    (meaning,) = cli.json("whatis", dry["id"])["is"]
    assert meaning["description"].startswith("dry run on ")
    assert meaning["command"] == "udx pass history"
    out = cli.ok("whatis", str(lock)).stdout
    assert f"lock id of saga {sid} on export {eid}, released" in out
    assert_one_line_error(cli("whatis", str(uuid.uuid4())), 2, "not an id udx knows")
    assert_one_line_error(cli("whatis", "nope"), 2, "malformed id")


# --- saga list, pass history ------------------------------------------------------------------


def test_saga_list_options(cli: Udx, db: Database, sims: list[SimulatedPantry]) -> None:
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=3)
    cli.ok("pass")
    everything = cli.json("saga", "list")
    assert len(everything) == 3 and all(s["export_id"] for s in everything)
    times = [s["time_created"] for s in everything]
    assert times == sorted(times, reverse=True)  # newest first
    assert len(cli.json("saga", "list", "--limit", "2")) == 2
    assert len(cli.json("saga", "list", "--limit", "2", "--all")) == 3
    one = everything[1]
    assert [s["id"] for s in cli.json("saga", "list", "--export", one["export_id"])] == [one["id"]]
    assert cli.json("saga", "list", "--name", "export-delete") == []
    assert len(cli.json("saga", "list", "--since", "1h")) == 3
    future = (utcnow() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert cli.json("saga", "list", "--since", future) == []
    assert_one_line_error(cli("saga", "list", "--name", "export-crate"), 2, "unknown saga name")
    assert_one_line_error(cli("saga", "list", "--since", "yesterday"), 2, "malformed --since")
    assert_one_line_error(cli("saga", "list", "--export", "x"), 2, "malformed export id")
    assert_one_line_error(cli("saga", "list", "--limit", "0"), 2)
    table = cli.ok("saga", "list").stdout
    assert one["export_id"] in table and "export" in table.splitlines()[1]


def test_export_list_and_show_name_the_saga_not_the_lock(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    eid = requested_record(db)
    sid = stuck_create(db, sims, eid)
    lock = exports_get(db, eid).operating_saga_id
    (listed,) = cli.json("export", "list")
    assert listed["saga_id"] == str(sid) and listed["operating_saga_id"] == str(lock)
    table = cli.ok("export", "list").stdout
    assert str(sid) in table and str(lock) not in table
    assert cli.json("export", "show", str(eid))["saga_id"] == str(sid)
    cli.ok("saga", "show", str(sid))  # the id shown is one `saga show` takes


def test_pass_history_and_the_pass_json_times(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    assert cli.json("pass", "history") == []
    assert "no pass has run yet" in cli.ok("pass", "history").stdout
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=2)
    status = cli.json("pass")
    assert isinstance(status["duration_secs"], float) and status["started"].startswith("20")
    cli.ok("pass", "--dry-run")  # writes its history row, nothing else
    for sim in sims:
        sim.refuse_connections()
    eid = requested_record(db)
    assert cli("pass").exit_code == 1
    runs = cli.json("pass", "history")
    assert [(r["result"], r["dry_run"]) for r in runs] == [
        ("failed", False), ("ok", True), ("ok", False)
    ]
    assert runs[0]["exit_code"] == 1 and runs[0]["errors"] and runs[2]["errors"] == []
    assert runs[2]["counts"]["sagas"] == {"create:succeeded": 2}
    assert runs[1]["counts"] == {"planned": {}}  # nothing to do then
    assert runs[2]["duration_secs"] >= 0 and runs[2]["dry_run"] is False
    assert len(cli.json("pass", "history", "--limit", "1")) == 1
    table = cli.ok("pass", "history").stdout
    assert "failed" in table and "ok" in table
    (dry_line,) = [ln for ln in table.splitlines() if ln.startswith(runs[1]["id"])]
    assert dry_line.split()[4] == "yes"  # the dry run column
    summary = cli("pass").stdout
    assert "duration" in summary and "started" in summary
    del eid


def test_status_judges_the_last_real_pass_not_a_dry_run(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    requested_record(db)
    for sim in sims:
        sim.refuse_connections()
    assert cli("pass").exit_code == 1  # the create saga unwinds: a failed pass
    for sim in sims:
        sim.refuse_connections(False)
    cli.ok("pass", "--dry-run")  # a clean dry run afterwards hides nothing
    r = cli("status", "--json")
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert out["last_pass"]["dry_run"] is False and out["last_pass"]["result"] == "failed"
    assert out["last_dry_run"]["dry_run"] is True and out["last_dry_run"]["result"] == "ok"
    assert out["pass_totals"]["passes"] == 1  # dry runs are not counted
    assert "the last pass failed (exit 1)" in r.stdout
    text = cli("status").stdout
    assert "last dry run" in text and "failed" in text
    # Only dry runs so far: still "no pass has run yet".
    with db.begin() as conn:
        conn.execute(delete(pass_run).where(pass_run.c.dry_run.is_(False)))
    out = json.loads(cli("status", "--json").stdout)
    assert out["last_pass"] is None
    assert any(p["problem"] == "no pass has run yet" for p in out["problems"])
    cli.ok("pass")
    cli.ok("status")


# --- Ctrl-C, metrics ----------------------------------------------------------------------------


def test_ctrl_c_reports_what_finished_and_what_was_left(
    cli: Udx, db: Database, db_url: str, sims: list[SimulatedPantry], tmp_path: Any
) -> None:
    import signal
    import time

    from sqlalchemy import func, select

    from .test_stuck_exports import _udx_subprocess

    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=6)
    for sim in sims:
        sim.set_latency(0.3)
    proc = _udx_subprocess(tmp_path, db_url, ["pass", "--concurrency", "1"])
    deadline = time.monotonic() + 60
    while True:
        with db.connect() as conn:
            done = conn.execute(
                select(func.count()).where(saga.c.saga_state == "done")
            ).scalar_one()
        if done >= 1:
            break
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    (line,) = [ln for ln in out.splitlines() if ln.startswith("interrupted: ")]
    finished = int(line.split()[1])
    left = [ln for ln in out.splitlines() if ln.startswith("  not started: create export ")]
    assert finished >= 1 and finished + len(left) == 6, out
    assert "Traceback" not in err
    for sim in sims:
        sim.set_latency(0)
    (run,) = cli.json("pass", "history")
    assert (run["exit_code"], run["result"]) == (130, "interrupted")
    status = cli.json("pass")  # the rest, next time
    assert len(status["create_invoked_ok"]) == len(left)
    assert check_invariants(db, {str(s.address): list(s.attachments) for s in sims}) == []


def test_metrics_file_has_the_system_gauges(
    cli: Udx, db: Database, sims: list[SimulatedPantry], tmp_path: Any
) -> None:
    eid = requested_record(db)
    sid = crash_at(db, "export-create", {"export_id": str(eid)}, "attach")
    cli.ok("saga", "abandon", str(sid), "--reason", "r", "--comment", "c", "--force", "--yes")
    other = requested_record(db)
    del other
    prom = tmp_path / "udx.prom"
    cli.ok("pass", "--metrics-file", str(prom))
    text = prom.read_text()
    assert 'udx_pass_sagas{saga="create",outcome="abandoned"} 0' in text
    assert 'udx_pass_sagas{saga="create",outcome="succeeded"} 1' in text
    assert 'udx_sagas{state="abandoned"} 1' in text
    assert 'udx_sagas{state="running"} 0' in text
    assert "udx_saga_oldest_running_age_seconds 0" in text
    assert 'udx_records{state="live"} 1' in text and 'udx_records{state="assigning"} 1' in text
    assert "udx_pass_duration_seconds " in text


# --- diagnose: the volume's usage rows ------------------------------------------------------


def test_diagnose_shows_the_usage_rows_and_flags_them_when_not_exact(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    from sqlalchemy import delete, insert, select

    from udx.db.schema import volume_resource_usage as usage

    eid = requested_record(db)
    cli.ok("pass")
    vid = exports_get(db, eid).volume_id
    assert vid is not None
    d = diagnose(cli, eid, 0)
    use = d["volume"]["usage"]
    assert use["exact"] is True and use["problems"] == []
    assert use["targets"] and all(t["usage_rows"] == 1 for t in use["targets"])
    assert sum(r["count"] for r in use["rows"]) == len(use["targets"])
    with db.connect() as conn:
        held = conn.execute(select(usage).where(usage.c.volume_id == vid)).all()
    assert len(held) == len(use["targets"])
    # Piped: one `name  value` line each; the usage summary says exact.
    out = cli.ok("export", "diagnose", str(eid), env={"TTY_COMPATIBLE": "0"}).stdout
    (line,) = [ln for ln in out.splitlines() if ln.startswith("usage ")]
    rows_text = f"{len(held)} usage row" + ("s" if len(held) != 1 else "")
    assert line.split()[1] == "exact:" and rows_text in line
    targets = [ln for ln in out.splitlines() if ln.startswith("read-only target ")]
    assert len(targets) == len(held) and all(ln.endswith(": 1 usage row") for ln in targets)
    # On a terminal 80 wide, no colour: the volume id whole, no escape sequences.
    tty = {"TTY_COMPATIBLE": "1", "COLUMNS": "80", "NO_COLOR": "1"}
    out = cli.ok("export", "diagnose", str(eid), env=tty).stdout
    assert "\x1b" not in out and str(vid) in out and "exact:" in out

    # A missing row: storage could be freed under the export. Flagged, exit 1.
    first = held[0]
    with db.begin() as conn:
        conn.execute(delete(usage).where(usage.c.usage_id == first.usage_id))
    d = diagnose(cli, eid, 1)
    assert d["volume"]["usage"]["exact"] is False
    assert "not exact" in d["verdict"] and "has 0 usage rows, not 1" in d["verdict"]
    assert d["command"] == f"udx volume show {vid}"
    assert "NOT exact" in cli("export", "diagnose", str(eid)).stdout

    # Two rows for one resource (wrong count), then back to one: healthy again.
    row = dict(first._mapping)
    with db.begin() as conn:
        conn.execute(insert(usage), [{**row, "usage_id": uuid.uuid4()} for _ in range(2)])
    d = diagnose(cli, eid, 1)
    assert "has 2 usage rows, not 1" in d["verdict"]
    with db.begin() as conn:
        conn.execute(delete(usage).where(usage.c.volume_id == vid))
        conn.execute(insert(usage), [dict(r._mapping) for r in held])
    assert diagnose(cli, eid, 0)["verdict"].startswith("healthy")

    # A row for a resource the volume's data does not name (it pins it forever).
    stray = {**row, "usage_id": uuid.uuid4(), "volume_id": vid, "usage_type": "read_only_region",
             "region_id": uuid.uuid4(), "region_snapshot_dataset_id": None,
             "region_snapshot_region_id": None, "region_snapshot_snapshot_id": None}
    with db.begin() as conn:
        conn.execute(insert(usage), [stray])
    d = diagnose(cli, eid, 1)
    assert "which its data does not name" in d["verdict"]
    out = cli("export", "diagnose", str(eid)).stdout
    assert "(its data does not name it)" in out and str(stray["region_id"]) in out
    # The same lines as the invariant checker's.
    problems = [p for p in check_invariants(db) if str(vid) in p]
    assert problems == d["volume"]["usage"]["problems"]
    # Marked for deletion it is still flagged: a person should look first.
    with db.begin() as conn:
        exports.mark_for_deletion(conn, eid)
    assert diagnose(cli, eid, 1)["next_pass"].startswith("run the delete saga")


def test_diagnose_shows_the_usage_of_a_create_sagas_copy(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    eid = requested_record(db)
    sid = crash_at(db, "export-create", {"export_id": str(eid)}, "attach")
    d = diagnose(cli, eid, 0)
    vol = d["volume"]
    assert vol["exists"] and not vol["deleted"] and vol["usage"]["exact"] is True
    assert vol["usage"]["targets"]
    expire_lease(db, sid)
    cli.ok("saga", "abandon", str(sid), "--reason", "r", "--comment", "c", "--yes")
    cli.ok("export", "release", str(eid), "--saga", str(sid), "--yes")
    # Released: the copy was given back, with no usage rows left.
    with db.connect() as conn:
        from udx.datastore import volumes

        use = volumes.volume_usage(conn, uuid.UUID(vol["id"]))
    assert use is not None and not use.live and use.exact and not use.held


# --- diagnose: the remaining record states and saga outcomes (issue 12's Tests audit) ------


def test_diagnose_a_deleting_record_held_by_its_delete_saga(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    eid = requested_record(db)
    cli.ok("pass")
    d = diagnose(cli, eid, 0)
    assert d["latest_saga"]["name"] == "export-create"
    assert d["latest_saga"]["outcome"] == "succeeded"  # shown, not judged
    with db.begin() as conn:
        exports.mark_for_deletion(conn, eid)
    rec = exports_get(db, eid)
    params = {"export_id": str(eid), "volume_id": str(rec.volume_id)}
    sid = crash_at(db, "export-delete", params, "detach")
    d = diagnose(cli, eid, 0)
    assert d["record"]["state"] == "deleting" and d["saga"]["name"] == "export-delete"
    assert d["next_pass"] == "skip it (a saga holds it, deleting)"
    assert "wait for it" in d["verdict"] and d["command"] == f"udx saga show {sid}"
    expire_lease(db, sid)
    d = diagnose(cli, eid, 0)
    assert "owner died" in d["verdict"] and d["command"] == f"udx saga resume {sid}"
    cli.ok("saga", "abandon", str(sid), "--reason", "r", "--comment", "c", "--yes")
    d = diagnose(cli, eid, 1)
    assert d["command"] == f"udx export release {eid} --saga {sid}"
    cli.ok(*d["command"].split()[1:], "--yes")
    d = diagnose(cli, eid, 0)  # live and marked: the next pass deletes it
    assert d["next_pass"] == "run the delete saga" and d["latest_saga"]["state"] == "abandoned"
    cli.ok("pass")
    assert diagnose(cli, eid, 0)["record"]["state"] == "deleted"
    assert check_invariants(db, {str(s.address): list(s.attachments) for s in sims}) == []


def test_diagnose_a_lock_no_saga_made_and_a_done_saga_holding_a_record(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    from udx.db.schema import user_data_export

    eid = requested_record(db)
    with db.begin() as conn:  # hand-edited: locked by an id no saga generated
        conn.execute(
            update(user_data_export)
            .where(user_data_export.c.id == eid)
            .values(state="assigning", operating_saga_id=uuid.uuid4())
        )
    d = diagnose(cli, eid, 1)
    assert "a lock no saga in the log generated" in d["verdict"]
    assert d["command"] == "udx pantry list" and d["saga"] is None

    other = requested_record(db)
    sid = crash_at(db, "export-create", {"export_id": str(other)}, "attach")
    with db.begin() as conn:  # done, yet its lock is still on the record
        conn.execute(
            update(saga).where(saga.c.id == sid).values(saga_state="done", outcome="unwound")
        )
    d = diagnose(cli, other, 1)
    assert "is done (unwound) yet still holds the record" in d["verdict"]
    # Not a command that refuses it: release would.
    assert d["command"] == f"udx saga show {sid}"
    assert_one_line_error(
        cli("export", "release", str(other), "--saga", str(sid), "--yes"), 1, "should not hold"
    )


def test_diagnose_requested_with_its_resource_gone_and_live_on_a_pantry_out_of_service(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    gone = requested_record(db)
    with db.begin() as conn:
        exports.mark_for_deletion(conn, gone)
    d = diagnose(cli, gone, 0)
    assert d["next_pass"].startswith("bypass it to deleted") and d["command"] == "udx pass"

    eid = requested_record(db)
    cli.ok("pass")
    rec = exports_get(db, eid)
    holder = next(s for s in sims if s.address == rec.pantry_address)
    cli.ok("pantry", "expunge", str(holder.address), "--yes")
    asked = len(holder.requests)
    d = diagnose(cli, eid, 0)
    assert "is no longer in service" in d["verdict"] and d["command"] == "udx pass"
    assert d["pantry_view"]["in_service"] is False and "answered" not in d["pantry_view"]
    assert len(holder.requests) == asked  # an expunged pantry is not asked
    out = cli("export", "diagnose", str(eid)).stdout
    assert "NOT in service): volume not asked" in out


def test_diagnose_live_with_its_volume_row_deleted(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    from udx.datastore import volumes

    eid = requested_record(db)
    cli.ok("pass")
    rec = exports_get(db, eid)
    assert rec.volume_id is not None
    with db.begin() as conn:
        volumes.soft_delete_volume(conn, rec.volume_id)
    d = diagnose(cli, eid, 1)
    assert d["volume"]["deleted"] is True and "has no live row" in d["verdict"]
    assert d["volume"]["usage"]["exact"] is True  # soft-deleted: no rows, as it must
    assert d["command"] == f"udx volume show {rec.volume_id}"


# --- status: the remaining problems ----------------------------------------------------------


def test_status_names_a_saga_whose_owner_died_and_an_unfinished_pass(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    import os
    import socket
    import subprocess
    import sys

    from udx.datastore import pass_runs

    cli.ok("pass")
    cli.ok("status")
    eid = requested_record(db)
    sid = crash_at(db, "export-create", {"export_id": str(eid)}, "attach")
    cli.ok("status")  # running, its owner's lease alive: nothing wrong yet
    expire_lease(db, sid)
    r = cli("status", "--json")
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert out["running_sagas_with_expired_leases"] == 1
    assert any("whose owner died" in p["problem"] for p in out["problems"]), out["problems"]
    cli.ok("pass")  # adopts and finishes it
    cli.ok("status")

    # A pass whose process is gone without finishing its row (as after SIGKILL).
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    assert pid != os.getpid()
    with db.begin() as conn:
        pass_runs.start(conn, uuid.uuid4(), host=socket.gethostname(), pid=pid,
                        started=utcnow(), dry_run=False)
    r = cli("status")
    assert r.exit_code == 1
    assert f"problem: the last pass (host {socket.gethostname()}, pid {pid}) did not finish" in (
        r.stdout
    )
    assert cli.json("pass", "history", "--limit", "1")[0]["result"] == "did not finish"


def test_a_pantry_that_does_not_answer_is_loud_through_the_cli(
    cli: Udx, db: Database, sims: list[SimulatedPantry], tmp_path: Any
) -> None:
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=2)
    dead = sims[0]
    dead.refuse_connections()
    prom = tmp_path / "udx.prom"
    r = cli("pass", "--json", "--metrics-file", str(prom))
    dead.refuse_connections(False)
    assert r.exit_code == 0, r.stdout + r.stderr  # a warning, not a failure
    status = json.loads(r.stdout)
    (warning,) = status["warnings"]
    assert str(dead.address) in warning and "did not answer its status call" in warning
    assert all(i["outcome"] == "succeeded" for i in status["create_invoked_ok"])
    (line,) = [ln for ln in r.stderr.splitlines() if str(dead.address) in ln]
    assert "WARNING" in line and "Traceback" not in r.stderr
    text = prom.read_text()
    assert f'udx_pantry_up{{pantry="{dead.address}"}} 0' in text
    assert f'udx_pantry_up{{pantry="{sims[1].address}"}} 1' in text
    summary = cli("pass")  # the human summary counts and prints it too
    assert summary.exit_code == 0
    (run, *_) = cli.json("pass", "history")
    assert run["warnings"] == [] and run["result"] == "ok"
    (earlier,) = [h for h in cli.json("pass", "history") if h["warnings"]]
    assert earlier["warnings"] == [warning]
