"""Completion of export and saga ids from the database (issue 15): a bounded
prefix query on each engine; through udx's completion protocol and the committed
bash script; and silence (no output, no traceback, no hang) when the database is
missing, unreachable, never answers, is not a database or has no schema."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from udx import seed
from udx.datastore import saga_log
from udx.datastore.ids import ids_starting_with, prefix_range
from udx.db.engine import open_database
from udx.db.schema import saga, user_data_export

from .test_operator import clean_env, udx_script

ROOT = Path(__file__).resolve().parents[2]
EXPORTS = [
    uuid.UUID("aaaa0000-0000-4000-8000-000000000001"),
    uuid.UUID("aaab0000-0000-4000-8000-000000000002"),
    uuid.UUID("abcd1234-5678-4000-8000-000000000003"),
    uuid.UUID("f0000000-0000-4000-8000-000000000004"),
]
RUNNING = uuid.UUID("cccc0000-0000-4000-8000-000000000001")
DONE = uuid.UUID("cccd0000-0000-4000-8000-000000000002")


@pytest.fixture
def filled(db_url: str) -> str:
    db = open_database(db_url)
    now = dt.datetime.now(dt.UTC)
    with db.begin() as conn:
        for n, eid in enumerate(EXPORTS):
            conn.execute(
                user_data_export.insert().values(
                    id=eid, state="requested", generation=n, operating_saga_id=None,
                    resource_id=seed.add_snapshot(conn), resource_type="snapshot",
                    resource_deleted=False, pantry_ip=None, pantry_port=None, volume_id=None,
                )
            )
        for sid, state, outcome in ((RUNNING, "running", None), (DONE, "done", "succeeded")):
            saga_log.insert(
                conn, saga_id=sid, name="export-create", params_json="{}", sec_id=uuid.uuid4(),
                now=now, lease_expires=now, state=state, outcome=outcome,
            )
    db.dispose()
    return db_url


def test_prefix_range() -> None:
    assert prefix_range("AB") == prefix_range("ab")
    lo, hi = prefix_range("ab") or (None, None)
    assert str(lo) == "ab000000-0000-0000-0000-000000000000"
    assert str(hi) == "abffffff-ffff-ffff-ffff-ffffffffffff"
    assert prefix_range("aaaa0000-00") == (
        uuid.UUID("aaaa0000-0000-0000-0000-000000000000"),
        uuid.UUID("aaaa0000-00ff-ffff-ffff-ffffffffffff"),
    )
    assert prefix_range("") == (uuid.UUID(int=0), uuid.UUID(int=2**128 - 1))
    for bad in ("xyz", "aaaa-", "aaaa00000", "%", "a" * 37, "aaaa0000--"):
        assert prefix_range(bad) is None, bad


def test_ids_starting_with_on_each_engine(filled: str) -> None:
    db = open_database(filled)
    try:
        with db.connect() as conn:
            def ids(prefix: str, **kw: object) -> list[uuid.UUID]:
                return ids_starting_with(conn, user_data_export.c.id, prefix,
                                         limit=kw.pop("limit", 50), **kw)  # type: ignore[arg-type]

            assert ids("") == EXPORTS
            assert ids("aaa") == EXPORTS[:2]
            assert ids("AAAA0000-") == EXPORTS[:1]
            assert ids("abcd1234-5678-4000-8000-000000000003") == [EXPORTS[2]]
            assert ids("b") == [] and ids("not hex") == []
            assert ids("", limit=3) == EXPORTS[:3]
            running = ids_starting_with(conn, saga.c.id, "cc", limit=50,
                                        states=("running",), state_column=saga.c.saga_state)
            assert running == [RUNNING]
    finally:
        db.dispose()


def complete(words: str, env: dict[str, str], timeout: float = 30) -> tuple[list[str], str, float]:
    """udx's own completion protocol, as the scripts call it: (values, stderr, seconds)."""
    parts = words.split(" ")
    started = time.monotonic()
    r = subprocess.run(
        [str(udx_script())], capture_output=True, text=True, timeout=timeout, check=False,
        env={**env, "_UDX_COMPLETE": "complete_bash", "COMP_WORDS": words,
             "COMP_CWORD": str(len(parts) - 1)},
        stdin=subprocess.DEVNULL,
    )
    took = time.monotonic() - started
    assert r.returncode == 0, (words, r.returncode, r.stderr)
    return r.stdout.split(), r.stderr, took


