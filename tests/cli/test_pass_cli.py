"""`udx pass` through the CLI (issue 6), on both engines, with simulated pantries:
the --json status shape of DESIGN.md section 7, the summary table, exit codes,
--dry-run, --concurrency and --metrics-file (Prometheus text, written atomically)."""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from udx import seed
from udx.datastore import exports, resources
from udx.datastore import pantries as pantry_sql
from udx.db.engine import Database
from udx.domain.model import ExportState, ResourceType
from udx.pantry.sim import SimulatedPantry, start_simulated_pantries
from udx.testing.invariants import check_invariants, dump_tables

from .helpers import Udx, assert_one_line_error

FAST = {
    "UDX_PANTRY_REQUEST_TIMEOUT_SECS": "1",
    "UDX_PANTRY_RETRY_BUDGET_SECS": "1",
    "UDX_SAGA_LEASE_SECS": "5",
}
INVOCATION_KEYS = {"export_id", "resource_type", "resource_id", "saga_id", "outcome"}
BYPASS_KEYS = {"export_id", "resource_type", "resource_id"}
BOX_CHARS = re.compile("[\u2500-\u257f]")
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def sims() -> Iterator[list[SimulatedPantry]]:
    started = start_simulated_pantries(3)
    yield started
    for sim in started:
        sim.stop()


@pytest.fixture
def registered(db: Database, sims: list[SimulatedPantry]) -> list[SimulatedPantry]:
    with db.begin() as conn:
        for sim in sims:
            pantry_sql.add(conn, sim.address)
    return sims


@pytest.fixture
def cli(udx: Udx) -> Udx:
    udx.env.update(FAST)
    return udx


def attachments(sims: list[SimulatedPantry]) -> dict[str, list[str]]:
    return {str(s.address): list(s.attachments) for s in sims if s.running}


@pytest.fixture
def fleet(db: Database) -> dict[str, Any]:
    """Two snapshots, a project and a silo image (no records yet), and a
    Requested record whose snapshot was deleted (the pass bypasses it)."""
    with db.begin() as conn:
        refs = seed.seed_fleet(conn, snapshots=2, project_images=1, silo_images=1)
        gone = seed.add_snapshot(conn)
        doomed = exports.create(conn, uuid.uuid4(), ResourceType.SNAPSHOT, gone)
        resources.soft_delete(conn, ResourceType.SNAPSHOT, [gone])
    return {"refs": refs, "gone": gone, "doomed": doomed.id}


def _check_status_shape(status: dict[str, Any]) -> None:
    """DESIGN.md section 7: the keys, and the types of every value."""
    for key in ("create_invoked_ok", "delete_invoked_ok", "records_bypassed_ok", "errors"):
        assert isinstance(status[key], list), key
    for key in ("records_marked_for_deletion", "records_marked_lost"):
        assert type(status[key]) is int, key
    for item in status["create_invoked_ok"] + status["delete_invoked_ok"]:
        assert set(item) >= INVOCATION_KEYS, item
        assert item["outcome"] in ("succeeded", "unwound", "stuck", "skipped"), item
        assert item["resource_type"] in ("snapshot", "image")
        uuid.UUID(item["export_id"]), uuid.UUID(item["resource_id"])
        if item["outcome"] != "skipped" or item["saga_id"] is not None:
            uuid.UUID(item["saga_id"])
    for item in status["records_bypassed_ok"]:
        assert set(item) == BYPASS_KEYS, item
    assert all(isinstance(e, str) for e in status["errors"])
    assert all(isinstance(w, str) for w in status["warnings"])


def test_pass_json_status(
    cli: Udx, db: Database, registered: list[SimulatedPantry], fleet: dict[str, Any]
) -> None:
    r = cli.ok("pass", "--json")
    assert r.stderr == ""
    status = json.loads(r.stdout)
    _check_status_shape(status)
    assert status["errors"] == []
    assert status["records_marked_for_deletion"] == 0 and status["records_marked_lost"] == 0
    assert status["delete_invoked_ok"] == []
    assert status["records_bypassed_ok"] == [
        {
            "export_id": str(fleet["doomed"]),
            "resource_type": "snapshot",
            "resource_id": str(fleet["gone"]),
        }
    ]
    creates = status["create_invoked_ok"]
    assert [c["outcome"] for c in creates] == ["succeeded"] * 4
    assert {(c["resource_type"], c["resource_id"]) for c in creates} == {
        (ref.resource_type.value, str(ref.resource_id)) for ref in fleet["refs"]
    }
    with db.connect() as conn:
        live = {str(r.id): r for r in exports.list_exports(conn, states=[ExportState.LIVE])}
        doomed = exports.get_required(conn, fleet["doomed"])
    assert {c["export_id"] for c in creates} == set(live)
    assert len({c["saga_id"] for c in creates}) == 4
    assert doomed.state is ExportState.DELETED
    assert check_invariants(db, attachments(registered)) == []
    # A second pass has nothing to do: empty lists, zero counts, exit 0.
    again = cli.json("pass")
    _check_status_shape(again)
    assert again["create_invoked_ok"] == again["delete_invoked_ok"] == []
    assert again["records_bypassed_ok"] == [] and again["errors"] == []


