"""`udx export create` and `udx export delete` through the CLI (issue 6), on both
engines, with simulated pantries: the sagas run, the records move, the pantries
see the attach and the detach; conflicts, unknown ids and the confirmation."""

from __future__ import annotations

import json
import uuid

from udx import seed
from udx.datastore import exports, resources
from udx.db.engine import Database
from udx.db.schema import volume
from udx.domain.model import ExportState, UserDataExport
from udx.pantry.sim import SimulatedPantry
from udx.testing.invariants import check_invariants, dump_tables

from .helpers import Udx, assert_one_line_error
from .two_pantries import SNAP


def record(db: Database, export_id: uuid.UUID | str) -> UserDataExport:
    with db.connect() as conn:
        return exports.get_required(conn, uuid.UUID(str(export_id)))


def holders(sims: list[SimulatedPantry], volume_id: object) -> list[SimulatedPantry]:
    return [s for s in sims if str(volume_id) in s.attachments]


def requests(sims: list[SimulatedPantry]) -> int:
    return sum(len(s.requests) for s in sims)


def volume_alive(db: Database, volume_id: uuid.UUID) -> bool:
    with db.connect() as conn:
        row = conn.execute(
            volume.select().where(volume.c.id == volume_id, volume.c.time_deleted.is_(None))
        ).first()
    return row is not None


def new_snapshot(db: Database) -> uuid.UUID:
    with db.begin() as conn:
        return seed.add_snapshot(conn)


# --- create ------------------------------------------------------------------------------------