def test_completion_offers_ids_from_the_database(filled: str, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    db = f"--db {filled}"
    cases = {
        f"udx {db} export show aa": [str(e) for e in EXPORTS[:2]],
        f"udx {db} export show ": [str(e) for e in EXPORTS],
        f"udx {db} export diagnose abc": [str(EXPORTS[2])],
        f"udx {db} export release aaaa0000-0000-4000-8000-000000000001 --saga c": [
            str(RUNNING), str(DONE)],
        f"udx {db} saga show cc": [str(RUNNING), str(DONE)],
        f"udx {db} saga retry-undo cccd": [str(DONE)],
        f"udx {db} saga abandon c": [str(RUNNING)],  # only what it can abandon
        f"udx {db} saga list --export f": [str(EXPORTS[3])],
        f"udx {db} export show zz": [],
        f"udx {db} export show --js": ["--json"],  # options are still options
    }
    for words, expected in cases.items():
        got, err, _ = complete(words, env)
        assert got == expected, words
        assert err == "", (words, err)
    # The database named by the environment, as any command finds it.
    got, err, _ = complete("udx export show f", {**env, "UDX_DATABASE_URL": filled})
    assert (got, err) == ([str(EXPORTS[3])], "")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections and never answers (a hung server)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    yield f"127.0.0.1:{srv.getsockname()[1]}"
    srv.close()


def test_completion_without_a_usable_database_offers_nothing_quietly(
    tmp_path: Path, silent_server: str
) -> None:
    env = clean_env(tmp_path)
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.sqlite3"
    import sqlite3

    sqlite3.connect(empty).close()
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[database\n")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    missing = tmp_path / "nowhere" / "udx.sqlite3"
    times: list[tuple[bool, float]] = []
    for prefix in (
        "",  # nothing configured: the default file, which does not exist
        f"--db sqlite:///{missing}",
        f"--db sqlite:///{garbage}",
        f"--db sqlite:///{empty}",  # no schema
        f"--db postgresql+psycopg://u:secret@127.0.0.1:{closed_port}/x",
        f"--db postgresql+psycopg://u:secret@{silent_server}/x",  # never answers
        "--db mysql://u@h/x",
        f"--config {bad_config}",
    ):
        for cmd in ("export show a", "saga abandon ") if prefix else ("export release x --saga ",):
            words = f"udx {prefix} {cmd}".replace("udx  ", "udx ")
            got, err, took = complete(words, env)
            assert got == [] and err == "", (words, got, err)
            times.append((silent_server in words, took))
    # A server that never answers costs udx's 1.5 s bound, not libpq's 5 s timeout.
    quick = min(t for hung, t in times if not hung)
    assert max(t for hung, t in times if hung) - quick < 3.5, times
    assert not missing.parent.exists()  # looking created nothing
    assert not (tmp_path / "data").exists()


def _bash_complete(line: str, env: dict[str, str], cwd: Path) -> list[str]:
    words = line.split(" ")
    script = (
        f"source {shlex.quote(str(ROOT / 'completions' / 'udx.bash'))}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE={shlex.quote(line)}\nCOMP_POINT=${{#COMP_LINE}}\n"
        "_udx udx\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True,
                       text=True, timeout=60, check=False, cwd=cwd, env=env)
    assert r.returncode == 0 and r.stderr == "", (line, r.stderr)
    return sorted(w for w in r.stdout.splitlines() if w)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_script_completes_ids(filled: str, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    assert _bash_complete(f"udx --db {filled} export show aa", env, tmp_path) == [
        str(e) for e in EXPORTS[:2]]
    assert _bash_complete(f"udx --db {filled} saga abandon ", env, tmp_path) == [str(RUNNING)]
    assert _bash_complete(f"udx --db {filled} export release {EXPORTS[0]} --saga cccd", env,
                          tmp_path) == [str(DONE)]
    # No database: the command's options, as before.
    assert _bash_complete("udx export show --j", env, tmp_path) == ["--json"]
    assert "--json" in _bash_complete("udx export show ", env, tmp_path)


def test_generated_scripts_ask_udx_only_for_ids() -> None:
    bash = (ROOT / "completions" / "udx.bash").read_text()
    assert '"export show") return 0 ;;' in bash and '"export release|--saga") return 0 ;;' in bash
    asks = bash.split("_udx_wants_ids() {")[1].split("_udx_ids() {")[0]
    assert '"pantry add") return 0 ;;' not in asks and '"export list") return 0 ;;' not in asks
    fish = (ROOT / "completions" / "udx.fish").read_text()
    assert "(__udx_ids)" in fish
    zsh = (ROOT / "completions" / "_udx").read_text()
    assert "_udx_ids" in zsh


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_script_asks_udx_for_ids(filled: str, tmp_path: Path) -> None:
    """The zsh script's _udx_ids, outside a completion widget (its _describe and
    compadd need one): the words it passes reach udx's protocol intact."""
    text = (ROOT / "completions" / "_udx").read_text()
    func = text[text.index("_udx_ids() {"):text.index("\n}\n", text.index("_udx_ids() {")) + 3]
    env = clean_env(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    script = f"{func}\nwords=(udx --db {shlex.quote(filled)} export show aa)\nCURRENT=6\n_udx_ids\n"
    r = subprocess.run(["zsh", "-f", "-c", script], capture_output=True, text=True, timeout=60,
                       check=False, env=env)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout.split() == [str(e) for e in EXPORTS[:2]]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_script_completes_ids(filled: str, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    script = (f"source {shlex.quote(str(ROOT / 'completions' / 'udx.fish'))}; "
              f"complete -C 'udx --db {filled} saga abandon c'")
    r = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True,
                       timeout=60, check=False, env=env)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert [ln.split("\t")[0] for ln in r.stdout.splitlines()] == [str(RUNNING)]
