"""Bad input over every command and option (issue 7), table-driven.

Each malformed value must give its documented exit code (2: bad usage, input or
config; 3: database unreachable), exactly one `udx: error:` line on stderr and
no traceback, and leave the database exactly as it was (dump_tables).
The table covers every command `udx --help` lists (a test checks that).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from udx import seed
from udx.cli.main import app
from udx.datastore import exports
from udx.datastore import pantries as pantry_sql
from udx.db.engine import open_database
from udx.domain.address import PantryAddress
from udx.domain.model import ResourceType
from udx.testing.invariants import dump_tables

UNKNOWN = str(uuid.uuid4())
UNREACHABLE = "postgresql+psycopg://udx:secret@127.0.0.1:1/udx"

# (case name, argv after `udx --db URL`, expected exit code). "{tmp}" is a temp dir.
CASES: list[tuple[str, list[str], int]] = [
    # global options and the command line itself
    ("unknown command", ["frobnicate"], 2),
    ("unknown option", ["changeset", "--frob"], 2),
    ("extra argument", ["changeset", "extra"], 2),
    ("log format", ["--log-format", "xml", "changeset"], 2),
    ("db url scheme", ["--db", "mysql://u@h/db", "changeset"], 2),
    ("db url garbage", ["--db", "::not a url::", "changeset"], 2),
    ("db url sqlite dir", ["--db", "sqlite:////proc/no/such/dir/x.db", "changeset"], 3),
    ("db unreachable", ["--db", UNREACHABLE, "changeset"], 3),
    ("db unreachable pass", ["--db", UNREACHABLE, "pass"], 3),
    ("db unreachable status", ["--db", UNREACHABLE, "db", "status"], 3),
    ("config missing", ["--config", "{tmp}/missing.toml", "changeset"], 2),
    ("config not toml", ["--config", "{tmp}/garbage.toml", "changeset"], 2),
    ("config unknown key", ["--config", "{tmp}/unknown_key.toml", "changeset"], 2),
    ("config concurrency 0", ["--config", "{tmp}/concurrency0.toml", "pass"], 2),
    ("config concurrency type", ["--config", "{tmp}/concurrency_str.toml", "pass"], 2),
    ("config source", ["--config", "{tmp}/source.toml", "pass"], 2),
    ("config timeout", ["--config", "{tmp}/timeout.toml", "pass"], 2),
    ("config lease", ["--config", "{tmp}/lease.toml", "pass"], 2),
    ("config isolation", ["--config", "{tmp}/isolation.toml", "pass"], 2),
    ("config static address", ["--config", "{tmp}/static.toml", "pass"], 2),
    # pass
    ("pass concurrency 0", ["pass", "--concurrency", "0"], 2),
    ("pass concurrency 257", ["pass", "--concurrency", "257"], 2),
    ("pass concurrency -1", ["pass", "--concurrency", "-1"], 2),
    ("pass concurrency text", ["pass", "--concurrency", "many"], 2),
    ("pass metrics dry run", ["pass", "--dry-run", "--metrics-file", "{tmp}/m.prom"], 2),
    ("pass metrics dir", ["pass", "--metrics-file", "{tmp}/garbage.toml/m.prom"], 2),
    ("pass metrics is dir", ["pass", "--metrics-file", "{tmp}"], 2),
    # changeset
    ("changeset json value", ["changeset", "--json=yes"], 2),
    # export
    ("export list state", ["export", "list", "--state", "alive"], 2),
    ("export list type", ["export", "list", "--resource-type", "disk"], 2),
    ("export show id", ["export", "show", "not-a-uuid"], 2),
    ("export show unknown", ["export", "show", UNKNOWN], 2),
    ("export show nothing", ["export", "show"], 2),
    (
        "export show type",
        ["export", "show", "--resource-type", "disk", "--resource-id", UNKNOWN],
        2,
    ),
    ("export show rid", ["export", "show", "--resource-type", "image", "--resource-id", "x"], 2),
    ("export show both", ["export", "show", UNKNOWN, "--resource-id", UNKNOWN], 2),
    (
        "export create rid",
        ["export", "create", "--resource-type", "snapshot", "--resource-id", "12"],
        2,
    ),
    (
        "export create type",
        ["export", "create", "--resource-type", "disk", "--resource-id", UNKNOWN],
        2,
    ),
    (
        "export create unknown",
        ["export", "create", "--resource-type", "snapshot", "--resource-id", UNKNOWN],
        2,
    ),
    ("export create missing", ["export", "create", "--resource-type", "snapshot"], 2),
    ("export delete id", ["export", "delete", "nope", "--yes"], 2),
    ("export delete unknown", ["export", "delete", UNKNOWN, "--yes"], 2),
    ("export delete missing", ["export", "delete", "--yes"], 2),
    ("export diagnose id", ["export", "diagnose", "nope"], 2),
    ("export diagnose unknown", ["export", "diagnose", UNKNOWN], 2),
    ("export diagnose nothing", ["export", "diagnose"], 2),
    (
        "export diagnose rid",
        ["export", "diagnose", "--resource-type", "image", "--resource-id", "x"],
        2,
    ),
    ("export release id", ["export", "release", "nope", "--saga", UNKNOWN, "--yes"], 2),
    ("export release saga id", ["export", "release", UNKNOWN, "--saga", "nope", "--yes"], 2),
    ("export release unknown", ["export", "release", UNKNOWN, "--saga", UNKNOWN, "--yes"], 2),
    ("export release no saga", ["export", "release", UNKNOWN, "--yes"], 2),
    # operator's glance
    ("status argument", ["status", "now"], 2),
    ("db unreachable udx status", ["--db", UNREACHABLE, "status"], 3),
    ("whatis id", ["whatis", "nope"], 2),
    ("whatis unknown", ["whatis", UNKNOWN], 2),
    ("whatis missing", ["whatis"], 2),
    ("pass history limit", ["pass", "history", "--limit", "0"], 2),
    ("pass history text", ["pass", "history", "--limit", "ten"], 2),
    # pantry
    ("pantry add no port", ["pantry", "add", "10.0.0.1"], 2),
    ("pantry add port range", ["pantry", "add", "10.0.0.1:65536"], 2),
    ("pantry add port text", ["pantry", "add", "10.0.0.1:http"], 2),
    ("pantry add bad ip", ["pantry", "add", "300.1.1.1:17000"], 2),
    ("pantry add hostname", ["pantry", "add", "pantry.example:17000"], 2),
    ("pantry add ipv6 brackets", ["pantry", "add", "fd00::1:17000"], 2),
    ("pantry add ipv6 open", ["pantry", "add", "[fd00::1:17000"], 2),
    ("pantry add empty", ["pantry", "add", ""], 2),
    ("pantry add missing", ["pantry", "add"], 2),
    ("pantry expunge bad", ["pantry", "expunge", "x:y", "--yes"], 2),
    ("pantry expunge unknown", ["pantry", "expunge", "10.9.9.9:17000", "--yes"], 2),
    ("pantry affected bad", ["pantry", "affected", "--pantry", "10.0.0.1"], 2),
    ("pantry list option", ["pantry", "list", "--check"], 2),
    # saga
    ("saga list state", ["saga", "list", "--state", "sleeping"], 2),
    ("saga list name", ["saga", "list", "--name", "export-crate"], 2),
    ("saga list since", ["saga", "list", "--since", "yesterday"], 2),
    ("saga list limit", ["saga", "list", "--limit", "0"], 2),
    ("saga list export", ["saga", "list", "--export", "x"], 2),
    ("saga retry-undo id", ["saga", "retry-undo", "nope"], 2),
    ("saga retry-undo unknown", ["saga", "retry-undo", UNKNOWN], 2),
    ("saga show id", ["saga", "show", "nope"], 2),
    ("saga show unknown", ["saga", "show", UNKNOWN], 2),
    ("saga resume id", ["saga", "resume", "nope"], 2),
    ("saga resume unknown", ["saga", "resume", UNKNOWN], 2),
    ("saga recover arg", ["saga", "recover", "all"], 2),
    ("saga abandon id", ["saga", "abandon", "nope", "--reason", "r", "--comment", "c", "--yes"], 2),
    (
        "saga abandon unknown",
        ["saga", "abandon", UNKNOWN, "--reason", "r", "--comment", "c", "--yes"],
        2,
    ),
    (
        "saga abandon reason",
        ["saga", "abandon", UNKNOWN, "--reason", " ", "--comment", "c", "--yes"],
        2,
    ),
    ("saga abandon no comment", ["saga", "abandon", UNKNOWN, "--reason", "r", "--yes"], 2),
    # db
    ("db seed negative", ["db", "seed", "--snapshots", "-1"], 2),
    ("db seed too many", ["db", "seed", "--project-images", "1000001"], 2),
    ("db seed text", ["db", "seed", "--silo-images", "few"], 2),
    ("db seed deleted", ["db", "seed", "--deleted", "-5"], 2),
    ("db seed seed", ["db", "seed", "--seed", "abc"], 2),
    ("db init arg", ["db", "init", "now"], 2),
    ("db upgrade arg", ["db", "upgrade", "head"], 2),
    ("db status option", ["db", "status", "--all"], 2),
    # config
    ("config init exists", ["config", "init", "{tmp}/garbage.toml"], 2),
    ("config init dir", ["config", "init", "{tmp}/garbage.toml/udx.toml"], 2),
    ("config show bad file", ["--config", "{tmp}/garbage.toml", "config", "show"], 2),
    # pantry-sim and demo (rejected before they start anything)
    ("pantry-sim listen", ["pantry-sim", "--listen", "localhost"], 2),
    ("pantry-sim port", ["pantry-sim", "--listen", "127.0.0.1:70000"], 2),
    ("pantry-sim latency", ["pantry-sim", "--latency", "-1"], 2),
    ("pantry-sim latency text", ["pantry-sim", "--latency", "slow"], 2),
    ("demo pantries", ["demo", "--pantries", "1"], 2),
    ("demo snapshots", ["demo", "--snapshots", "0"], 2),
]

CONFIGS = {
    "garbage.toml": "[database\nurl = 1\n",
    "unknown_key.toml": "[coordinator]\nspeed = 3\n",
    "concurrency0.toml": "[coordinator]\nconcurrency = 0\n",
    "concurrency_str.toml": '[coordinator]\nconcurrency = "eight"\n',
    "source.toml": '[pantry]\nsource = "carrier-pigeon"\n',
    "timeout.toml": "[pantry]\nrequest_timeout_secs = -1\n",
    "lease.toml": "[saga]\nlease_secs = 0\n",
    "isolation.toml": '[database]\nisolation = "chaos"\n',
    "static.toml": '[pantry]\nsource = "static"\naddresses = ["10.0.0.1"]\n',
}


def test_the_table_covers_every_command() -> None:
    import typer.main

    group = typer.main.get_command(app)
    commands: set[str] = set()
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        if subs:
            commands |= {f"{name} {sub}" for sub in subs}
        else:
            commands.add(name)
    assert len(commands) >= 20, commands
    covered = set()
    for _, argv, _ in CASES:
        words = [a for a in argv if not a.startswith(("-", "{tmp}"))]
        covered.add(" ".join(words[:2]))
        covered.add(words[0] if words else "")
    missing = sorted(c for c in commands if c not in covered)
    assert not missing, f"commands without a bad-input case: {missing}"


@pytest.fixture
def fleet_url(db_url: str) -> str:
    """A database with resources, records in two states and a pantry."""
    db = open_database(db_url)
    try:
        with db.begin() as conn:
            refs = seed.seed_fleet(conn, snapshots=3, project_images=1, deleted=1)
            pantry_sql.add(conn, PantryAddress.parse("127.0.0.1:17000"))
            exports.create(conn, uuid.uuid4(), ResourceType.SNAPSHOT, refs[0].resource_id)
            rec = exports.create(conn, uuid.uuid4(), ResourceType.IMAGE, refs[3].resource_id)
            exports.mark_for_deletion(conn, rec.id)
    finally:
        db.dispose()
    return db_url


def test_bad_input_table(fleet_url: str, tmp_path: Path) -> None:
    for name, text in CONFIGS.items():
        (tmp_path / name).write_text(text)
    db = open_database(fleet_url)
    before = dump_tables(db)
    env = {
        "UDX_DATABASE_URL": None,
        "UDX_CONFIG": None,
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
    }
    failures: list[str] = []
    for case, argv, code in CASES:
        args = ["--db", fleet_url, *[a.replace("{tmp}", str(tmp_path)) for a in argv]]
        r = CliRunner(env=env).invoke(app, args, catch_exceptions=True)
        lines = r.stderr.splitlines()
        problem = None
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            problem = f"raised {type(r.exception).__name__}: {r.exception}"
        elif r.exit_code != code:
            problem = f"exit {r.exit_code}, expected {code}"
        elif len(lines) != 1 or not lines[0].startswith("udx: error: "):
            problem = f"stderr is not one error line: {r.stderr!r}"
        elif "Traceback" in r.stderr + r.stdout:
            problem = "traceback"
        elif "secret" in r.stderr + r.stdout:
            problem = "password shown"
        if problem:
            failures.append(f"{case}: udx {' '.join(argv)}: {problem}; stderr {r.stderr[-300:]!r}")
        after = dump_tables(db)
        if after != before:
            failures.append(f"{case}: the database changed")
            before = after
    db.dispose()
    assert not failures, "\n".join(failures)