def test_create_runs_the_saga_and_prints_the_live_record(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    sid = new_snapshot(db)
    args = ("export", "create", "--resource-type", "snapshot", "--resource-id", str(sid))
    out = cli.ok(*args).stdout
    with db.connect() as conn:
        rec = exports.by_resource(conn, SNAP, sid)
    assert rec is not None and rec.state is ExportState.LIVE
    assert rec.volume_id is not None and rec.pantry_address is not None
    (holder,) = holders(sims, rec.volume_id)
    assert holder.address == rec.pantry_address
    lines = out.splitlines()
    assert lines[0] == f"export {rec.id}: create saga"
    assert lines[1].startswith("saga ") and lines[1].endswith(": succeeded")
    assert lines[2] == f"state live, pantry {rec.pantry_address}, volume {rec.volume_id}"
    assert check_invariants(db, {str(s.address): list(s.attachments) for s in sims}) == []


def test_create_json_for_an_image(cli: Udx, db: Database, sims: list[SimulatedPantry]) -> None:
    with db.begin() as conn:
        iid = seed.add_image(conn, silo=True)
    data = cli.json("export", "create", "--resource-type", "IMAGE", "--resource-id", str(iid))
    assert set(data) == {"action", "saga_id", "outcome", "error", "record"}
    assert data["outcome"] == "succeeded" and data["error"] is None
    uuid.UUID(data["saga_id"])
    rec = data["record"]
    assert rec["state"] == "live" and rec["resource_type"] == "image"
    assert rec["resource_id"] == str(iid) and rec["operating_saga_id"] is None
    assert rec["pantry_address"] in {str(s.address) for s in sims}
    assert rec["generation"] == 1
    assert record(db, rec["id"]).state is ExportState.LIVE
    assert holders(sims, rec["volume_id"])


def test_create_reuses_a_requested_record(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    sid = new_snapshot(db)
    with db.begin() as conn:
        left = exports.create(conn, uuid.uuid4(), SNAP, sid)  # an earlier saga unwound
    data = cli.json("export", "create", "--resource-type", "snapshot", "--resource-id", str(sid))
    assert data["record"]["id"] == str(left.id) and data["record"]["state"] == "live"


def test_create_on_a_resource_with_a_live_export_is_a_conflict(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    sid = new_snapshot(db)
    args = ("export", "create", "--resource-type", "snapshot", "--resource-id", str(sid))
    first = cli.json(*args)
    before = dump_tables(db)
    calls = requests(sims)
    line = assert_one_line_error(cli(*args), 1, str(sid), first["record"]["id"], "live")
    assert "already has export" in line
    assert dump_tables(db) == before and requests(sims) == calls


def test_create_for_an_unknown_or_deleted_resource_is_exit_2(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    with db.begin() as conn:
        deleted = seed.add_snapshot(conn, deleted=True)
    before = dump_tables(db)
    for kind, rid in (("snapshot", uuid.uuid4()), ("image", uuid.uuid4()), ("snapshot", deleted)):
        r = cli("export", "create", "--resource-type", kind, "--resource-id", str(rid))
        assert_one_line_error(r, 2, str(rid))
    # the wrong type for an existing resource is unknown too
    sid = new_snapshot(db)
    before = dump_tables(db)
    r = cli("export", "create", "--resource-type", "image", "--resource-id", str(sid))
    assert_one_line_error(r, 2, str(sid))
    assert_one_line_error(
        cli("export", "create", "--resource-type", "disk", "--resource-id", str(sid)),
        2, "'disk' is not one of: snapshot, image",
    )
    assert_one_line_error(
        cli("export", "create", "--resource-type", "snapshot", "--resource-id", "nope"),
        2, "malformed resource id",
    )
    assert dump_tables(db) == before
    assert requests(sims) == 0


def test_create_whose_saga_unwinds_is_exit_1_with_an_error_line(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    sid = new_snapshot(db)
    for sim in sims:
        sim.fail_next(10_000, 500, method="POST")
    env = {"UDX_PANTRY_RETRY_BUDGET_SECS": "0.5"}
    args = ("export", "create", "--resource-type", "snapshot", "--resource-id", str(sid))
    r = cli(*args, "--json", env=env)
    assert r.exit_code == 1, (r.stdout, r.stderr)
    data = json.loads(r.stdout)
    assert data["outcome"] == "unwound" and data["error"]
    assert data["record"]["state"] == "requested"
    assert data["record"]["operating_saga_id"] is None
    (line,) = r.stderr.splitlines()
    assert line.startswith("udx: error: ") and data["saga_id"] in line
    assert all(s.attachments == {} for s in sims)
    r = cli(*args, env=env)  # the table form: the record is reused, exit 1 again
    assert r.exit_code == 1
    assert f"export {data['record']['id']}: create saga" in r.stdout
    assert ": unwound" in r.stdout
    (line,) = r.stderr.splitlines()
    assert line.startswith("udx: error: ") and "unwound" in line


# --- delete ------------------------------------------------------------------------------------


def _live_export(cli: Udx, db: Database) -> UserDataExport:
    sid = new_snapshot(db)
    data = cli.json("export", "create", "--resource-type", "snapshot", "--resource-id", str(sid))
    return record(db, data["record"]["id"])


def test_delete_live_runs_the_delete_saga(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    rec = _live_export(cli, db)
    assert rec.volume_id is not None
    (holder,) = holders(sims, rec.volume_id)
    out = cli.ok("export", "delete", str(rec.id), "--yes").stdout
    after = record(db, rec.id)
    assert after.state is ExportState.DELETED and after.resource_deleted
    assert after.generation == rec.generation + 1
    assert holder.detachments[str(rec.volume_id)] == 1 and holders(sims, rec.volume_id) == []
    assert not volume_alive(db, rec.volume_id)
    lines = out.splitlines()
    assert lines[0] == f"export {rec.id}: delete saga"
    assert lines[1].startswith("saga ") and lines[1].endswith(": succeeded")
    assert lines[2].startswith("state deleted")
    assert check_invariants(db, {str(s.address): list(s.attachments) for s in sims}) == []
    # Deleting again does nothing and says so.
    again = cli.json("export", "delete", str(rec.id), "-y")
    assert again["record"]["state"] == "deleted" and again["saga_id"] is None
    assert "already deleted" in again["action"]
    assert holder.total_detach_calls == 1


def test_delete_json(cli: Udx, db: Database, sims: list[SimulatedPantry]) -> None:
    rec = _live_export(cli, db)
    data = cli.json("export", "delete", str(rec.id), "--yes")
    assert data["outcome"] == "succeeded" and data["error"] is None
    uuid.UUID(data["saga_id"])
    assert data["record"]["id"] == str(rec.id) and data["record"]["state"] == "deleted"


def test_delete_requested_is_bypassed_without_a_saga(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    sid = new_snapshot(db)
    with db.begin() as conn:
        rec = exports.create(conn, uuid.uuid4(), SNAP, sid)
    out = cli.ok("export", "delete", str(rec.id), "--yes").stdout
    assert "bypassed" in out and "saga" not in out.splitlines()[1]
    after = record(db, rec.id)
    assert after.state is ExportState.DELETED and after.resource_deleted
    assert requests(sims) == 0
    with db.connect() as conn:
        from udx.db.schema import saga

        assert conn.execute(saga.select()).first() is None


def test_delete_without_yes_and_without_a_terminal_is_refused(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    rec = _live_export(cli, db)
    with db.begin() as conn:  # a requested one too: nothing may be marked either
        other = exports.create(conn, uuid.uuid4(), SNAP, seed.add_snapshot(conn))
    before = dump_tables(db)
    calls = requests(sims)
    for eid in (rec.id, other.id):
        for extra in ((), ("--json",)):
            r = cli("export", "delete", str(eid), *extra)
            assert_one_line_error(r, 2, "--yes", str(eid))
    assert dump_tables(db) == before
    assert requests(sims) == calls


def test_delete_unknown_or_malformed_id_is_exit_2(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    missing = uuid.uuid4()
    before = dump_tables(db)
    assert_one_line_error(cli("export", "delete", str(missing), "--yes"), 2, str(missing))
    assert_one_line_error(cli("export", "delete", str(missing)), 2, str(missing))
    assert_one_line_error(cli("export", "delete", "xyz", "--yes"), 2, "malformed export id")
    assert dump_tables(db) == before


def test_delete_of_an_assigning_record_only_marks_it(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    sid = new_snapshot(db)
    with db.begin() as conn:
        rec = exports.create(conn, uuid.uuid4(), SNAP, sid)
        exports.start_assigning(conn, rec.id, uuid.uuid4(), 1)
    data = cli.json("export", "delete", str(rec.id), "--yes")
    assert data["saga_id"] is None and "next pass" in data["action"]
    after = record(db, rec.id)
    assert after.state is ExportState.ASSIGNING and after.resource_deleted
    assert requests(sims) == 0


def test_delete_of_a_record_whose_resource_is_gone(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    rec = _live_export(cli, db)
    with db.begin() as conn:
        resources.soft_delete(conn, SNAP, [rec.resource_id])
    data = cli.json("export", "delete", str(rec.id), "--yes")
    assert data["outcome"] == "succeeded"
    assert record(db, rec.id).state is ExportState.DELETED
