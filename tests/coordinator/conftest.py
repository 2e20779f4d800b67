"""Fixtures for pass scenarios: simulated pantries on loopback, registered in
the `pantry` table, and a runtime wired exactly as `udx pass` wires it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from udx.config import Settings
from udx.datastore import pantries as pantry_sql
from udx.pantry.sim import SimulatedPantry, start_simulated_pantries
from udx.runtime import Runtime, build_runtime
from udx.testing.invariants import check_invariants


@pytest.fixture
def sims() -> Iterator[list[SimulatedPantry]]:
    started = start_simulated_pantries(3)
    yield started
    for sim in started:
        sim.stop()


@pytest.fixture
def settings() -> Settings:
    s = Settings()
    s.pantry.request_timeout_secs = 1.0
    s.pantry.retry_budget_secs = 1.0
    s.saga.lease_secs = 5.0
    s.coordinator.concurrency = 4
    return s


@pytest.fixture
def registered(db, sims) -> list[SimulatedPantry]:
    with db.begin() as conn:
        for sim in sims:
            pantry_sql.add(conn, sim.address)
    return sims


@pytest.fixture
def make_runtime(db, settings) -> Iterator:
    made: list[Runtime] = []

    def make(**kwargs) -> Runtime:
        rt = build_runtime(db, settings, **kwargs)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


@pytest.fixture
def run_pass(make_runtime):
    def run():
        rt = make_runtime()
        return rt.coordinator.run_pass()

    return run


def attachments(sims, *, include_stopped: bool = False) -> dict[str, list[str]]:
    return {str(s.address): list(s.attachments) for s in sims if include_stopped or s.running}


def assert_invariants(db, sims) -> None:
    problems = check_invariants(db, attachments(sims))
    assert problems == []