def test_pass_delete_and_mark_counts_in_json(
    cli: Udx, db: Database, registered: list[SimulatedPantry]
) -> None:
    with db.begin() as conn:
        snap, img = seed.seed_fleet(conn, snapshots=1, project_images=1)
    cli.ok("pass", "--json")
    with db.connect() as conn:
        on = {r.resource_id: r for r in exports.list_exports(conn)}
    victim = next(s for s in registered if s.address == on[img.resource_id].pantry_address)
    with db.begin() as conn:
        resources.soft_delete(conn, ResourceType.SNAPSHOT, [snap.resource_id])
    victim.restart()  # forgets the image's attachment: the record is lost
    status = cli.json("pass")
    _check_status_shape(status)
    assert status["records_marked_lost"] == (
        1 if on[snap.resource_id].pantry_address != victim.address else 2
    )
    deletes = {(d["resource_type"], d["resource_id"]): d for d in status["delete_invoked_ok"]}
    assert deletes[("snapshot", str(snap.resource_id))]["outcome"] == "succeeded"
    assert deletes[("snapshot", str(snap.resource_id))]["export_id"] == str(on[snap.resource_id].id)
    assert ("image", str(img.resource_id)) in deletes
    assert status["errors"] == []


def test_pass_summary_table(
    cli: Udx, db: Database, registered: list[SimulatedPantry], fleet: dict[str, Any]
) -> None:
    out = cli.ok("pass").stdout
    lines = out.splitlines()
    # Piped: `item  count` lines, nothing above them (the title is for a terminal).
    rows = {re.split(r"\s{2,}", ln.strip())[0]: ln.split()[-1] for ln in lines if ln.strip()}
    assert lines[0].startswith("create sagas succeeded")
    assert all(ln == ln.rstrip() for ln in lines)
    assert rows["create sagas succeeded"] == "4"
    assert rows["records bypassed to deleted"] == "1"
    assert rows["records marked for deletion (expunged pantry)"] == "0"
    assert rows["errors"] == "0"
    assert not BOX_CHARS.search(out)  # piped: plain columns
    assert "error:" not in out


def test_pass_exit_1_when_a_saga_unwinds(
    cli: Udx, db: Database, registered: list[SimulatedPantry]
) -> None:
    with db.begin() as conn:
        (snap,) = seed.seed_fleet(conn, snapshots=1)
    for sim in registered:
        sim.fail_next(10_000, 500, method="POST")  # every attach fails
    env = {"UDX_PANTRY_RETRY_BUDGET_SECS": "0.5"}
    r = cli("pass", "--json", env=env)
    assert r.exit_code == 1, (r.stdout, r.stderr)
    status = json.loads(r.stdout)
    _check_status_shape(status)
    (inv,) = status["create_invoked_ok"]
    assert inv["outcome"] == "unwound" and inv["resource_id"] == str(snap.resource_id)
    assert status["errors"], status
    with db.connect() as conn:
        (rec,) = exports.list_exports(conn)
    assert rec.state is ExportState.REQUESTED and rec.operating_saga_id is None
    assert all(s.attachments == {} for s in registered)
    # The table form exits 1 as well and names the failure.
    r = cli("pass", env=env)
    assert r.exit_code == 1
    assert re.search(r"create sagas unwound\s+1", r.stdout), r.stdout
    assert "error: " in r.stdout
    # Each pass error is also logged at ERROR on stderr, for cron and log shippers;
    # the pantries that failed the attaches are WARNINGs (not picked again).
    err_lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert any("ERROR" in ln for ln in err_lines), r.stderr
    assert all("ERROR" in ln or "WARNING" in ln for ln in err_lines), r.stderr
    assert "failed a call in this pass" in r.stderr


def _but_history(tables: dict[str, Any]) -> dict[str, Any]:
    return {name: rows for name, rows in tables.items() if name != "pass_run"}


