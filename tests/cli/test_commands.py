"""`udx db`, `config`, `changeset` and `export`, in-process, on both engines."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from udx import seed
from udx.datastore import exports, resources
from udx.db.engine import open_database
from udx.db.schema import user_data_export
from udx.domain.model import ResourceType

from ..datastore.helpers import PANTRY_B, insert_record, to_live
from .helpers import Udx, assert_one_line_error

SNAP = ResourceType.SNAPSHOT
IMAGE = ResourceType.IMAGE
RECORD_KEYS = [c.name for c in user_data_export.c] + ["pantry_address"]


@dataclass
class Fleet:
    free_snapshots: list[uuid.UUID]
    silo_image: uuid.UUID
    requested: uuid.UUID  # record of the silo image
    live: uuid.UUID  # record of a live snapshot on PANTRY_B
    live_snapshot: uuid.UUID
    doomed: uuid.UUID  # live record whose snapshot was deleted
    old: uuid.UUID  # a deleted record of live_snapshot


@pytest.fixture
def fleet(db_url: str) -> Fleet:
    db = open_database(db_url)
    with db.begin() as conn:
        free = [seed.add_snapshot(conn) for _ in range(2)]
        silo = seed.add_image(conn, silo=True)
        requested = exports.create(conn, uuid.uuid4(), IMAGE, silo).id
        live_sid = seed.add_snapshot(conn)
        old = insert_record(conn, live_sid, state="deleted", generation=1, resource_deleted=True)
        live = to_live(conn, SNAP, live_sid, pantry=PANTRY_B, gen=2).id
        gone = seed.add_snapshot(conn)
        doomed = to_live(conn, SNAP, gone).id
        resources.soft_delete(conn, SNAP, [gone])
    db.dispose()
    return Fleet(sorted(free, key=str), silo, requested, live, live_sid, doomed, old)


def resource_deleted(db_url: str, export_id: uuid.UUID) -> bool:
    db = open_database(db_url)
    try:
        with db.connect() as conn:
            return exports.get_required(conn, export_id).resource_deleted
    finally:
        db.dispose()


# --- db ----------------------------------------------------------------------------------------


def test_db_status_and_upgrade_on_current_schema(udx: Udx) -> None:
    st = udx.json("db", "status")
    assert st["up_to_date"] is True and st["pending"] == [] and st["current"] == st["head"]
    text = udx.ok("db", "status").stdout
    assert st["head"] in text and "pending: nothing" in text
    assert "already" in udx.ok("db", "upgrade").stdout


def test_db_seed(udx: Udx) -> None:
    r = udx.ok("db", "seed", "--snapshots", "4", "--project-images", "2", "--silo-images", "1",
               "--deleted", "3", "--seed", "5")
    assert "seeded 7 live resources and 3 deleted snapshots" in r.stdout
    cs = udx.json("changeset")
    kinds = [x["resource_type"] for x in cs["request_required"]]
    assert sorted(kinds) == ["image"] * 3 + ["snapshot"] * 4


# --- changeset ---------------------------------------------------------------------------------


def test_changeset_json_shapes(udx: Udx, fleet: Fleet, db_url: str) -> None:
    data = udx.json("changeset")
    assert set(data) >= {"request_required", "create_required", "delete_required"}
    req = data["request_required"]
    assert all(list(x) == ["resource_type", "resource_id"] for x in req)
    assert {(x["resource_type"], x["resource_id"]) for x in req} == {
        ("snapshot", str(s)) for s in fleet.free_snapshots
    }
    for rec in data["create_required"] + data["delete_required"]:
        assert list(rec) == RECORD_KEYS
    (create,) = data["create_required"]
    assert create["id"] == str(fleet.requested) and create["state"] == "requested"
    assert create["resource_type"] == "image" and create["resource_id"] == str(fleet.silo_image)
    assert create["pantry_address"] is None and create["pantry_ip"] is None
    (delete,) = data["delete_required"]
    assert delete["id"] == str(fleet.doomed) and delete["state"] == "live"
    assert delete["pantry_address"] == "10.0.0.1:17000" and delete["pantry_port"] == 17000
    assert isinstance(delete["generation"], int) and isinstance(delete["resource_deleted"], bool)
    assert [r["id"] for r in data.get("would_mark_for_deletion", [])] == [str(fleet.doomed)]
    # read-only: nothing was marked
    assert resource_deleted(db_url, fleet.doomed) is False


def test_changeset_tables(udx: Udx, fleet: Fleet, db_url: str) -> None:
    out = udx.ok("changeset").stdout
    assert "request required (2)" in out
    assert "create required (1)" in out
    assert "delete required (1)" in out
    for s in fleet.free_snapshots:
        assert str(s) in out
    assert str(fleet.requested) in out and str(fleet.doomed) in out
    assert str(fleet.live) not in out and str(fleet.old) not in out
    assert resource_deleted(db_url, fleet.doomed) is False


# --- export list / show -----------------------------------------------------------------------


def test_export_list(udx: Udx, fleet: Fleet) -> None:
    every = udx.json("export", "list")
    assert {r["id"] for r in every} == {
        str(x) for x in (fleet.requested, fleet.live, fleet.doomed, fleet.old)
    }
    # `saga_id`: the saga holding the record (its lock is operating_saga_id).
    assert all(list(r) == [*RECORD_KEYS, "saga_id"] for r in every)
    live = udx.json("export", "list", "--state", "live")
    assert {r["id"] for r in live} == {str(fleet.live), str(fleet.doomed)}
    both = udx.json("export", "list", "--state", "LIVE", "--state", "deleted")
    assert {r["id"] for r in both} == {str(fleet.live), str(fleet.doomed), str(fleet.old)}
    images = udx.json("export", "list", "--resource-type", "image")
    assert [r["id"] for r in images] == [str(fleet.requested)]
    assert udx.json("export", "list", "--resource-type", "image", "--state", "live") == []
    table = udx.ok("export", "list", "--state", "live").stdout
    assert table.splitlines()[0].split()[:2] == ["id", "type"]  # piped: the header first
    assert len(table.splitlines()) == 3
    assert str(fleet.live) in table and "[fd00:1122:3344:101::1]:17000" in table
    assert str(fleet.requested) not in table
    on_tty = {"TTY_COMPATIBLE": "1", "COLUMNS": "200"}
    table = udx.ok("export", "list", "--state", "live", env=on_tty).stdout
    assert "export records (2)" in table


def test_export_show(udx: Udx, fleet: Fleet) -> None:
    rec = udx.json("export", "show", str(fleet.live))
    assert rec["id"] == str(fleet.live) and rec["state"] == "live"
    assert rec["pantry_address"] == "[fd00:1122:3344:101::1]:17000"
    assert "history" not in rec
    assert udx.json("export", "show", str(fleet.live).upper())["id"] == str(fleet.live)
    by_res = udx.json("export", "show", "--resource-type", "snapshot", "--resource-id",
                      str(fleet.live_snapshot))
    assert by_res["id"] == str(fleet.live)  # the current record, not the deleted one
    assert [h["id"] for h in by_res["history"]] == [str(fleet.old)]
    text = udx.ok("export", "show", str(fleet.live)).stdout
    assert str(fleet.live) in text and "live" in text and str(fleet.live_snapshot) in text
    text = udx.ok("export", "show", "--resource-type", "snapshot", "--resource-id",
                  str(fleet.live_snapshot)).stdout
    assert "== earlier records for this resource (1)" in text and str(fleet.old) in text
    fields = dict(re.split(r"\s{2,}", ln, maxsplit=1) for ln in text.split("==")[0].splitlines())
    assert fields["marked for deletion"] == "no" and fields["state"] == "live"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(\d+s ago\)", fields["created"])


# --- bad input ----------------------------------------------------------------------------------


def test_bad_input_is_one_line_exit_2(udx: Udx, fleet: Fleet) -> None:
    missing = uuid.uuid4()
    cases = [
        (("export", "show", "not-a-uuid"), "malformed export id"),
        (("export", "show", "--resource-type", "snapshot", "--resource-id", "xyz"),
         "malformed resource id"),
        (("export", "show", "--resource-type", "disk", "--resource-id", str(uuid.uuid4())),
         "'disk' is not one of: snapshot, image"),
        (("export", "list", "--resource-type", "disk"), "'disk' is not one of"),
        (("export", "list", "--state", "alive"), "'alive' is not one of: requested, assigning"),
        (("export", "show", str(missing)), str(missing)),
        (("export", "show", "--resource-type", "image", "--resource-id", str(missing)),
         str(missing)),
        (("export", "show"), "export ID"),
        (("export", "show", str(fleet.live), "--resource-type", "snapshot"), "export ID"),
        (("export", "show", "--resource-type", "snapshot"), "--resource-id"),
        (("export", "list", "--bogus"), "--bogus"),
    ]
    for args, needle in cases:
        assert_one_line_error(udx(*args), 2, needle)


def test_verbose_allows_a_traceback(udx: Udx) -> None:
    r = udx("-v", "export", "show", "not-a-uuid")
    assert r.exit_code == 2
    assert "Traceback" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("udx: error: malformed export id")


def test_bad_config_file_is_one_line_exit_2(udx: Udx, tmp_path: Path) -> None:
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[database\nurl = 1\n")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[coordinator]\nconcurency = 4\n")
    for path, needle in (
        (bad_toml, "not valid TOML"),
        (unknown, "unknown key 'concurency'"),
        (tmp_path / "missing.toml", "does not exist"),
        (tmp_path, "cannot read"),
    ):
        for args in (("changeset",), ("config", "show")):
            assert_one_line_error(udx("--config", str(path), *args), 2, needle, str(path))
    r = udx("changeset", env={"UDX_CONFIG": str(bad_toml)})
    assert_one_line_error(r, 2, "not valid TOML")


def test_unreachable_database_exit_3_without_password(tmp_path: Path) -> None:
    udx = Udx(tmp_path)
    url = "postgresql+psycopg://u:secret@127.0.0.1:1/x"
    for args in (("changeset",), ("export", "list", "--json"), ("db", "status"), ("db", "init")):
        r = udx(*args, db=url)
        line = assert_one_line_error(r, 3, "cannot reach the database", "127.0.0.1")
        assert "secret" not in r.stderr + r.stdout, line
    r = udx("-v", "changeset", db=url)
    assert r.exit_code == 3 and "secret" not in r.stderr + r.stdout


def test_unsupported_database_url_exit_2(tmp_path: Path) -> None:
    r = Udx(tmp_path)("changeset", db="mysql://u:secret@h/db")
    assert_one_line_error(r, 2, "unsupported database URL")
    assert "secret" not in r.stderr


# --- config ----------------------------------------------------------------------------------


def test_config_init_and_show(tmp_path: Path) -> None:
    udx = Udx(tmp_path)
    url = "postgresql+psycopg://udx:topsecret@db.example/omicron"
    target = tmp_path / "etc" / "udx.toml"
    r = udx.ok("--config", str(target), "config", "init", db=url)
    assert str(target) in r.stdout and target.exists()
    assert "topsecret" in target.read_text()  # the file holds it (mode 0600) ...
    assert_one_line_error(udx("--config", str(target), "config", "init"), 2, "already exists")
    for args in (("config", "show"), ("config", "show", "--json")):
        r = udx.ok("--config", str(target), *args)
        assert "topsecret" not in r.stdout + r.stderr  # ... show never prints it
        assert "udx:***@db.example/omicron" in r.stdout
    shown = udx.json("--config", str(target), "config", "show")
    assert shown["config_path"] == str(target)
    values = {e["key"]: e["value"] for e in shown["settings"]}
    assert values["coordinator.concurrency"] == 8
    # --db on the command line wins over the file, and is masked too
    r = udx.ok("config", "show", db="postgresql://other:pw12345@h/d")
    assert "pw12345" not in r.stdout and "other:***@h/d" in r.stdout
    # default path under XDG_CONFIG_HOME
    default = tmp_path / "config" / "udx" / "config.toml"
    udx.ok("config", "init")
    assert default.exists()
    other = tmp_path / "explicit.toml"
    udx.ok("config", "init", str(other))
    assert other.exists()
    env = udx.json("config", "show", env={"UDX_COORDINATOR_CONCURRENCY": "3"})
    assert {e["key"]: e["value"] for e in env["settings"]}["coordinator.concurrency"] == 3


# --- failures leave nothing half-written -------------------------------------------------------


def test_failed_init_leaves_no_partial_schema(empty_db_url: str, tmp_path: Path) -> None:
    from sqlalchemy import inspect, text

    db = open_database(empty_db_url)
    with db.begin() as conn:  # a table in the way of the last table 0001 creates
        conn.execute(text("CREATE TABLE pantry (x integer)"))
    db.dispose()
    udx = Udx(tmp_path, empty_db_url)
    assert_one_line_error(udx("db", "init"), 1, "pantry", "rolled back")
    db = open_database(empty_db_url)
    try:
        with db.connect() as conn:
            assert set(inspect(conn).get_table_names()) == {"pantry"}
    finally:
        db.dispose()
    assert udx.json("db", "status")["current"] is None
