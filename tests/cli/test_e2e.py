"""The installed program, end to end, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def udx_command() -> list[str]:
    script = Path(sys.executable).parent / "udx"
    return [str(script)] if script.exists() else [sys.executable, "-m", "udx.cli.main"]


def test_init_seed_changeset_in_a_subprocess(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UDX_")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"))
    url = f"sqlite:///{tmp_path / 'e2e.sqlite3'}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*udx_command(), "--db", url, *args],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )

    r = run("changeset", "--json")
    assert r.returncode == 3 and "udx db init" in r.stderr and r.stdout == ""
    r = run("db", "init")
    assert r.returncode == 0, r.stderr
    r = run("db", "seed", "--snapshots", "40", "--project-images", "7", "--silo-images", "3",
            "--deleted", "5", "--seed", "11")
    assert r.returncode == 0, r.stderr
    r = run("changeset", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    kinds = [x["resource_type"] for x in data["request_required"]]
    assert kinds.count("snapshot") == 40 and kinds.count("image") == 10
    assert data["create_required"] == [] and data["delete_required"] == []
    r = run("export", "show", "nope")
    assert r.returncode == 2 and r.stderr.startswith("udx: error: malformed export id")
    assert "Traceback" not in r.stderr
