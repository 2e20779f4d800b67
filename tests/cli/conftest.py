from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from udx.datastore import pantries as pantry_sql
from udx.db.engine import Database
from udx.pantry.sim import SimulatedPantry, start_simulated_pantries

from .helpers import Udx
from .two_pantries import FAST


@pytest.fixture
def udx(tmp_path: Path, db_url: str) -> Udx:
    """`udx --db <a fresh database at the current schema>`, on each engine."""
    return Udx(tmp_path, db_url)


@pytest.fixture
def udx_nodb(tmp_path: Path) -> Udx:
    """`udx` with no --db (the default database under a temp XDG data dir)."""
    return Udx(tmp_path)


# Two simulated pantries and a CLI with short timeouts (test modules with other
# needs define their own `sims` and `cli`, which take precedence).
@pytest.fixture
def sims(db: Database) -> Iterator[list[SimulatedPantry]]:
    started = start_simulated_pantries(2)
    with db.begin() as conn:
        for sim in started:
            pantry_sql.add(conn, sim.address)
    yield started
    for sim in started:
        sim.stop()


@pytest.fixture
def cli(udx: Udx) -> Udx:
    udx.env.update(FAST)
    return udx
