"""Bounded passes (issue 13): --max-sagas and --deadline stop starting sagas, let
those in flight finish, and report the rest as deferred; the next passes converge.
Both engines, simulated pantries, invariants after every pass."""

from __future__ import annotations

import pytest

from udx import seed
from udx.datastore import exports, resources
from udx.domain.model import ExportState, ResourceType
from udx.metrics import render_metrics

from .conftest import assert_invariants


@pytest.fixture(autouse=True)
def _patient(settings):
    """These scenarios expect their sagas to succeed: under a loaded machine a 1 s
    request timeout can fail a healthy attach. Dead pantries here refuse
    connections, which fails at once whatever the timeout."""
    settings.pantry.request_timeout_secs = 10.0
    settings.pantry.retry_budget_secs = 20.0

def _records(db) -> list:
    with db.connect() as conn:
        return exports.list_exports(conn)


def test_max_sagas_defers_the_rest_and_later_passes_converge(db, registered, make_runtime):
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=5, project_images=2)
    coordinator = make_runtime().coordinator
    first = coordinator.run_pass(max_sagas=3)
    assert not first.failed and first.errors == []
    assert [i.outcome for i in first.create_invoked_ok] == ["succeeded"] * 3
    assert first.deferred == 4
    assert "udx_pass_deferred 4" in render_metrics(first)
    assert "udx_pass_success 1" in render_metrics(first)
    states = sorted(r.state.value for r in _records(db))
    # Every record is requested up front (set-based); deferred ones wait unlocked.
    assert states == ["live"] * 3 + ["requested"] * 4
    assert all(r.operating_saga_id is None for r in _records(db))
    assert_invariants(db, registered)
    second = coordinator.run_pass(max_sagas=3)
    assert len(second.create_invoked_ok) == 3 and second.deferred == 1
    third = coordinator.run_pass(max_sagas=3)
    assert len(third.create_invoked_ok) == 1 and third.deferred == 0
    assert all(r.state is ExportState.LIVE for r in _records(db))
    assert coordinator.run_pass(max_sagas=3).deferred == 0
    assert_invariants(db, registered)


def test_deletes_go_first_in_a_bounded_pass(db, registered, make_runtime):
    with db.begin() as conn:
        (snap,) = seed.seed_fleet(conn, snapshots=1, project_images=0)
    coordinator = make_runtime().coordinator
    coordinator.run_pass()
    with db.begin() as conn:
        resources.soft_delete(conn, ResourceType.SNAPSHOT, [snap.resource_id])
        seed.seed_fleet(conn, snapshots=3, project_images=0)
    status = coordinator.run_pass(max_sagas=1)
    assert [i.resource_id for i in status.delete_invoked_ok] == [str(snap.resource_id)]
    assert status.create_invoked_ok == [] and status.deferred == 3
    assert_invariants(db, registered)


def test_deadline_stops_starting_sagas_and_lets_running_ones_finish(
    db, registered, make_runtime
):
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=6, project_images=0)
    for sim in registered:
        sim.set_latency(0.15)  # each saga takes a few calls' worth of this
    coordinator = make_runtime(concurrency=1).coordinator
    status = coordinator.run_pass(deadline_secs=0.5)
    for sim in registered:
        sim.set_latency(0)
    assert not status.failed, status.errors
    started = len(status.create_invoked_ok)
    assert started >= 1 and status.deferred >= 1 and started + status.deferred == 6
    assert all(i.outcome == "succeeded" for i in status.create_invoked_ok)
    # Nothing was left half-done: every record is live or still requested, unlocked.
    recs = _records(db)
    assert sorted({r.state for r in recs}) == sorted({ExportState.LIVE, ExportState.REQUESTED})
    assert all(r.operating_saga_id is None for r in recs)
    assert_invariants(db, registered)
    rest = coordinator.run_pass()
    assert len(rest.create_invoked_ok) == status.deferred and rest.deferred == 0
    assert_invariants(db, registered)


def test_a_pass_keeps_only_compact_outcomes(db, registered, make_runtime):
    """No SagaResult (with every node's output: the copied volume request) outlives
    its saga while the pass goes on: the status holds ids and outcomes only."""
    import gc

    from udx.saga import SagaResult

    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=6, project_images=0)
    alive: list[int] = []

    def progress(event: str, n: int) -> None:
        if event == "advance":
            gc.collect()
            alive.append(sum(1 for o in gc.get_objects() if isinstance(o, SagaResult)))

    status = make_runtime(concurrency=1).coordinator.run_pass(progress=progress)
    assert [i.outcome for i in status.create_invoked_ok] == ["succeeded"] * 6
    assert alive == [0] * 6
    for inv in status.create_invoked_ok:
        assert not hasattr(inv, "__dict__")  # slotted: ids and an outcome, nothing else
