"""A throwaway PostgreSQL cluster: initdb + pg_ctl in a temp dir, on a free port.

PostgreSQL refuses to run as root; when we are root (CI), the cluster's files
belong to the `postgres` user and its programs run through `runuser`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """initdb/pg_ctl are not installed, or the cluster would not start."""


def find_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists() and Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    def __init__(self, *, max_connections: int = 300, durable: bool = False) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable(
                "initdb and pg_ctl not found (install PostgreSQL server binaries)"
            )
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="udx-pg-"))
        self.datadir = self.root / "data"
        self.max_connections = max_connections
        # Not durable (the default, for speed): a crash (`pg_ctl -m immediate`) may
        # lose commits already acknowledged. Tests that crash the server need durable.
        self.durable = durable
        self._as_postgres = os.geteuid() == 0
        self.user = "postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    def start(self) -> PostgresCluster:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        os.chmod(self.root, 0o755)
        r = self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-A",
            "trust",
            "-U",
            self.user,
            "-E",
            "UTF8",
            "--no-sync",
            "--no-locale",
        )
        if r.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {r.stderr.strip()[-500:]}")
        opts = self.server_options()
        r = self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-o",
            opts,
            "-l",
            str(self.root / "postgres.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        if r.returncode != 0:
            log = self.root / "postgres.log"
            tail = log.read_text()[-800:] if log.exists() else r.stderr
            raise PostgresUnavailable(f"pg_ctl start failed: {tail.strip()}")
        return self

    def server_options(self) -> str:
        sync = "on" if self.durable else "off"
        return (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            f"-c fsync=off -c synchronous_commit={sync} -c full_page_writes=off "
            f"-c max_connections={self.max_connections} -c shared_buffers=128MB"
        )

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE)."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql.encode())

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
        for _ in range(50):
            if not (self.datadir / "postmaster.pid").exists():
                break
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
