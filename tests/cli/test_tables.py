"""The table writer (udx.cli.tables): on a terminal 80 and 160 columns wide
(TTY_COMPATIBLE=1, COLUMNS), piped, with NO_COLOR, directly and through the list
commands. Ids are never wrapped or cut; columns that do not fit are dropped whole."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from pathlib import Path

import pytest

from udx import seed
from udx.cli.tables import Column, fmt_age, fmt_time, write_fields, write_table
from udx.datastore import pantries
from udx.db.engine import open_database
from udx.domain.address import PantryAddress
from udx.domain.model import ResourceType

from ..datastore.helpers import PANTRY_A, PANTRY_B, to_live
from .helpers import Udx

ESCAPE = re.compile(r"\x1b")
BOX = re.compile(r"[│─╭╮╰╯┃━]")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def terminal(monkeypatch: pytest.MonkeyPatch, width: int, *, color: bool = False) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", str(width))
    if color:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", "1")


def piped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    monkeypatch.setenv("COLUMNS", "30")  # a terminal setting must not matter when piped


COLUMNS = (
    Column("id", key=True),
    Column("state"),
    Column("resource", priority=2),
    Column("detail", priority=3),
    Column("volume", wide=True),
)


def rows(n: int = 3) -> list[list[str]]:
    return [
        [str(uuid.uuid4()), "live", str(uuid.uuid4()), "attached on 10.0.0.1", "-"]
        for _ in range(n)
    ]


# --- write_table directly ----------------------------------------------------------------------


def test_piped_is_header_then_rows_aligned_without_trailing_spaces(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    piped(monkeypatch)
    data = rows()
    data[1][1] = "requested"
    write_table(COLUMNS, data, title="things", total=10)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "id                                    state      resource" + " " * 28 + (
        "  detail"
    )
    assert len(lines) == 4 and "things" not in "".join(lines)  # no title, no count
    for line, row in zip(lines[1:], data, strict=True):
        assert line == line.rstrip()
        assert re.split(r"\s{2,}", line) == row[:4]  # the wide column only with wide=True
        assert line.index(row[2]) == lines[0].index("resource")  # aligned
    write_table(COLUMNS, data, title="things", wide=True, headers=False)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith(data[0][0])
    assert lines[0].endswith("  -") and "volume" not in lines[0]


def test_piped_right_justified_and_multiline_cells(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    piped(monkeypatch)
    write_table(
        (Column("name"), Column("n", justify="right"), Column("error")),
        [["a", "5", "line one\nline two"], ["bb", "100", "-"]],
        title="t",
    )
    assert capsys.readouterr().out == (
        "name    n  error\na       5  line one line two\nbb    100  -\n"
    )


def test_piped_empty_table_is_the_header_alone(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    piped(monkeypatch)
    write_table(COLUMNS, [], title="things")
    assert capsys.readouterr().out == "id  state  resource  detail\n"
    write_table(COLUMNS, [], title="things", headers=False)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("width", [80, 160])
def test_terminal_keeps_ids_whole_and_drops_columns_that_do_not_fit(
    width: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal(monkeypatch, width)
    data = rows(4)
    write_table(COLUMNS, data, title="things", total=9)
    out = capsys.readouterr().out
    assert "things (4 of 9)" in out
    assert not ESCAPE.search(out) and BOX.search(out)
    lines = out.splitlines()
    assert all(len(ln) <= width for ln in lines), out
    for row in data:
        assert any(row[0] in ln for ln in lines), out  # each id whole on one line
    if width == 80:  # id 36 + state + detail fit; the second uuid does not
        assert not any(row[2] in out for row in data)
        assert "attached on 10.0.0.1" in out
        assert "left out to fit 80 columns: resource" in out
    else:
        assert all(row[2] in out for row in data) and "left out" not in out
    assert "volume" not in out  # wide only


def test_terminal_drops_highest_priority_number_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal(monkeypatch, 60)
    cols = (Column("id", key=True), Column("a", priority=1), Column("b", priority=9),
            Column("c", priority=2))
    write_table(cols, [[str(uuid.uuid4()), "x" * 6, "y" * 6, "z" * 6]], title="t")
    out = capsys.readouterr().out
    assert "xxxxxx" in out and "zzzzzz" in out and "yyyyyy" not in out
    assert "left out to fit 60 columns: b" in out


def test_terminal_too_narrow_for_the_ids_lets_lines_run_long_rather_than_cut(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal(monkeypatch, 40)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    write_table((Column("a", key=True), Column("b", key=True), Column("s")), [[a, b, "x"]],
                title="t")
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if a in ln]
    assert b in line  # both whole, on the same line
    assert "left out to fit 40 columns: s" in out


def test_terminal_prose_columns_wrap_instead_of_being_dropped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal(monkeypatch, 80)
    sid = str(uuid.uuid4())
    error = "the pantry at 10.0.0.1:17000 answered 503 three times in a row " * 2
    write_table((Column("saga", key=True), Column("error", priority=3)), [[sid, error]],
                title="t")
    out = capsys.readouterr().out
    assert sid in out and "503" in out and "left out" not in out
    assert all(len(ln) <= 80 for ln in out.splitlines())


def test_terminal_colour_and_no_color(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = [["[fd00::a:5ce6]:17000", "in_service"]]  # not markup, not an emoji code
    cols = (Column("address", key=True), Column("state"))
    terminal(monkeypatch, 80, color=True)
    write_table(cols, data, title="pantries", headers=False)
    styled = capsys.readouterr().out
    assert ESCAPE.search(styled)
    terminal(monkeypatch, 80)
    write_table(cols, data, title="pantries", headers=False)
    plain = capsys.readouterr().out
    assert not ESCAPE.search(plain)
    assert "[fd00::a:5ce6]:17000" in plain and "pantries (1)" in plain
    assert "address" not in plain  # headers=False on a terminal too


def test_write_fields(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fields = [("id", str(uuid.uuid4())), ("state", "live"), ("marked for deletion", "no")]
    piped(monkeypatch)
    write_fields("export x", fields)
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"{name:<19}  {value}".rstrip() for name, value in fields
    ]
    terminal(monkeypatch, 80)
    write_fields("export x", fields)
    out = capsys.readouterr().out
    assert "export x" in out and fields[0][1] in out and not ESCAPE.search(out)


def test_fmt_time_and_age() -> None:
    t = dt.datetime(2026, 12, 2, 0, 27, 15, 999, tzinfo=dt.UTC)
    assert fmt_time(t) == "2026-12-02T00:27:15Z"
    assert fmt_time(t.replace(tzinfo=None)) == "2026-12-02T00:27:15Z"  # naive is UTC
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert fmt_time(t.astimezone(plus2)) == "2026-12-02T00:27:15Z"
    assert fmt_time(None) == "-" and fmt_age(None) == "-"
    cases = {
        dt.timedelta(seconds=-5): "0s",
        dt.timedelta(seconds=45): "45s",
        dt.timedelta(seconds=200): "3m20s",
        dt.timedelta(minutes=5): "5m",
        dt.timedelta(minutes=90): "90m",
        dt.timedelta(hours=7, minutes=5): "7h5m",
        dt.timedelta(hours=30): "30h",
        dt.timedelta(days=2, hours=3): "2d3h",
        dt.timedelta(days=12): "12d",
        dt.timedelta(days=800): "2y",
    }
    for ago, text in cases.items():
        assert fmt_age(t - ago, now=t) == text, ago


# --- through the commands ------------------------------------------------------------------------


@pytest.fixture
def many(db_url: str) -> list[uuid.UUID]:
    """30 Live records (on two pantries, one IPv6) and the pantries in the table."""
    db = open_database(db_url)
    with db.begin() as conn:
        ids = [
            to_live(conn, ResourceType.SNAPSHOT, seed.add_snapshot(conn),
                    pantry=PANTRY_B if i % 2 else PANTRY_A).id
            for i in range(30)
        ]
        pantries.add(conn, PANTRY_A)
        pantries.add(conn, PANTRY_B)
        pantries.add(conn, PantryAddress.parse("127.0.0.1:17000"))
    db.dispose()
    return ids


@pytest.mark.parametrize("width", [80, 160])
def test_export_list_on_a_terminal(udx: Udx, many: list[uuid.UUID], width: int) -> None:
    env = {"TTY_COMPATIBLE": "1", "COLUMNS": str(width), "NO_COLOR": "1"}
    out = udx.ok("export", "list", env=env).stdout
    lines = out.splitlines()
    assert "export records (30)" in out
    assert not ESCAPE.search(out)
    assert all(len(ln) <= width for ln in lines), out
    for eid in many:
        (line,) = [ln for ln in lines if str(eid) in ln]  # whole, once
        assert "live" in line
    shown = {m for ln in lines for m in UUID_RE.findall(ln)}
    if width == 80:
        assert shown == {str(e) for e in many}  # no other uuid column fits
        assert "left out to fit 80 columns" in out
    else:
        assert "10.0.0.1:17000" in out and "[fd00:1122:3344:101::1]:17000" in out


def test_pantry_list_at_80_keeps_addresses_whole(udx: Udx, many: list[uuid.UUID]) -> None:
    env = {"TTY_COMPATIBLE": "1", "COLUMNS": "80", "NO_COLOR": "1"}
    out = udx.ok("pantry", "list", "--no-check", env=env).stdout
    for addr in ("10.0.0.1:17000", "[fd00:1122:3344:101::1]:17000", "127.0.0.1:17000"):
        assert sum(addr in ln for ln in out.splitlines()) == 1, out
    assert "pantries (source db) (3)" in out
    assert all(len(ln) <= 80 for ln in out.splitlines())


@pytest.mark.parametrize(
    "args",
    [["export", "list"], ["pantry", "list", "--no-check"], ["saga", "list"]],
)
def test_list_commands_piped_and_no_headers(
    udx: Udx, many: list[uuid.UUID], args: list[str]
) -> None:
    env = {"TTY_COMPATIBLE": "0", "COLUMNS": "40", "NO_COLOR": "1"}
    out = udx.ok(*args, env=env).stdout
    lines = out.splitlines()
    assert not BOX.search(out) and not ESCAPE.search(out)
    assert all(ln == ln.rstrip() for ln in lines)
    assert "(" not in lines[0]  # the header, no title or count above it
    bare = udx.ok(*args, "--no-headers", env=env).stdout.splitlines()
    def cells(text_lines: list[str]) -> list[list[str]]:
        rows = [ln.split() for ln in text_lines]
        # export list's AGE column (index 4) may tick between the two runs
        return [r[:4] + r[5:] for r in rows] if args[0] == "export" else rows

    assert cells(bare) == cells(lines[1:])
    if args[0] == "export":
        assert {ln.split()[0] for ln in bare} == {str(e) for e in many}


def test_export_list_piped_is_fast_path_without_rich(
    udx: Udx, many: list[uuid.UUID], tmp_path: Path
) -> None:
    """Piped output does not go through Rich at all (it was >95% of the time)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from udx.cli.main import app\n"
        "try:\n"
        f"    app(['--db', {udx.db_url!r}, 'export', 'list'], prog_name='udx')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print('RICH' if any(m.startswith('rich.table') for m in sys.modules) else 'NORICH',"
        " file=sys.stderr)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "XDG_DATA_HOME": str(tmp_path), "HOME": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().endswith("NORICH"), r.stderr
    assert len(r.stdout.splitlines()) == 31