def test_dry_run_writes_nothing_and_prints_the_plan(
    cli: Udx, db: Database, registered: list[SimulatedPantry], fleet: dict[str, Any]
) -> None:
    before = dump_tables(db)
    out = cli.ok("pass", "--dry-run").stdout
    # Nothing but its own history row (dry run: yes).
    assert _but_history(dump_tables(db)) == _but_history(before)
    (run,) = cli.json("pass", "history")
    assert run["dry_run"] is True and run["result"] == "ok" and run["errors"] == []
    assert run["counts"]["planned"]["3-request"] == len(fleet["refs"])
    before = dump_tables(db)
    assert sum(s.total_attach_calls + s.total_detach_calls for s in registered) == 0
    assert out.splitlines()[0].split() == ["step", "would", "export", "type", "resource", "detail"]
    assert not BOX_CHARS.search(out)
    for ref in fleet["refs"]:
        line = next(ln for ln in out.splitlines() if str(ref.resource_id) in ln)
        assert "3-request" in line and "create record and run the create saga" in line
    doomed = [ln.split()[:2] for ln in out.splitlines() if str(fleet["doomed"]) in ln]
    assert doomed == [["2-changeset", "mark"], ["4-delete", "bypass"]]

    plan = cli.json("pass", "--dry-run")
    assert _but_history(dump_tables(db)) == _but_history(before)
    assert len(cli.json("pass", "history")) == 2
    assert plan["dry_run"] is True and plan["errors"] == []
    steps = plan["steps"]
    assert all(
        set(s) == {"step", "action", "export_id", "resource_type", "resource_id", "detail"}
        for s in steps
    )
    requested = {s["resource_id"] for s in steps if s["step"] == "3-request"}
    assert requested == {str(ref.resource_id) for ref in fleet["refs"]}
    assert [s["export_id"] for s in steps if s["step"] == "4-delete"] == [str(fleet["doomed"])]
    assert sum(s.total_attach_calls + s.total_detach_calls for s in registered) == 0


def test_dry_run_with_nothing_to_do(cli: Udx, registered: list[SimulatedPantry]) -> None:
    out = cli.ok("pass", "--dry-run").stdout
    assert "nothing to do" in out
    assert cli.json("pass", "--dry-run") == {"dry_run": True, "steps": [], "errors": []}


def test_bad_concurrency_is_exit_2(tmp_path: Path) -> None:
    udx = Udx(tmp_path, f"sqlite:///{tmp_path / 'none.sqlite3'}")
    for value in ("0", "-1", "257", "many"):
        assert_one_line_error(udx("pass", "--concurrency", value), 2, "--concurrency")
    assert not (tmp_path / "none.sqlite3").exists()  # refused before opening anything


def test_concurrency_one_still_runs_every_saga(
    cli: Udx, db: Database, registered: list[SimulatedPantry], fleet: dict[str, Any]
) -> None:
    status = cli.json("pass", "--concurrency", "1")
    assert [c["outcome"] for c in status["create_invoked_ok"]] == ["succeeded"] * 4


# --- metrics ------------------------------------------------------------------------------------

SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*)?\})?'
    r" (?P<value>\S+)$"
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A strict reader of the text exposition format (version 0.0.4)."""
    assert text.endswith("\n")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    helped: set[str] = set()
    typed: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in helped, line
            helped.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in typed, line
            typed[name] = kind
            continue
        assert line and not line.startswith("#"), repr(line)
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name = m["name"]
        assert name in typed and name in helped, f"sample before its HELP/TYPE: {line!r}"
        labels = tuple(LABEL.findall(m["labels"] or ""))
        value = float(m["value"])
        assert math.isfinite(value), line
        key = (name, labels)
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = value
    assert helped == set(typed), "every metric has HELP and TYPE"
    for name in typed:
        assert any(k[0] == name for k in samples), f"metric {name} has no sample"
    return samples


def _sagas(samples: dict[Any, float], kind: str, outcome: str) -> float:
    return samples[("udx_pass_sagas", (("saga", kind), ("outcome", outcome)))]


def test_metrics_file_matches_the_status(
    cli: Udx,
    db: Database,
    registered: list[SimulatedPantry],
    fleet: dict[str, Any],
    tmp_path: Path,
) -> None:
    out_dir = tmp_path / "textfile"
    out_dir.mkdir()
    prom = out_dir / "udx.prom"
    started = time.time()
    status = json.loads(cli.ok("pass", "--json", "--metrics-file", str(prom)).stdout)
    samples = parse_prometheus(prom.read_text())
    assert sorted(os.listdir(out_dir)) == ["udx.prom"]  # no temp file left behind
    assert prom.stat().st_mode & 0o777 == 0o644  # readable by node_exporter
    created = len(status["create_invoked_ok"])
    assert created == 4
    assert _sagas(samples, "create", "succeeded") == created
    for outcome in ("skipped", "unwound", "stuck"):
        assert _sagas(samples, "create", outcome) == 0
        assert _sagas(samples, "delete", outcome) == 0
    assert _sagas(samples, "delete", "succeeded") == 0
    assert samples[("udx_pass_records_bypassed", ())] == len(status["records_bypassed_ok"]) == 1
    assert samples[("udx_pass_records_marked_for_deletion", ())] == 0
    assert samples[("udx_pass_records_marked_lost", ())] == 0
    assert samples[("udx_pass_errors", ())] == 0
    assert samples[("udx_pass_success", ())] == 1
    stamp = samples[("udx_pass_last_run_timestamp_seconds", ())]
    assert started - 1 <= stamp <= time.time() + 1, stamp

    # A failing pass replaces the file: success 0, the unwound saga and the errors counted.
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=1)
    for sim in registered:
        sim.fail_next(10_000, 500, method="POST")
    r = cli(
        "pass", "--json", "--metrics-file", str(prom), env={"UDX_PANTRY_RETRY_BUDGET_SECS": "0.5"}
    )
    assert r.exit_code == 1
    failed = json.loads(r.stdout)
    samples = parse_prometheus(prom.read_text())
    assert sorted(os.listdir(out_dir)) == ["udx.prom"]
    assert _sagas(samples, "create", "unwound") == 1
    assert samples[("udx_pass_errors", ())] == len(failed["errors"]) >= 1
    assert samples[("udx_pass_success", ())] == 0


@SQLITE_ONLY  # the file handling does not depend on the engine
def test_metrics_file_is_replaced_atomically(
    cli: Udx, registered: list[SimulatedPantry], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import udx.metrics

    prom = tmp_path / "new-dir" / "udx.prom"  # the directory is created
    real_replace = os.replace
    renames: list[tuple[str, str, str]] = []

    def spy(src: str, dst: str) -> None:
        renames.append((str(src), str(dst), Path(src).read_text()))
        real_replace(src, dst)

    monkeypatch.setattr(udx.metrics.os, "replace", spy)
    cli.ok("pass", "--metrics-file", str(prom))
    ((src, dst, text),) = renames  # written elsewhere, then renamed over the target
    assert Path(src).parent == prom.parent and src != dst and dst == str(prom)
    assert text == prom.read_text() and parse_prometheus(text)
    assert os.listdir(prom.parent) == ["udx.prom"]

    # When the rename fails, the old file stays whole and no temp file is left.
    def broken(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(udx.metrics.os, "replace", broken)
    r = cli("pass", "--metrics-file", str(prom))
    assert r.exit_code == 1
    assert "records bypassed to deleted" in r.stdout  # the status is still reported
    assert prom.read_text() == text
    assert os.listdir(prom.parent) == ["udx.prom"]
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("udx: error: ") and str(prom) in lines[0]


@SQLITE_ONLY  # the file handling does not depend on the engine
def test_metrics_file_in_a_directory_that_cannot_be_written(
    cli: Udx, registered: list[SimulatedPantry], tmp_path: Path
) -> None:
    target = tmp_path / "a-file"
    target.write_text("not a directory")
    r = cli("pass", "--metrics-file", str(target / "udx.prom"))
    assert_one_line_error(r, 2, "--metrics-file", str(target / "udx.prom"))
    r = cli("pass", "--metrics-file", str(tmp_path))
    assert_one_line_error(r, 2, "--metrics-file", "is a directory")
    # Checked before the pass: nothing ran.
    assert sum(len(s.requests) for s in registered) == 0


@SQLITE_ONLY  # the file handling does not depend on the engine
def test_metrics_file_with_dry_run_is_bad_usage(
    cli: Udx, registered: list[SimulatedPantry], tmp_path: Path
) -> None:
    prom = tmp_path / "udx.prom"
    r = cli("pass", "--dry-run", "--metrics-file", str(prom))
    assert_one_line_error(r, 2, "--dry-run")
    assert not prom.exists()


@SQLITE_ONLY
def test_unreachable_inventory_exits_3_with_the_status(cli: Udx, fleet: dict[str, Any]) -> None:
    # DESIGN.md section 7: an inventory that cannot be read is exit 3, like the database.
    env = {
        "UDX_PANTRY_SOURCE": "dns",
        "UDX_PANTRY_DNS_SERVERS": "127.0.0.1:9",  # nothing answers DNS there
        "UDX_PANTRY_REQUEST_TIMEOUT_SECS": "0.3",
    }
    r = cli("pass", "--json", env=env)
    assert r.exit_code == 3, (r.stdout, r.stderr)
    status = json.loads(r.stdout)
    assert any("pantry inventory" in e for e in status["errors"])
    assert "inventory_unavailable" not in status  # the JSON shape is unchanged


def test_a_record_created_first_by_another_pass_is_reported_skipped(
    db: Database, registered: list[SimulatedPantry], monkeypatch: pytest.MonkeyPatch
) -> None:
    from udx.config import Settings
    from udx.datastore import changeset
    from udx.domain.model import Changeset, ResourceRef
    from udx.runtime import build_runtime

    with db.begin() as conn:
        (ref,) = seed.seed_fleet(conn, snapshots=1)
        winner = exports.create(conn, uuid.uuid4(), ref.resource_type, ref.resource_id)
    # This pass computed its changeset before the other pass inserted `winner`.
    stale = Changeset(request_required=[ResourceRef(ref.resource_type, ref.resource_id)])
    monkeypatch.setattr(changeset, "compute", lambda conn: stale)
    rt = build_runtime(db, Settings(), concurrency=1)
    try:
        status = rt.coordinator.run_pass()
    finally:
        rt.close()
    assert [(i.export_id, i.outcome, i.saga_id) for i in status.create_invoked_ok] == [
        (str(winner.id), "skipped", None)
    ]
    assert status.errors == [] and not status.failed


def test_bounded_pass_defers_and_exits_0(
    cli: Udx, db: Database, registered: list[SimulatedPantry], fleet: dict[str, Any], tmp_path: Path
) -> None:
    prom = tmp_path / "udx.prom"
    r = cli("pass", "--json", "--max-sagas", "1", "--metrics-file", str(prom))
    assert r.exit_code == 0, (r.stdout, r.stderr)  # deferral alone is not a failure
    status = json.loads(r.stdout)
    _check_status_shape(status)
    assert len(status["create_invoked_ok"]) == 1 and status["deferred"] == 3
    assert parse_prometheus(prom.read_text())[("udx_pass_deferred", ())] == 3
    # The config key (here from the environment) bounds it too; the table says so.
    r = cli("pass", env={"UDX_COORDINATOR_MAX_SAGAS": "2"})
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert re.search(r"sagas deferred to the next pass\s+1", r.stdout), r.stdout
    status = json.loads(cli.ok("pass", "--json", "--deadline", "60").stdout)
    assert len(status["create_invoked_ok"]) == 1 and status["deferred"] == 0
    with db.connect() as conn:
        assert {r.state for r in exports.list_exports(conn)} == {
            ExportState.LIVE,
            ExportState.DELETED,
        }
    r = cli("pass", "--max-sagas", "0")
    assert r.exit_code == 2
    r = cli("pass", env={"UDX_COORDINATOR_DEADLINE_SECS": "-1"})
    assert r.exit_code == 2 and "deadline_secs" in r.stderr


# --- progress ----------------------------------------------------------------------------------


def test_progress_counts_each_kind_with_rate_and_eta() -> None:
    from udx.cli.progress import PassProgress

    now = [100.0]
    p = PassProgress(clock=lambda: now[0])
    for event, n in [("total:export-create", 10), ("total:export-delete", 2), ("total", 12)]:
        p.event(event, n)
    assert p.event("advance", 1) is None  # the sums are not counted twice
    now[0] = 104.0
    for _ in range(4):
        assert p.event("done:export-create", 1) == "create"
    assert p.event("done:some-other-saga", 1) is None
    assert p.line() == "create 4/10, delete 0/2; 1.0 sagas/s, ETA 8s"
    for _ in range(6):
        p.event("done:export-create", 1)
    p.event("done:export-delete", 2)
    assert p.line() == "create 10/10, delete 2/2; 3.0 sagas/s"


def test_progress_every_logs_info_lines_when_not_on_a_terminal(
    cli: Udx, registered: list[SimulatedPantry], fleet: dict[str, Any]
) -> None:
    r = cli("pass", "--progress-every", "1")
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "pass progress" in ln]
    assert lines and lines[-1].startswith("udx: INFO udx.pass.progress: pass progress: create 4/4")
    assert lines[-1].endswith("(done)") and "sagas/s" in lines[-1]
    # Without the option, a pass under cron logs no progress at all.
    r = cli("pass")
    assert r.exit_code == 0 and "pass progress" not in r.stderr
    assert_one_line_error(cli("pass", "--progress-every", "0"), 2, "--progress-every")
