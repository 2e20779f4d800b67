"""Running `udx` in-process with CliRunner, isolated from the host's config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from udx.cli.main import app


class Udx:
    """`udx` with XDG dirs under a temp dir and no UDX_* variables from the host."""

    def __init__(self, home: Path, db_url: str | None = None) -> None:
        self.home = home
        self.db_url = db_url
        self.env: dict[str, str | None] = {
            "UDX_DATABASE_URL": None,
            "UDX_CONFIG": None,
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str, db: str | None = None, env: dict[str, str] | None = None
                 ) -> Result:
        url = db or self.db_url
        argv = (["--db", url] if url else []) + list(args)
        runner = CliRunner(env={**self.env, **(env or {})})
        return runner.invoke(app, argv, catch_exceptions=False)

    def ok(self, *args: str, **kw: Any) -> Result:
        r = self(*args, **kw)
        assert r.exit_code == 0, f"exit {r.exit_code}\nstdout: {r.stdout}\nstderr: {r.stderr}"
        return r

    def json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.ok(*args, "--json", **kw).stdout)


def assert_one_line_error(r: Result, code: int, *needles: str) -> str:
    """Exit `code`, nothing on stdout, one `udx: error:` line on stderr, no traceback."""
    assert r.exit_code == code, f"exit {r.exit_code}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("udx: error: "), r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
