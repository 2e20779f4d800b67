"""The operator experience (issue 6): start-up imports, the demo, logs, secrets,
NO_COLOR, piped output and confirmations. The installed `udx` runs in a
subprocess where a real process matters (imports, the demo, terminals)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from udx import seed
from udx.datastore import exports, pantries, saga_log
from udx.db import migrate
from udx.db.engine import Database, open_database
from udx.db.schema import user_data_export
from udx.db.types import utcnow
from udx.domain.address import PantryAddress
from udx.domain.model import ExportState, ResourceType
from udx.pantry.sim import SimulatedPantry, start_simulated_pantries
from udx.testing.invariants import dump_tables

from .helpers import Udx, assert_one_line_error

HEAVY = ("alembic", "httpcore", "httpx", "psycopg", "psycopg_binary", "sqlalchemy")
BOX_CHARS = re.compile("[\u2500-\u257f]")
ESCAPE = re.compile(r"\x1b")
SGR = re.compile(r"\x1b\[[0-9;]*m")
FAST = {
    "UDX_PANTRY_REQUEST_TIMEOUT_SECS": "1",
    "UDX_PANTRY_RETRY_BUDGET_SECS": "1",
    "UDX_SAGA_LEASE_SECS": "5",
}


def udx_script() -> Path:
    script = Path(sys.executable).parent / "udx"
    assert script.exists(), f"udx is not installed next to {sys.executable}"
    return script


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The host's environment without anything that changes udx's output."""
    drop = ("UDX_", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS", "LINES", "_UDX_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(home / "data"),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
        TERM="xterm-256color",
    )
    env.update(extra)
    return env


def run_udx(
    args: Sequence[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(udx_script()), *args],
        capture_output=True, text=True, env=env, timeout=timeout,
        stdin=subprocess.DEVNULL, check=False,
    )


def run_in_pty(
    args: Sequence[str], env: dict[str, str], answer: bytes = b"", timeout: float = 60
) -> tuple[int, str, str]:
    """Run udx with stdin and stdout on a pseudo-terminal (stderr piped);
    `answer` is typed once the first output (a prompt) appears."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(udx_script()), *args], stdin=slave, stdout=slave, stderr=subprocess.PIPE,
        env=env, close_fds=True,
    )
    os.close(slave)
    out = b""
    answered = not answer
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if not answered and b"?" in out:
                    os.write(master, answer)
                    answered = True
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    return code, out.decode(), err


# --- start-up ----------------------------------------------------------------------------------

PROBE = """
import atexit, json, runpy, sys
HEAVY = set(json.loads(sys.argv[1]))
def report():
    found = sorted({m.split(".")[0] for m in sys.modules} & HEAVY)
    sys.__stderr__.write("HEAVY-MODULES=" + json.dumps(found) + "\\n")
atexit.register(report)
script = sys.argv[2]
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def imported_heavy(
    args: Sequence[str], env: dict[str, str], heavy: Sequence[str] = ()
) -> tuple[list[str], str]:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([*HEAVY, *heavy]), str(udx_script()), *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("HEAVY-MODULES=")]
    return json.loads(line.split("=", 1)[1]), r.stdout


