"""`udx export list` filters and shapes: --pantry, --resource-id, --since,
--limit/--all (newest 50 on a terminal), --sort, -o json|wide|name, the AGE
column and UTC times with Z; through the CLI, piped and on a terminal."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import pytest
from sqlalchemy import update

from udx import seed
from udx.db.engine import open_database
from udx.db.schema import user_data_export
from udx.domain.model import ResourceType

from ..datastore.helpers import PANTRY_A, PANTRY_B, to_live
from .helpers import Udx, assert_one_line_error

TTY = {"TTY_COMPATIBLE": "1", "COLUMNS": "250", "NO_COLOR": "1"}
PIPE = {"TTY_COMPATIBLE": "0"}


@pytest.fixture
def aged(db_url: str) -> list[uuid.UUID]:
    """60 Live records, record i created i hours ago (modified likewise); even ones
    on PANTRY_A, odd ones on PANTRY_B. Returned newest first."""
    db = open_database(db_url)
    now = dt.datetime.now(dt.UTC)
    ids = []
    with db.begin() as conn:
        for i in range(60):
            pantry = PANTRY_A if i % 2 == 0 else PANTRY_B
            rec = to_live(conn, ResourceType.SNAPSHOT, seed.add_snapshot(conn), pantry=pantry)
            when = now - dt.timedelta(hours=i, minutes=1)
            conn.execute(
                update(user_data_export)
                .where(user_data_export.c.id == rec.id)
                .values(time_created=when, time_modified=when)
            )
            ids.append(rec.id)
    db.dispose()
    return ids


def ids_of(out: str, *, header: bool = True) -> list[str]:
    lines = out.splitlines()[1:] if header else out.splitlines()
    return [ln.split()[0] for ln in lines]


def test_terminal_shows_the_newest_50_and_says_so(udx: Udx, aged: list[uuid.UUID]) -> None:
    out = udx.ok("export", "list", env=TTY).stdout
    assert "export records (50 of 60)" in out
    assert "the newest 50 of 60: --limit N or --all for more" in out
    shown = {m for m in re.findall(r"[0-9a-f-]{36}", out)}
    assert {str(i) for i in aged[:50]} <= shown
    assert not ({str(i) for i in aged[50:]} & shown)
    assert "export records (60)" in udx.ok("export", "list", "--all", env=TTY).stdout
    assert "export records (5 of 60)" in udx.ok("export", "list", "--limit", "5",
                                                env=TTY).stdout
    # Piped: every record unless --limit.
    assert len(ids_of(udx.ok("export", "list", env=PIPE).stdout)) == 60
    assert set(ids_of(udx.ok("export", "list", "--limit", "3", env=PIPE).stdout)) == {
        str(i) for i in aged[:3]
    }
    assert_one_line_error(udx("export", "list", "--all", "--limit", "3"), 2, "--all")
    assert_one_line_error(udx("export", "list", "--limit", "0"), 2, "0 is not")


def test_filters(udx: Udx, aged: list[uuid.UUID], db_url: str) -> None:
    on_b = udx.json("export", "list", "--pantry", "[fd00:1122:3344:101::1]:17000")
    assert {r["id"] for r in on_b} == {str(i) for n, i in enumerate(aged) if n % 2}
    recent = udx.json("export", "list", "--since", "3h")  # created 1m, 1h1m, 2h1m ago
    assert {r["id"] for r in recent} == {str(i) for i in aged[:3]}
    assert len(udx.json("export", "list", "--since", "1d1h")) == 25
    one = udx.json("export", "list", "--json")[7]
    got = udx.json("export", "list", "--resource-id", one["resource_id"])
    assert [r["id"] for r in got] == [one["id"]]
    for args, needle in [
        (["--since", "3 hours"], "expected a duration like 90s"),
        (["--since", ""], "expected a duration"),
        (["--pantry", "10.0.0.1"], "10.0.0.1"),
        (["--resource-id", "nope"], "malformed resource id"),
        (["--sort", "age"], "'age' is not one of: resource, id"),
        (["-o", "yaml"], "'yaml' is not one of: json, wide, name"),
        (["-o", "wide", "--json"], "do not go together"),
    ]:
        assert_one_line_error(udx("export", "list", *args), 2, needle)


def test_sort_and_shapes(udx: Udx, aged: list[uuid.UUID]) -> None:
    by_created = ids_of(udx.ok("export", "list", "--sort", "created", env=PIPE).stdout)
    assert by_created == [str(i) for i in reversed(aged)]  # oldest first
    by_id = ids_of(udx.ok("export", "list", "--sort", "id", env=PIPE).stdout)
    assert by_id == sorted(str(i) for i in aged)
    # -o name: ids only, one a line, no header, on a terminal too.
    names = udx.ok("export", "list", "-o", "name", "--limit", "2", env=TTY).stdout
    assert sorted(names.splitlines()) == sorted(str(i) for i in aged[:2])
    as_o = json.loads(udx.ok("export", "list", "-o", "json", env=PIPE).stdout)
    assert [r["id"] for r in as_o] == [r["id"] for r in udx.json("export", "list")]
    # -o wide adds the full times (UTC, Z); the AGE column is always there.
    plain = udx.ok("export", "list", env=PIPE).stdout.splitlines()
    wide = udx.ok("export", "list", "-o", "wide", env=PIPE).stdout.splitlines()
    assert plain[0].split()[4] == "age" and "created" not in plain[0]
    assert wide[0].split()[-2:] == ["created", "modified"]
    newest = next(ln for ln in wide if ln.startswith(str(aged[0])))
    assert re.fullmatch(r"\d+s|\d+m(\d+s)?", newest.split()[4])  # created a minute ago
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", newest.split()[-1])
    oldest = next(ln for ln in wide if ln.startswith(str(aged[-1])))
    assert oldest.split()[4] in ("59h", "2d11h")


def test_json_times_are_utc_with_z(udx: Udx, aged: list[uuid.UUID]) -> None:
    rec = udx.json("export", "show", str(aged[0]))
    for key in ("time_created", "time_modified"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", rec[key]), rec[key]
