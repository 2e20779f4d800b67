"""`udx pantry ...` and `udx pantry-sim` through the real CLI, on both engines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.pantry.fakedns import FakeDns
from udx.cli.main import app
from udx.db.engine import open_database
from udx.db.schema import user_data_export
from udx.pantry.client import PantryClient
from udx.pantry.sim import SimulatedPantry, start_simulated_pantries

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("UDX_"):
            monkeypatch.delenv(key)
    # No user config file may leak in.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def udx(db_url: str, *args: str, config: Path | None = None) -> Any:
    pre = ["--db", db_url] + (["--config", str(config)] if config else [])
    return runner.invoke(app, [*pre, *args])


def ok(result: Any) -> Any:
    assert result.exit_code == 0, (result.output, result.stderr)
    return result


def add_export(
    db_url: str,
    pantry: str | None,
    state: str = "live",
    volume_id: uuid.UUID | None = None,
    marked: bool = False,
) -> uuid.UUID:
    from udx.domain.address import PantryAddress

    addr = PantryAddress.parse(pantry) if pantry else None
    export_id = uuid.uuid4()
    db = open_database(db_url)
    with db.begin() as conn:
        conn.execute(
            user_data_export.insert().values(
                id=export_id,
                state=state,
                operating_saga_id=None,
                generation=1,
                resource_id=uuid.uuid4(),
                resource_type="snapshot",
                resource_deleted=marked,
                pantry_ip=addr.ip_text if addr else None,
                pantry_port=addr.port if addr else None,
                volume_id=volume_id or uuid.uuid4(),
            )
        )
    db.dispose()
    return export_id


@pytest.fixture
def sims() -> Iterator[list[SimulatedPantry]]:
    started = start_simulated_pantries(2)
    yield started
    for s in started:
        s.stop()


def test_add_list_expunge(db_url: str) -> None:
    r = ok(udx(db_url, "pantry", "add", "[fd00::0001]:17000"))
    assert "pantry [fd00::1]:17000 added" in r.stdout  # literal text, not Rich markup
    r = ok(udx(db_url, "pantry", "add", "[fd00::1]:17000"))
    assert "already in service" in r.stdout
    ok(udx(db_url, "pantry", "add", "127.0.0.1:17000"))
    rows = json.loads(ok(udx(db_url, "pantry", "list", "--no-check", "--json")).stdout)
    assert [(r["address"], r["state"], r["checked"]) for r in rows] == [
        ("127.0.0.1:17000", "in_service", False),
        ("[fd00::1]:17000", "in_service", False),
    ]
    # Without a terminal and without --yes, expunge refuses (exit 2).
    r = udx(db_url, "pantry", "expunge", "[fd00::1]:17000")
    assert r.exit_code == 2 and "--yes" in r.stderr
    r = ok(udx(db_url, "pantry", "expunge", "[fd00:0::1]:17000", "--yes"))
    assert "pantry [fd00::1]:17000 expunged" in r.stdout
    r = ok(udx(db_url, "pantry", "expunge", "[fd00::1]:17000", "--yes"))
    assert "already expunged" in r.stdout
    rows = json.loads(ok(udx(db_url, "pantry", "list", "--no-check", "--json")).stdout)
    gone = next(r for r in rows if r["address"] == "[fd00::1]:17000")
    assert gone["state"] == "expunged" and gone["time_expunged"]


def test_expunge_confirms_with_a_count(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ok(udx(db_url, "pantry", "add", "127.0.0.1:17000"))
    add_export(db_url, "127.0.0.1:17000")
    add_export(db_url, "127.0.0.1:17000")
    prompts: list[str] = []
    import udx.cli.pantry as pantry_cli

    monkeypatch.setattr(pantry_cli, "confirm", lambda prompt, yes: prompts.append(prompt))
    r = ok(udx(db_url, "pantry", "expunge", "127.0.0.1:17000"))
    assert prompts and "2 export records" in prompts[0] and prompts[0].startswith("Expunge")
    assert "2 export records" in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["add", "fd00::1:80"],
        ["add", "1.2.3.4"],
        ["expunge", "x:1", "--yes"],
        ["affected", "--pantry", "nope"],
    ],
)
def test_bad_addresses_exit_2_with_one_line(db_url: str, args: list[str]) -> None:
    r = udx(db_url, "pantry", *args)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("udx: error: malformed pantry address")


def test_expunge_unknown_is_not_found(db_url: str) -> None:
    r = udx(db_url, "pantry", "expunge", "127.0.0.9:1", "--yes")
    assert r.exit_code == 2 and "no pantry 127.0.0.9:1" in r.stderr


def test_list_checks_pantries_and_compares_with_live_exports(
    db_url: str, sims: list[SimulatedPantry], vcr: Any
) -> None:
    p1, p2 = sims
    ok(udx(db_url, "pantry", "add", str(p1.address)))
    ok(udx(db_url, "pantry", "add", str(p2.address)))
    held, lost, extra = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    p1.attach(held, vcr)
    p1.attach(extra, vcr)
    add_export(db_url, str(p1.address), volume_id=held)
    add_export(db_url, str(p1.address), volume_id=lost)
    add_export(db_url, str(p1.address), state="deleted")  # not Live: not counted
    add_export(db_url, "[fd00::9]:17000")  # a pantry the inventory does not know
    p2.refuse_connections(True)

    rows = {r["address"]: r for r in json.loads(ok(udx(db_url, "pantry", "list", "--json")).stdout)}
    r1, r2 = rows[str(p1.address)], rows[str(p2.address)]
    assert r1["reachable"] is True and r1["latency_ms"] >= 0
    assert r1["volumes_attached"] == 2 and r1["live_exports"] == 2
    assert r1["missing_on_pantry"] == [str(lost)]
    assert r1["extra_on_pantry"] == [str(extra)]
    assert r2["reachable"] is False and r2["error"] and r2["volumes_attached"] is None
    unknown = rows["[fd00::9]:17000"]
    assert unknown["state"] == "not_in_inventory" and unknown["checked"] is False

    table = ok(udx(db_url, "pantry", "list")).stdout
    assert str(p1.address) in table and "NO" in table

    rows = json.loads(ok(udx(db_url, "pantry", "list", "--no-check", "--json")).stdout)
    assert all(r["reachable"] is None for r in rows)
    assert len(p1.requests) == 2  # the two checked listings; --no-check called nobody


def test_affected(db_url: str) -> None:
    ok(udx(db_url, "pantry", "add", "127.0.0.1:17000"))
    ok(udx(db_url, "pantry", "add", "127.0.0.2:17000"))
    ok(udx(db_url, "pantry", "add", "127.0.0.3:17000"))
    stays = add_export(db_url, "127.0.0.1:17000")
    on_2 = add_export(db_url, "127.0.0.2:17000")
    on_3 = add_export(db_url, "127.0.0.3:17000", state="assigning")
    add_export(db_url, "127.0.0.3:17000", marked=True)  # already marked: not counted
    add_export(db_url, "127.0.0.3:17000", state="deleted")
    add_export(db_url, None, state="requested")
    out = json.loads(ok(udx(db_url, "pantry", "affected", "--json")).stdout)
    assert out["count"] == 0 and out["records"] == []
    ok(udx(db_url, "pantry", "expunge", "127.0.0.2:17000", "--yes"))
    ok(udx(db_url, "pantry", "expunge", "127.0.0.3:17000", "--yes"))
    out = json.loads(ok(udx(db_url, "pantry", "affected", "--json")).stdout)
    assert {r["id"] for r in out["records"]} == {str(on_2), str(on_3)}
    assert str(stays) not in {r["id"] for r in out["records"]}
    assert out["in_service"] == ["127.0.0.1:17000"]
    out = json.loads(
        ok(udx(db_url, "pantry", "affected", "--pantry", "127.0.0.3:17000", "--json")).stdout
    )
    assert [r["id"] for r in out["records"]] == [str(on_3)]
    assert out["records"][0]["pantry_address"] == "127.0.0.3:17000"
    text = ok(udx(db_url, "pantry", "affected")).stdout
    assert str(on_2) in text and len(text.splitlines()) == 3  # piped: header and 2 rows
    tty = {"TTY_COMPATIBLE": "1", "COLUMNS": "200"}
    text = ok(runner.invoke(app, ["--db", db_url, "pantry", "affected"], env=tty)).stdout
    assert "records the next pass marks (2)" in text
    text = ok(udx(db_url, "pantry", "affected", "--pantry", "127.0.0.1:17000")).stdout
    assert "is in service" in text


def test_static_source(db_url: str, tmp_path: Path, sims: list[SimulatedPantry]) -> None:
    cfg = tmp_path / "udx.toml"
    cfg.write_text(f'[pantry]\nsource = "static"\naddresses = ["{sims[0].address}"]\n')
    rows = json.loads(ok(udx(db_url, "pantry", "list", "--json", config=cfg)).stdout)
    assert [(r["address"], r["reachable"]) for r in rows] == [(str(sims[0].address), True)]
    on_other = add_export(db_url, str(sims[1].address))
    out = json.loads(ok(udx(db_url, "pantry", "affected", "--json", config=cfg)).stdout)
    assert [r["id"] for r in out["records"]] == [str(on_other)]
    r = udx(db_url, "pantry", "add", "127.0.0.5:1", config=cfg)
    assert r.exit_code == 2 and "static" in r.stderr


def test_dns_source(db_url: str, tmp_path: Path) -> None:
    d = FakeDns().start()
    try:
        zone = "rack.test"
        d.add(f"_crucible-pantry._tcp.{zone}.", "SRV", f"0 0 17000 p1.{zone}.")
        d.add(f"p1.{zone}.", "A", "127.0.0.1")
        cfg = tmp_path / "udx.toml"
        cfg.write_text(
            f'[pantry]\nsource = "dns"\ndns_zone = "{zone}"\ndns_servers = ["{d.server}"]\n'
            "request_timeout_secs = 0.5\n"
        )
        add_export(db_url, "127.0.0.1:17000")
        away = add_export(db_url, "127.0.0.1:17001")
        out = json.loads(ok(udx(db_url, "pantry", "affected", "--json", config=cfg)).stdout)
        assert out["in_service"] == ["127.0.0.1:17000"]
        assert [r["id"] for r in out["records"]] == [str(away)]
        d.silent = True
        r = udx(db_url, "pantry", "affected", config=cfg)
        assert r.exit_code == 3 and r.stderr.startswith("udx: error:")
    finally:
        d.stop()


def test_pantry_sim_bad_listen(db_url: str) -> None:
    r = udx(db_url, "pantry-sim", "--listen", "localhost:17000")
    assert r.exit_code == 2 and "malformed pantry address" in r.stderr


def test_pantry_sim_runs_in_the_foreground_until_interrupted(vcr: Any) -> None:
    with socket_port() as port:
        pass
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from udx.cli.main import run; run()",
            "pantry-sim",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"listening on 127.0.0.1:{port}" in line
        from udx.domain.address import PantryAddress

        with PantryClient(PantryAddress.parse(f"127.0.0.1:{port}"), timeout=2) as c:
            c.attach(uuid.uuid4(), vcr)
            assert len(c.status().volumes) == 1
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "POST /crucible/pantry/0/volume/" in out and "stopped" in out


class socket_port:
    """A free TCP port on 127.0.0.1 (closed again before use)."""

    def __enter__(self) -> int:
        import socket

        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return int(self.s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.s.close()
