"""Start-up (issue 13): a database command on SQLite never imports the PostgreSQL
dialect or psycopg (they cost start-up and do nothing there)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .test_operator import clean_env, udx_script

PROBE = """
import atexit, json, runpy, sys
def report():
    sys.__stderr__.write("MODULES=" + json.dumps(sorted(sys.modules)) + "\\n")
atexit.register(report)
script = sys.argv[1]
sys.argv = [script, *sys.argv[2:]]
runpy.run_path(script, run_name="__main__")
"""


def modules_of(
    args: list[str], env: dict[str, str]
) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(udx_script()), *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("MODULES=")]
    return json.loads(line.split("=", 1)[1]), r


def test_sqlite_database_commands_do_not_load_postgresql(tmp_path: Path) -> None:
    env = clean_env(tmp_path, UDX_DATABASE_URL=f"sqlite:///{tmp_path}/udx.sqlite3")
    subprocess.run([str(udx_script()), "db", "init"], env=env, check=True, capture_output=True)
    # (`udx db status | upgrade` load Alembic, which imports every dialect it knows.)
    for args in (["changeset", "--json"], ["export", "list"], ["saga", "list"]):
        mods, r = modules_of(args, env)
        assert r.returncode == 0, (args, r.stderr)
        pg = [m for m in mods if m.startswith(("sqlalchemy.dialects.postgresql", "psycopg"))]
        assert pg == [], (args, pg)
        assert "sqlalchemy" in mods  # it did open the database


def test_help_imports_only_the_commands_it_shows(tmp_path: Path) -> None:
    """`udx --help` imports no command module; `udx export list --help` only the
    export commands' (and saga's, which share prune), never pass or volume."""
    env = clean_env(tmp_path)
    commands = {"changeset", "config", "db", "demo", "export", "export_ops", "ops", "pantry",
                "pantry_sim", "pass_", "prune", "saga", "volume"}
    mods, r = modules_of(["--help"], env)
    assert r.returncode == 0 and "Commands:" in r.stdout
    cli = {m.removeprefix("udx.cli.") for m in mods if m.startswith("udx.cli.")}
    assert not cli & commands, cli & commands
    mods, r = modules_of(["export", "list", "--help"], env)
    assert r.returncode == 0 and "--resource-id" in r.stdout
    loaded = {m.removeprefix("udx.cli.") for m in mods if m.startswith("udx.cli.")} & commands
    assert "export" in loaded and not loaded & {"pass_", "volume", "pantry", "demo", "db"}
