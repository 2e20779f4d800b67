"""The operator's commands on the one table writer (udx.cli.tables): `udx pass
history`, `udx volume list|show`, `udx status`, `udx whatis`, `udx export
diagnose` on a terminal (TTY_COMPATIBLE=1, COLUMNS, NO_COLOR), piped, and the
--limit/--all paging of pass history and volume list; real CLI, both engines."""

from __future__ import annotations

import re
import time

from udx import seed
from udx.db.engine import Database
from udx.pantry.sim import SimulatedPantry

from .helpers import Udx, assert_one_line_error

ESCAPE = re.compile(r"\x1b")
BOX = re.compile(r"[│─╭╮╰╯┃━]")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PIPED = {"TTY_COMPATIBLE": "0", "COLUMNS": "30"}  # a terminal width must not matter piped


def tty(width: int, *, color: bool = False) -> dict[str, str]:
    env = {"TTY_COMPATIBLE": "1", "COLUMNS": str(width)}
    if not color:
        env["NO_COLOR"] = "1"
    return env


def assert_plain(out: str) -> list[str]:
    lines = out.splitlines()
    assert not BOX.search(out) and not ESCAPE.search(out), out
    assert all(ln == ln.rstrip() for ln in lines), out
    return lines


def test_pass_history_pages_and_renders(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    for _ in range(3):
        cli.ok("pass")
        time.sleep(0.01)  # distinct start times
    runs = cli.json("pass", "history")
    assert len(runs) == 3
    assert [r["started"] for r in runs] == sorted((r["started"] for r in runs), reverse=True)
    assert [r["id"] for r in cli.json("pass", "history", "--limit", "2")] == [
        r["id"] for r in runs[:2]
    ]
    assert len(cli.json("pass", "history", "--limit", "1", "--all")) == 3
    assert_one_line_error(cli("pass", "history", "--limit", "0"), 2)

    lines = assert_plain(cli.ok("pass", "history", env=PIPED).stdout)
    assert lines[0].split()[:3] == ["id", "started", "host"] and len(lines) == 4
    assert [ln.split()[0] for ln in lines[1:]] == [r["id"] for r in runs]
    assert all(ln.split()[6] == "ok" for ln in lines[1:])  # the result column
    bare = cli.ok("pass", "history", "--no-headers", env=PIPED).stdout.splitlines()
    assert [ln.split() for ln in bare] == [ln.split() for ln in lines[1:]]

    out = cli.ok("pass", "history", "--limit", "2", env=tty(80)).stdout
    assert not ESCAPE.search(out) and "passes (2 of 3)" in out
    assert "the newest 2 of 3: --limit N or --all for more" in out
    assert all(len(ln) <= 80 for ln in out.splitlines()), out
    for r in runs[:2]:
        assert sum(r["id"] in ln for ln in out.splitlines()) == 1  # whole, once
    assert ESCAPE.search(cli.ok("pass", "history", env=tty(160, color=True)).stdout)


def test_volume_list_pages_newest_first(udx: Udx, db: Database) -> None:
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=4)
    every = udx.json("volume", "list", "--all")
    assert len(every) == 4
    created = [v["time_created"] for v in every]
    assert created == sorted(created, reverse=True)
    two = udx.json("volume", "list", "--limit", "2")
    assert [v["id"] for v in two] == [v["id"] for v in every[:2]]
    assert len(udx.json("volume", "list")) == 4  # default: the newest 50

    lines = assert_plain(udx.ok("volume", "list", env=PIPED).stdout)
    assert lines[0].split()[:2] == ["id", "state"] and len(lines) == 5
    assert {ln.split()[0] for ln in lines[1:]} == {v["id"] for v in every}
    out = udx.ok("volume", "list", "--limit", "3", env=tty(80)).stdout
    assert "live volumes (3 of 4)" in out and "the newest 3 of 4" in out
    assert all(len(ln) <= 80 for ln in out.splitlines()), out
    for v in every[:3]:
        assert sum(v["id"] in ln for ln in out.splitlines()) == 1
    assert not ESCAPE.search(out)

    vid = every[0]["id"]
    lines = assert_plain(udx.ok("volume", "show", vid, env=PIPED).stdout)
    assert lines[0].split() == ["id", vid]
    assert "== read-only targets (" + str(every[0]["targets"]) + ")" in lines
    out = udx.ok("volume", "show", vid, env=tty(100)).stdout
    assert f"volume {vid}" in out and "read-only targets (" in out and not ESCAPE.search(out)


def test_status_whatis_and_diagnose_piped_and_on_a_terminal(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=1)
    cli.ok("pass")
    (rec,) = cli.json("export", "list")
    lines = assert_plain(cli.ok("status", env=PIPED).stdout)
    fields = {ln.split("  ")[0]: ln for ln in lines}
    assert "last pass" in fields and ": ok, took " in fields["last pass"]
    assert "healthy" in lines
    out = cli.ok("status", env=tty(80)).stdout
    assert "udx status" in out and "healthy" in out and not ESCAPE.search(out)

    lines = assert_plain(cli.ok("whatis", rec["id"], env=PIPED).stdout)
    assert lines[0].split() == ["kind", "what", "next"] and lines[1].startswith("export ")
    out = cli.ok("whatis", rec["id"], env=tty(80)).stdout
    assert rec["id"] in out and not ESCAPE.search(out)
    assert all(len(ln) <= 80 for ln in out.splitlines()), out

    lines = assert_plain(cli.ok("export", "diagnose", rec["id"], env=PIPED).stdout)
    assert lines[0].split() == ["id", rec["id"]]
    assert lines[-1].startswith("verdict: healthy")
    out = cli.ok("export", "diagnose", rec["id"], env=tty(80)).stdout
    assert f"export {rec['id']}" in out and not ESCAPE.search(out)
    assert ESCAPE.search(cli.ok("export", "diagnose", rec["id"], env=tty(80, color=True)).stdout)


def test_release_piped_and_on_a_terminal(
    cli: Udx, db: Database, sims: list[SimulatedPantry]
) -> None:
    from .test_stuck_exports import requested_record, stuck_create

    first, second = requested_record(db), requested_record(db)
    s1, s2 = stuck_create(db, sims, first), stuck_create(db, sims, second)
    args = ("--yes",)
    lines = assert_plain(
        cli.ok("export", "release", str(first), "--saga", str(s1), *args, env=PIPED).stdout
    )
    assert lines[0] == f"== release export {first}"
    fields = [ln.split(None, 1) for ln in lines if not ln.startswith("==")]
    assert ["id", str(first)] in fields and ["state", "assigning"] in fields
    assert any(ln.startswith("held by saga") and f"{s1} (export-create, done, stuck)" in ln
               for ln in lines)
    wills = [ln for ln in lines if ln.startswith("will ")]
    assert len(wills) == 3 and "detach volume" in wills[0]
    at = lines.index(f"== export {first} released")
    after = lines[at + 1:]
    assert after[1].split() == ["state", "requested"]
    assert any(ln.startswith("done ") and ": detached" in ln for ln in after)
    assert after[-1].startswith(f"export {first} released: now requested;")

    out = cli.ok(
        "export", "release", str(second), "--saga", str(s2), *args, env=tty(100)
    ).stdout
    assert not ESCAPE.search(out) and "==" not in out
    assert f"release export {second}" in out and f"export {second} released" in out
    assert all(len(ln) <= 100 for ln in out.splitlines()), out
