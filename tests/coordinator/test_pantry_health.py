"""Per-pass pantry health (issue 13, issue 12's loud degraded pantries), on both
engines with simulated pantries: each pantry probed once per pass, picks among the
answering ones with no status call and no inventory read per export, a pantry that
fails a call is not picked again in the pass, and degraded pantries are warnings."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from udx import seed
from udx.datastore import exports
from udx.datastore import pantries as pantry_sql
from udx.domain.model import ExportState
from udx.metrics import render_metrics
from udx.pantry.health import PassPantries, Probe
from udx.pantry.sim import SimulatedPantry
from udx.sagas.deps import ExportSagaDeps
from udx.testing.statements import count_statements

from .conftest import assert_invariants


@pytest.fixture(autouse=True)
def _patient(settings):
    """These scenarios expect their sagas to succeed: under a loaded machine a 1 s
    request timeout can fail a healthy attach. Dead pantries here refuse
    connections, which fails at once whatever the timeout."""
    settings.pantry.request_timeout_secs = 10.0
    settings.pantry.retry_budget_secs = 20.0

def _seed(db, snapshots: int) -> None:
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=snapshots, project_images=0)


def _live(db) -> list:
    with db.connect() as conn:
        return exports.list_exports(conn, states=[ExportState.LIVE])


def _status_calls(sim: SimulatedPantry) -> int:
    return sum(1 for r in sim.requests if r.method == "GET" and r.path == "/crucible/pantry/0")


def test_each_pantry_is_probed_once_and_picks_read_nothing(db, registered, run_pass):
    _seed(db, snapshots=12)
    with count_statements(db.engine) as log:
        status = run_pass()
    assert status.errors == [] and status.warnings == []
    assert [i.outcome for i in status.create_invoked_ok] == ["succeeded"] * 12
    # One status call per pantry for the whole pass, not one per export.
    assert [_status_calls(s) for s in registered] == [1, 1, 1]
    # The inventory is read in step 1 only (the in-service list, and the rows
    # checked for bad addresses), not once per pick: 12 exports, at most 2 reads.
    pantry_reads = [s for s in log.statements if "FROM pantry" in s]
    assert len(pantry_reads) <= 2, pantry_reads
    # Still spread over the pantries (random among the answering ones).
    holders = Counter(str(r.pantry_address) for r in _live(db))
    assert len(holders) >= 2, holders
    assert status.pantries_up == {str(s.address): True for s in registered}
    assert_invariants(db, registered)


def test_a_pantry_that_does_not_answer_is_a_warning_and_is_not_picked(db, registered, run_pass):
    _seed(db, snapshots=6)
    dead = registered[0]
    dead.refuse_connections()
    status = run_pass()
    assert status.errors == []
    assert [i.outcome for i in status.create_invoked_ok] == ["succeeded"] * 6
    assert all(r.pantry_address != dead.address for r in _live(db))
    assert len(status.warnings) == 1
    assert str(dead.address) in status.warnings[0]
    assert "did not answer its status call" in status.warnings[0]
    assert status.pantries_up[str(dead.address)] is False
    metrics = render_metrics(status)
    assert f'udx_pantry_up{{pantry="{dead.address}"}} 0' in metrics
    assert f'udx_pantry_up{{pantry="{registered[1].address}"}} 1' in metrics
    assert "udx_pass_warnings 1" in metrics
    dead.refuse_connections(False)
    assert_invariants(db, registered)


def test_a_slow_pantry_is_a_warning_but_still_used(db, registered, run_pass, settings):
    settings.pantry.slow_status_secs = 0.05
    _seed(db, snapshots=1)
    registered[1].set_latency(0.2)
    status = run_pass()
    registered[1].set_latency(0)
    assert status.errors == []
    (warning,) = status.warnings
    assert str(registered[1].address) in warning and "slowly" in warning
    assert status.pantries_up[str(registered[1].address)] is True


def test_a_pantry_that_fails_a_call_is_not_picked_again_in_the_pass(
    db, registered, make_runtime, settings
):
    settings.pantry.retry_budget_secs = 0.3
    _seed(db, snapshots=8)
    bad = min(registered, key=lambda s: s.address)
    bad.fail_next(10_000, status=500, method="POST")  # answers status, fails every attach
    rt = make_runtime(concurrency=1)  # one at a time: exactly one saga meets the failure
    rt.executor.deps.rng = _FirstChoice()  # the first candidate: `bad` until it failed
    status = rt.coordinator.run_pass()
    outcomes = Counter(i.outcome for i in status.create_invoked_ok)
    assert outcomes == {"unwound": 1, "succeeded": 7}, outcomes
    assert len(bad.attach_calls) == 1  # no saga after the failure went there
    assert any(
        str(bad.address) in w and "failed a call in this pass" in w for w in status.warnings
    ), status.warnings
    assert status.pantries_up[str(bad.address)] is False
    bad.fail_next(0)
    # The next pass probes it again and uses it.
    status = rt.coordinator.run_pass()
    assert [i.outcome for i in status.create_invoked_ok] == ["succeeded"]
    assert status.warnings == [] and status.pantries_up[str(bad.address)] is True
    assert_invariants(db, registered)


class _FirstChoice(random.Random):
    def choice(self, seq):  # type: ignore[override]
        return seq[0]


def test_no_answering_pantry_unwinds_the_creates(db, registered, run_pass):
    _seed(db, snapshots=2)
    for sim in registered:
        sim.refuse_connections()
    status = run_pass()
    assert [i.outcome for i in status.create_invoked_ok] == ["unwound", "unwound"]
    for inv in status.create_invoked_ok:
        assert "none of the 3 in-service pantries answered" in inv.error
    assert len(status.warnings) == 3
    for sim in registered:
        sim.refuse_connections(False)


def test_detach_on_an_expunged_pantry_does_not_wait_a_timeout(db, registered, run_pass, settings):
    settings.pantry.request_timeout_secs = 5.0
    settings.pantry.retry_budget_secs = 5.0
    _seed(db, snapshots=3)
    run_pass()
    (rec, *_) = _live(db)
    victim = next(s for s in registered if s.address == rec.pantry_address)
    with db.begin() as conn:
        pantry_sql.expunge(conn, victim.address)
    victim.set_latency(30)  # a hanging pantry: any call to it would cost a timeout
    before = len(victim.requests)
    start = time.monotonic()
    status = run_pass()
    took = time.monotonic() - start
    victim.set_latency(0)
    assert status.errors == [], status.errors
    assert status.delete_invoked_ok and all(
        i.outcome == "succeeded" for i in status.delete_invoked_ok
    )
    assert took < 4.0, took
    assert len(victim.requests) == before  # not called at all


def test_outside_a_pass_the_pick_asks_the_pantries(db, registered):
    from udx.pantry.inventory import DbInventory

    deps = ExportSagaDeps(DbInventory(db), request_timeout_secs=1.0)
    registered[0].refuse_connections()
    registered[1].refuse_connections()
    assert deps.pick_pantry() == registered[2].address  # a recovered saga: no pass context
    registered[0].refuse_connections(False)
    registered[1].refuse_connections(False)
    # In a pass the pick makes no call, and skips a pantry once it failed.
    a, b = registered[0].address, registered[1].address
    probes = {x: Probe(x, 0.01, frozenset()) for x in (a, b)}
    deps.begin_pass(PassPantries([a, b], probes, slow_secs=1))
    calls = sum(len(s.requests) for s in registered)
    assert {deps.pick_pantry() for _ in range(40)} == {a, b}
    from udx.pantry.client import PantryError

    deps.pantry_failed(a, PantryError(a, "timed out", timed_out=True))
    deps.pantry_failed(b, PantryError(b, "HTTP 400: bad request", status_code=400))
    assert {deps.pick_pantry() for _ in range(20)} == {b}  # a refusal is not ill health
    assert sum(len(s.requests) for s in registered) == calls
    assert deps.out_of_service(registered[2].address)  # not in this pass's list
    deps.end_pass()
    assert not deps.out_of_service(registered[2].address)


def test_lost_attachments_still_found_from_the_probe(db, registered, run_pass):
    _seed(db, snapshots=4)
    run_pass()
    restarted = registered[0]
    lost = {r.id for r in _live(db) if r.pantry_address == restarted.address}
    restarted.restart()
    registered[1].refuse_connections()  # did not answer: its records are never "lost"
    status = run_pass()
    registered[1].refuse_connections(False)
    assert status.records_marked_lost == len(lost)


def test_a_record_made_live_during_the_probe_is_not_lost(db, registered, make_runtime):
    """Another pass finishing a create saga just after this pass probed the pantries
    (the probe lacks its volume) must not have its record marked lost: Live records
    are read before the probe."""
    import uuid

    from udx.domain.model import ResourceType

    with db.begin() as conn:
        (ref,) = seed.seed_fleet(conn, snapshots=1, project_images=0)
        rec = exports.create(conn, uuid.uuid4(), ResourceType.SNAPSHOT, ref.resource_id)
    other = make_runtime()  # the other pass's process
    rt = make_runtime()
    real_probe = rt.coordinator._probe

    def probe_then_other_pass_goes_live(in_service):
        pantries = real_probe(in_service)
        assert other.executor.run("export-create", {"export_id": str(rec.id)}).ok
        return pantries

    rt.coordinator._probe = probe_then_other_pass_goes_live  # type: ignore[method-assign]
    status = rt.coordinator.run_pass()
    assert status.errors == [] and status.records_marked_lost == 0
    (live,) = _live(db)
    assert live.id == rec.id and not live.resource_deleted
    assert_invariants(db, registered)
