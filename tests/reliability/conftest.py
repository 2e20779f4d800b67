"""Fixtures for the reliability tests: a dedicated PostgreSQL database, simulated
pantries in their own process, and `udx` run as the operator runs it (a
subprocess of the installed CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from udx import seed
from udx.datastore import pantries as pantry_sql
from udx.db.engine import Database, open_database
from udx.db.schema import image, snapshot, user_data_export
from udx.domain.address import PantryAddress
from udx.domain.model import ResourceRef, ResourceType
from udx.testing.invariants import check_invariants
from udx.testing.pgcluster import PostgresCluster

from .pantry_proc import PantryProcess

UDX = str(Path(sys.executable).parent / "udx")
TEMPLATE_DB = "udx_template"  # made by tests/conftest.py's pg_cluster fixture


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh PostgreSQL database at the current schema, for this test alone."""
    name = "r_" + uuid.uuid4().hex[:16]
    pg_cluster.admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    yield pg_cluster.url(name)
    pg_cluster.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg(pg_url: str) -> Iterator[Database]:
    db = open_database(pg_url)
    yield db
    db.dispose()


@pytest.fixture
def pantries() -> Iterator[PantryProcess]:
    proc = PantryProcess(3)
    yield proc
    proc.stop()


def register(db: Database, addresses: list[str]) -> None:
    with db.begin() as conn:
        for a in addresses:
            pantry_sql.add(conn, PantryAddress.parse(a))


def expunge(db: Database, address: str) -> None:
    with db.begin() as conn:
        pantry_sql.expunge(conn, PantryAddress.parse(address))


def seed_resources(
    db: Database, *, snapshots: int, project_images: int = 0, silo_images: int = 0
) -> list[ResourceRef]:
    with db.begin() as conn:
        return seed.seed_fleet(
            conn, snapshots=snapshots, project_images=project_images, silo_images=silo_images
        )


def soft_delete(db: Database, refs: list[ResourceRef]) -> None:
    from udx.db.types import utcnow

    with db.begin() as conn:
        for kind, table in ((ResourceType.SNAPSHOT, snapshot), (ResourceType.IMAGE, image)):
            ids = [r.resource_id for r in refs if r.resource_type is kind]
            if ids:
                conn.execute(update(table).where(table.c.id.in_(ids)).values(time_deleted=utcnow()))


def udx_env(url: str, **settings: Any) -> dict[str, str]:
    """The environment of a `udx` subprocess: the database, no config file but the
    given settings (UDX_<SECTION>_<KEY>), no terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UDX_")}
    env["UDX_DATABASE_URL"] = url
    env["UDX_CONFIG"] = os.devnull
    env["COLUMNS"] = "200"
    for key, value in settings.items():
        env[f"UDX_{key.upper()}"] = str(value)
    return env


def start_udx(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """udx in its own process group (its pid), so a test can kill it together
    with its saga worker processes, as a crash of the machine would."""
    return subprocess.Popen(
        [UDX, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_udx(
    args: list[str], env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [UDX, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class PassRun:
    code: int
    status: dict[str, Any] | None
    stderr: str

    def outcomes(self) -> Counter[str]:
        c: Counter[str] = Counter()
        if self.status:
            for key in ("create_invoked_ok", "delete_invoked_ok"):
                c.update(f"{key.split('_')[0]}:{i['outcome']}" for i in self.status[key])
        return c


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> PassRun:
    out, err = proc.communicate(timeout=timeout)
    status = None
    if out.strip():
        try:
            status = json.loads(out)
        except ValueError:
            status = None
    return PassRun(proc.returncode, status, err)


def run_pass(env: dict[str, str], *extra: str) -> PassRun:
    return finish(start_udx(["pass", "--json", *extra], env))


def non_deleted_per_resource(db: Database) -> dict[str, Counter[str]]:
    """resource id -> Counter of the states of its non-deleted records."""
    out: dict[str, Counter[str]] = {}
    with db.connect() as conn:
        for rid, state in conn.execute(
            select(user_data_export.c.resource_id, user_data_export.c.state).where(
                user_data_export.c.state != "deleted"
            )
        ):
            out.setdefault(str(rid), Counter())[state] += 1
    return out


def saga_states(db: Database) -> Counter[str]:
    from udx.db.schema import saga

    with db.connect() as conn:
        rows = conn.execute(
            select(saga.c.saga_state, saga.c.outcome, func.count()).group_by(
                saga.c.saga_state, saga.c.outcome
            )
        )
        return Counter({f"{s}:{o}": int(n) for s, o, n in rows})


def assert_converged(
    db: Database, pantries: PantryProcess, live: list[ResourceRef], in_service: list[int]
) -> None:
    """Every live resource has exactly one record, Live, on an in-service pantry,
    attached exactly once there; no saga left running, unwinding or stuck; the
    invariants (no orphan attachment, volume usage rows) hold."""
    per = non_deleted_per_resource(db)
    wanted = {str(r.resource_id) for r in live}
    assert set(per) == wanted, (
        f"{len(set(per) - wanted)} records for resources that are not live, "
        f"{len(wanted - set(per))} live resources without a record"
    )
    bad = {rid: dict(c) for rid, c in per.items() if c != Counter(live=1)}
    assert not bad, f"{len(bad)} resources without exactly one Live record: {list(bad.items())[:5]}"
    attached = pantries.attachments(in_service)
    with db.connect() as conn:
        rows = conn.execute(
            select(
                user_data_export.c.volume_id,
                user_data_export.c.pantry_ip,
                user_data_export.c.pantry_port,
            ).where(user_data_export.c.state == "live")
        ).all()
    everywhere = Counter(v for vols in attached.values() for v in vols)
    for vid, ip, port in rows:
        addr = str(PantryAddress.from_parts(str(ip), int(port)))
        assert addr in attached, f"live volume {vid} on {addr}, not an in-service pantry"
        assert everywhere[str(vid).lower()] == 1, f"volume {vid} attached {everywhere[str(vid)]}x"
        assert str(vid).lower() in attached[addr]
    states = saga_states(db)
    unfinished = {k: n for k, n in states.items() if not k.startswith("done:")}
    assert not unfinished, f"sagas not done: {unfinished}"
    assert states.get("done:stuck", 0) == 0, f"stuck sagas: {states}"
    assert check_invariants(db, attached) == []