def test_help_and_completion_import_nothing_heavy(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    for args in (
        ["--help"],
        ["pass", "--help"],
        ["export", "create", "--help"],
        ["export", "list", "-h"],
        ["saga", "list", "--help"],
        ["--log-format", "json", "demo", "-h"],
    ):
        found, out = imported_heavy(args, env)
        assert found == [], (args, found)
        assert "Usage" in out, out
    # Typer converts option values with pydantic; udx's own conversion keeps a
    # subcommand's --help (and the global options before it) from importing it.
    found, _ = imported_heavy(["export", "list", "--help"], env, heavy=["pydantic"])
    assert found == []
    cases = [
        ("udx ex", "1", ["export"]),
        ("udx export c", "2", ["create"]),
        ("udx pass --metr", "2", ["--metrics-file"]),
        ("udx sa", "1", ["saga"]),
    ]
    for words, cword, expected in cases:
        env_c = {**env, "_UDX_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword}
        found, out = imported_heavy([], env_c)
        assert found == [], (words, found)
        assert out.split() == expected, (words, out)
    # The probe does see them when a command needs the database.
    found, _ = imported_heavy(["--db", f"sqlite:///{tmp_path / 'x.sqlite3'}", "db", "status"], env)
    assert "sqlalchemy" in found


# --- the demo ----------------------------------------------------------------------------------


def _closed(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_demo_runs_in_a_fresh_home_and_leaves_nothing_running(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    demo_db = tmp_path / "data" / "udx" / "demo.sqlite3"
    for attempt in (1, 2):  # the second run starts from a fresh demo database again
        r = run_udx(["demo"], env, timeout=120)
        assert r.returncode == 0, (r.stdout, r.stderr)
        out = r.stdout
        for marker in ("== pass 1", "== pass 2", "== pass 3", "== invariants"):
            assert marker in out, marker
        assert "every live resource has exactly one Live export" in out
        assert "violated" not in out and "Traceback" not in r.stderr
        assert not BOX_CHARS.search(out) and not ESCAPE.search(out)  # piped: plain text
        assert demo_db.exists() and str(demo_db) in out
        started = next(ln for ln in out.splitlines() if "simulated pantries:" in ln)
        addresses = re.findall(r"(127\.\d+\.\d+\.\d+):(\d+)", started)
        assert len(addresses) == 3
        for host, port in addresses:
            assert _closed(host, int(port)), f"{host}:{port} still listening after the demo"
        with sqlite3.connect(demo_db) as conn:
            states = dict(
                conn.execute("SELECT state, count(*) FROM user_data_export GROUP BY state")
            )
            snapshots = conn.execute("SELECT count(*) FROM snapshot").fetchone()[0]
        assert snapshots == 7, attempt  # fresh each time: not 14 after the second run
        assert states.get("live", 0) >= 8 and set(states) <= {"live", "deleted"}
    # Nothing was written outside the temp home.
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"data"}


def test_demo_refuses_a_database_that_holds_snapshots(tmp_path: Path, db_url: str) -> None:
    db = open_database(db_url)
    with db.begin() as conn:
        seed.add_snapshot(conn)
    before = dump_tables(db)
    r = Udx(tmp_path, db_url)("demo")
    assert_one_line_error(r, 2, "empty database")
    assert dump_tables(db) == before
    db.dispose()


def test_demo_ignores_a_database_named_only_by_the_environment(tmp_path: Path) -> None:
    # UDX_DATABASE_URL is how cron names production; the demo must not seed it.
    target = tmp_path / "operator.sqlite3"
    env = {**clean_env(tmp_path), "UDX_DATABASE_URL": f"sqlite:///{target}"}
    r = run_udx(["demo", "--snapshots", "1"], env, timeout=120)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "ignoring UDX_DATABASE_URL" in r.stdout
    assert not target.exists()
    assert (tmp_path / "data" / "udx" / "demo.sqlite3").exists()


# --- logs and secrets --------------------------------------------------------------------------


@pytest.fixture
def sims() -> Iterator[list[SimulatedPantry]]:
    started = start_simulated_pantries(2)
    yield started
    for sim in started:
        sim.stop()


def _register(db: Database, sims: list[SimulatedPantry]) -> None:
    with db.begin() as conn:
        for sim in sims:
            pantries.add(conn, sim.address)


def test_json_logs_are_one_json_object_per_line(
    tmp_path: Path, db: Database, db_url: str, sims: list[SimulatedPantry]
) -> None:
    _register(db, sims)
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=2, project_images=1)
    sims[0].fail_next(10_000, 500, method="POST")  # some sagas fail: warnings and errors too
    sims[1].fail_next(10_000, 500, method="POST")
    udx = Udx(tmp_path, db_url)
    env = {**FAST, "UDX_PANTRY_RETRY_BUDGET_SECS": "0.3"}
    r = udx("-v", "--log-format", "json", "pass", "--json", env=env)
    assert r.exit_code == 1, r.stderr
    json.loads(r.stdout)  # stdout stays the status object
    lines = r.stderr.splitlines()
    assert len(lines) > 3
    entries = []
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(entry), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"]), line
        entries.append(entry)
    assert {"debug", "info"} <= {e["level"] for e in entries}
    assert any("failed" in e["message"] for e in entries)  # the failures were logged
    for sim in sims:
        sim.fail_next(0)
    # The human format is prefixed lines, for people.
    r = udx("-v", "pass", env=FAST)
    assert r.exit_code == 0
    assert r.stderr and all(ln.startswith("udx: ") for ln in r.stderr.splitlines())
    # Without -v a clean pass logs nothing.
    r = udx("--log-format", "json", "pass", "--json", env=FAST)
    assert r.exit_code == 0 and r.stderr == ""


SECRET = "Pw-3xq7Zv9s"


@pytest.fixture
def secret_urls(pg_cluster) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    """Two fresh PostgreSQL databases at the current schema, their URLs carrying a
    password (the test cluster trusts every connection, so any password works)."""
    names = ["s_" + uuid.uuid4().hex[:16] for _ in range(2)]
    for name in names:
        pg_cluster.admin(f"CREATE DATABASE {name} TEMPLATE udx_template")
    urls = []
    for name in names:
        plain = pg_cluster.url(name)
        user_end = plain.index("@")
        urls.append(plain[:user_end] + f":{SECRET}" + plain[user_end:])
    yield urls
    for name in names:
        pg_cluster.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_database_password_never_appears(
    tmp_path: Path, secret_urls: list[str], sims: list[SimulatedPantry]
) -> None:
    demo_url, url = secret_urls
    udx = Udx(tmp_path)
    seen: list[str] = []

    def run(*args: str, code: int = 0, db: str = url) -> None:
        for pre in ((), ("-v",), ("-v", "--log-format", "json")):
            r = udx(*pre, *args, db=db, env=FAST)
            assert r.exit_code == code, (args, r.stdout, r.stderr)
            text = r.stdout + r.stderr
            assert SECRET not in text, (pre, args, text)
            seen.append(text)
            if args == ("demo",):
                return  # the demo needs an empty database: once is enough

    run("demo", db=demo_url)
    db = open_database(url)
    _register(db, sims)
    with db.begin() as conn:
        (snap,) = seed.seed_fleet(conn, snapshots=1)
        other = seed.add_snapshot(conn)
    db.dispose()
    run("db", "status")
    run("db", "upgrade")
    run("config", "show")
    run("config", "show", "--json")
    run("changeset")
    run("changeset", "--json")
    run("pass", "--dry-run")
    run("pass", "--json")
    run("pass")
    run("export", "list")
    run("export", "show", "--resource-type", "snapshot", "--resource-id", str(snap.resource_id))
    run("export", "show", str(uuid.uuid4()), code=2)
    run("export", "create", "--resource-type", "snapshot", "--resource-id", str(other), code=1)
    run("pantry", "list")
    run("saga", "list")
    run("demo", code=2)
    missing_db = url.rsplit("/", 1)[0] + "/no_such_database"
    run("db", "status", code=3, db=missing_db)
    run("changeset", code=3, db=re.sub(r"@([\d.]+):\d+/", r"@\1:1/", url))  # unreachable
    everything = "\n".join(seen)
    assert "***" in everything  # the masked form is what is shown
    assert "debug" in everything  # -v really produced logs to look at


# --- terminals, NO_COLOR and pipes -------------------------------------------------------------


@pytest.fixture
def sqlite_fleet(tmp_path: Path) -> str:
    """A SQLite database holding records of every state on IPv4 and IPv6 pantries."""
    url = f"sqlite:///{tmp_path / 'fleet.sqlite3'}"
    db = open_database(url)
    migrate.upgrade(db)
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=3, project_images=1)
        for n, (state, addr) in enumerate(
            [
                ("live", "[fd00:1122:3344:101::1]:17000"),
                ("live", "10.0.0.1:17000"),
                ("requested", None),
                ("deleting", "[fd00:1122:3344:102::1]:17000"),
            ]
        ):
            a = PantryAddress.parse(addr) if addr else None
            conn.execute(
                user_data_export.insert().values(
                    id=uuid.uuid4(), state=state, generation=n,
                    operating_saga_id=uuid.uuid4() if state == "deleting" else None,
                    resource_id=seed.add_snapshot(conn), resource_type="snapshot",
                    resource_deleted=state == "deleting",
                    pantry_ip=a.ip_text if a else None, pantry_port=a.port if a else None,
                    volume_id=uuid.uuid4() if a else None,
                )
            )
        # In service but refusing connections: checks fail fast, records elsewhere
        # count as on expunged pantries.
        pantries.add(conn, PantryAddress.parse("127.0.0.9:1"))
    db.dispose()
    return url


TABLE_COMMANDS = [
    ["export", "list"],
    ["changeset"],
    ["pantry", "list", "--no-check"],
    ["pass", "--dry-run"],
]


def test_no_color_on_a_terminal_writes_no_escape_sequences(
    tmp_path: Path, sqlite_fleet: str
) -> None:
    env = clean_env(tmp_path, COLUMNS="200")
    # On a terminal the tables are boxed and styled...
    code, out, err = run_in_pty(["--db", sqlite_fleet, "export", "list"], env)
    assert code == 0, err
    assert BOX_CHARS.search(out) and SGR.search(out), out
    # ...and with NO_COLOR they are still boxed, with no escape sequence at all.
    no_color = {**env, "NO_COLOR": "1"}
    for args in TABLE_COMMANDS:
        code, out, err = run_in_pty(["--db", sqlite_fleet, *args], no_color)
        assert code == 0, (args, err)
        assert BOX_CHARS.search(out), (args, out)
        assert not ESCAPE.search(out), (args, repr(out[:400]))
    # A pass on a terminal draws a progress bar; with NO_COLOR it has no colour or style.
    fast = {**no_color, **FAST, "UDX_PANTRY_RETRY_BUDGET_SECS": "0.2"}
    code, out, err = run_in_pty(["--db", sqlite_fleet, "pass"], fast)
    assert "pass summary" in out, (out, err)
    assert not SGR.search(out), repr(out[:400])


def test_tty_compatible_renders_as_on_a_terminal(tmp_path: Path, sqlite_fleet: str) -> None:
    udx = Udx(tmp_path, sqlite_fleet)
    styled = udx.ok("export", "list", env={"TTY_COMPATIBLE": "1", "COLUMNS": "250"}).stdout
    assert BOX_CHARS.search(styled) and SGR.search(styled)
    plain = udx.ok(
        "export", "list", env={"TTY_COMPATIBLE": "1", "COLUMNS": "250", "NO_COLOR": "1"}
    ).stdout
    assert BOX_CHARS.search(plain) and not ESCAPE.search(plain)
    # The AGE cells may tick between the two runs.
    def aged(text: str) -> str:
        return re.sub(r"│ +\d+[smhdy](\d+[smh])? +│", "│AGE│", text)

    assert aged(SGR.sub("", styled)) == aged(plain)
    piped = udx.ok("export", "list", env={"TTY_COMPATIBLE": "0"}).stdout
    assert not BOX_CHARS.search(piped) and not ESCAPE.search(piped)


def test_piped_tables_are_plain_and_never_wrapped(tmp_path: Path, sqlite_fleet: str) -> None:
    env = clean_env(tmp_path, COLUMNS="30")  # a narrow terminal setting must not fold rows
    db = open_database(sqlite_fleet)
    with db.connect() as conn:
        records = exports.list_exports(conn)
    db.dispose()
    outputs = {}
    for args in TABLE_COMMANDS:
        r = run_udx(["--db", sqlite_fleet, *args], env)
        assert r.returncode == 0, (args, r.stderr)
        assert not BOX_CHARS.search(r.stdout) and not ESCAPE.search(r.stdout), args
        outputs[" ".join(args)] = r.stdout
    out = outputs["export list"]
    lines = out.splitlines()
    # Nothing above the header (`awk 'NR>1'`), no trailing spaces.
    assert lines[0].split() == [
        "id", "type", "resource", "state", "age", "gen", "saga", "marked", "pantry", "volume"
    ]
    assert len(lines) == 1 + len(records)  # one line per record
    assert all(ln == ln.rstrip() for ln in lines)
    for rec in records:
        (line,) = [ln for ln in lines if ln.startswith(str(rec.id))]
        cells = line.split()
        assert cells[:4] == [
            str(rec.id), rec.resource_type.value, str(rec.resource_id), rec.state.value
        ]
        assert cells[8] == (str(rec.pantry_address) if rec.pantry_address else "-")
        assert cells[9] == (str(rec.volume_id) if rec.volume_id else "-")
    # The same with NO_COLOR and FORCE_COLOR in the environment: still plain.
    forced = run_udx(
        ["--db", sqlite_fleet, "export", "list"], {**env, "FORCE_COLOR": "1", "NO_COLOR": "1"}
    )
    def without_age(text: str) -> list[list[str]]:  # the age moves between the runs
        return [ln.split()[:4] + ln.split()[5:] for ln in text.splitlines()]

    assert not ESCAPE.search(forced.stdout)
    assert without_age(forced.stdout) == without_age(out)


# --- confirmations -----------------------------------------------------------------------------


def test_pantry_expunge_and_saga_abandon_refuse_without_a_terminal(
    tmp_path: Path, db: Database, db_url: str
) -> None:
    addr = PantryAddress.parse("127.0.0.9:17000")
    running = uuid.uuid4()
    now = utcnow()
    with db.begin() as conn:
        pantries.add(conn, addr)
        rid = seed.add_snapshot(conn)
        rec = exports.create(conn, uuid.uuid4(), ResourceType.SNAPSHOT, rid)
        saga_log.insert(
            conn, saga_id=running, name="export-create", params_json="{}",
            sec_id=uuid.uuid4(), now=now, lease_expires=now - timedelta(seconds=1),
        )
    before = dump_tables(db)
    udx = Udx(tmp_path, db_url)
    for args in (
        ("pantry", "expunge", str(addr)),
        ("saga", "abandon", str(running), "--reason", "r", "--comment", "c"),
        ("export", "delete", str(rec.id)),
    ):
        assert_one_line_error(udx(*args), 2, "--yes", "terminal")
        assert dump_tables(db) == before, args
    # --yes goes ahead.
    udx.ok("pantry", "expunge", str(addr), "--yes")
    udx.ok("saga", "abandon", str(running), "--reason", "r", "--comment", "c", "--yes")
    with db.connect() as conn:
        assert pantries.get(conn, addr).state == "expunged"  # type: ignore[union-attr]
        assert saga_log.get(conn, running).saga_state == "abandoned"  # type: ignore[union-attr]
        assert exports.get_required(conn, rec.id).state is ExportState.REQUESTED


def test_confirmation_on_a_terminal_asks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'confirm.sqlite3'}"
    db = open_database(url)
    migrate.upgrade(db)
    with db.begin() as conn:
        pantries.add(conn, PantryAddress.parse("127.0.0.9:17000"))
    before = dump_tables(db)
    env = clean_env(tmp_path)
    code, out, err = run_in_pty(["--db", url, "pantry", "expunge", "127.0.0.9:17000"], env,
                                answer=b"n\n")
    assert "?" in out and code == 1 and "aborted" in err, (code, out, err)
    assert dump_tables(db) == before
    code, out, err = run_in_pty(["--db", url, "pantry", "expunge", "127.0.0.9:17000"], env,
                                answer=b"y\n")
    assert code == 0, (out, err)
    assert "expunged" in out
    assert dump_tables(db) != before
    db.dispose()
