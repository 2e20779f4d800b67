"""The export create and delete sagas through the saga harness (issue 5): every
action twice, failure at each node, every undo twice, a crash at each point.
The world checked is the export record, the volumes, the region snapshot
reference counts and the simulated pantries' attachments."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import delete, select

from udx.datastore import exports, volumes
from udx.db.engine import Database
from udx.db.schema import image, region_snapshot, volume
from udx.db.schema import volume_resource_usage as usage
from udx.pantry.sim import SimulatedPantry, start_simulated_pantries
from udx.saga import SagaExecutor
from udx.saga.harness import SagaHarness
from udx.sagas import CREATE_SAGA, DELETE_SAGA
from udx.testing.invariants import dump_tables

from . import export_world as w


@pytest.fixture
def sims(db: Database) -> Iterator[list[SimulatedPantry]]:
    from udx.datastore import pantries

    started = start_simulated_pantries(2)
    with db.begin() as conn:
        for sim in started:
            pantries.add(conn, sim.address)
    yield started
    for sim in started:
        sim.stop()


@pytest.fixture
def image_id(db: Database):
    return w.seed_image(db)


# The create saga runs in two shapes: outside a pass its pantry pick calls pantries
# and runs alone; in a pass it is made in memory and joins the log transaction of
# the nodes before it. The harness drives both.
DEPS = ["tests.sagas.export_world:make_deps", "tests.sagas.export_world:make_pass_deps"]


@pytest.fixture(params=DEPS, ids=["alone", "in-pass"])
def create_deps(request) -> str:
    return request.param


def _create_harness(db_url, db, sims, image_id, deps=DEPS[0]) -> SagaHarness:
    return SagaHarness(
        db_url,
        "udx.sagas.export_create:CREATE_SAGA",
        reset=lambda: w.reset_requested(db, sims, image_id),
        params={"export_id": str(w.EXPORT_ID)},
        world=lambda: w.world(db, sims),
        deps=deps,
        lease_secs=0.2,
    )


def _delete_harness(db_url, db, sims, image_id) -> SagaHarness:
    return SagaHarness(
        db_url,
        "udx.sagas.export_delete:DELETE_SAGA",
        reset=lambda: w.reset_live_marked(db, sims, image_id),
        params=lambda: w.delete_params(db),
        world=lambda: w.world(db, sims),
        deps="tests.sagas.export_world:make_deps",
        lease_secs=0.2,
    )


def test_create_saga_normal_run(db_url, db, sims, image_id, create_deps):
    with _create_harness(db_url, db, sims, image_id, create_deps) as h:
        start, end, _ = h.baseline()
    assert start["record"] == ("requested", True, False, False, False)
    assert end["record"] == ("live", True, False, True, True)
    assert end["attachments"] == 1 and end["attached_where_recorded"] is True
    assert end["live_volumes"] == start["live_volumes"] + 1
    # Every resource read by the source and the copy, none deleting.
    assert {(n, d) for _k, n, d in end["resources"]} == {(2, False)}
    assert sorted(k for k, _n, _d in end["resources"]).count("read_only_region") == 1
    assert sum(s.total_attach_calls for s in sims) >= 1


def test_create_saga_actions_twice_unwind_and_undo_twice(db_url, db, sims, image_id, create_deps):
    with _create_harness(db_url, db, sims, image_id, create_deps) as h:
        h.check_actions_idempotent()
        assert h.check_unwind_at_each_node() == len(CREATE_SAGA.nodes)
        h.check_undos_idempotent()


def test_create_saga_crash_at_each_point(db_url, db, sims, image_id, create_deps):
    with _create_harness(db_url, db, sims, image_id, create_deps) as h:
        assert h.check_crash_at_each_point() > len(CREATE_SAGA.nodes)


def test_create_saga_crash_while_unwinding(db_url, db, sims, image_id, create_deps):
    with _create_harness(db_url, db, sims, image_id, create_deps) as h:
        assert h.check_crash_at_each_point(fail_at="go_live") > 0


# The delete saga's detach and volume deletion have no undo (DESIGN.md section 5):
# a failure after them cannot put the attachment back. Up to and including the
# detach node, a failure restores the world; after it, the record returns to
# Live with resource_deleted still set, so the next pass runs the delete saga
# again, which converges (detach is ok-if-gone, soft-deleting a soft-deleted volume
# changes nothing).
DELETE_REVERSIBLE = ["generate_lock_id", "read_generation", "lock", "check_volume", "detach"]


def test_delete_saga_normal_run(db_url, db, sims, image_id):
    with _delete_harness(db_url, db, sims, image_id) as h:
        start, end, _ = h.baseline()
    assert start["record"] == ("live", True, True, True, True)
    assert start["attachments"] == 1
    assert end["record"] == ("deleted", True, True, True, True)
    assert end["attachments"] == 0
    assert end["live_volumes"] == start["live_volumes"] - 1
    assert {(n, d) for _k, n, d in end["resources"]} == {(1, False)}  # the source's alone
    # The copy stays soft-deleted with its (empty: the source reads everything) list.
    assert w.clean_up_lists(db) == ['{"V3": {"regions": [], "region_snapshots": []}}']


def test_delete_saga_actions_twice_unwind_and_undo_twice(db_url, db, sims, image_id):
    with _delete_harness(db_url, db, sims, image_id) as h:
        h.check_actions_idempotent()
        assert h.check_unwind_at_each_node(nodes=DELETE_REVERSIBLE) == 5
        h.check_undos_idempotent(nodes=DELETE_REVERSIBLE)


@pytest.mark.parametrize("node", ["delete_volume", "finish"])
def test_delete_saga_failure_after_detach_converges_on_retry(db_url, db, sims, image_id, node):
    from udx.saga.harness import transform

    with _delete_harness(db_url, db, sims, image_id) as h:
        _, end, _ = h.baseline()
        _start, result = h._run(transform(DELETE_SAGA, fail_at=node))
        assert result.outcome == "unwound" and result.failed_node == node
        after = w.world(db, sims)
        # Unlocked, back to Live, still marked: the next pass picks it up again.
        assert after["record"] == ("live", True, True, True, True)
        assert after["attachments"] == 0
        with SagaExecutor(db, [DELETE_SAGA], deps=w.make_deps(db)) as ex:
            retry = ex.run(DELETE_SAGA.name, w.delete_params(db))
        assert retry.outcome == "succeeded", retry.error
        assert w.world(db, sims) == end


def test_delete_saga_crash_at_each_point(db_url, db, sims, image_id):
    with _delete_harness(db_url, db, sims, image_id) as h:
        assert h.check_crash_at_each_point() > len(DELETE_SAGA.nodes)


class _AttachAppliedButAnswerLost:
    """Forwards every request to the real pantry, then loses the answer to each
    attach (POST): the pantry attached the volume, the client saw a timeout."""

    def __init__(self) -> None:
        import httpx

        self.inner = httpx.HTTPTransport()

    def handle_request(self, request):  # type: ignore[no-untyped-def]
        import httpx

        response = self.inner.handle_request(request)
        if request.method == "POST":
            response.read()
            response.close()
            raise httpx.ReadTimeout("answer lost", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_failed_attach_leaves_nothing_attached(db, sims, image_id):
    w.reset_requested(db, sims, image_id)
    deps = w.make_deps(db)
    deps.retry_budget_secs = 0.3
    deps.transport = _AttachAppliedButAnswerLost()
    with SagaExecutor(db, [CREATE_SAGA], deps=deps) as ex:
        result = ex.run(CREATE_SAGA.name, {"export_id": str(w.EXPORT_ID)})
    assert result.outcome == "unwound" and result.failed_node == "attach"
    assert sum(s.total_attach_calls for s in sims) >= 1  # the pantry did attach...
    assert all(not s.attachments for s in sims)  # ...and the failing action detached it
    assert w.world(db, sims)["record"] == ("requested", True, False, False, False)


def test_delete_saga_detach_is_fenced_after_its_volume_status(db, sims, image_id):
    """The detach node asks the volume's status, then detaches. When another
    process adopted the saga in between (this one was paused), the detach is not
    sent: the adopter may have unwound the saga back to Live (issue 14 item 1)."""
    from datetime import timedelta

    from sqlalchemy import select, update

    from udx.datastore import saga_log
    from udx.db.schema import saga
    from udx.db.types import utcnow

    w.reset_live_marked(db, sims, image_id)
    params = w.delete_params(db)
    taken: list[str] = []

    def take_over(record) -> None:  # type: ignore[no-untyped-def]
        if record.method != "GET" or "/volume/" not in record.path or taken:
            return
        with db.begin() as conn:
            (sid,) = conn.execute(select(saga.c.id).where(saga.c.saga_state == "running")).one()
            conn.execute(
                update(saga).where(saga.c.id == sid).values(lease_expires=utcnow() - timedelta(1))
            )
            now = utcnow()
            other = uuid.uuid4()
            assert saga_log.adopt(conn, sid, other, now=now, lease_expires=now + timedelta(1))
        taken.append(str(other))

    for sim in sims:
        sim.on_request = take_over
    try:
        with SagaExecutor(db, [DELETE_SAGA], deps=w.make_deps(db)) as ex:
            result = ex.run(DELETE_SAGA.name, params)
    finally:
        for sim in sims:
            sim.on_request = None
    assert taken, "the volume status was never asked"
    assert result.outcome == "interrupted" and taken[0] in (result.error or "")
    assert sum(s.total_detach_calls for s in sims) == 0
    assert w.world(db, sims)["attachments"] == 1


# --- volume accounting through the sagas (issue 11) ---------------------------------------


def _image_volume(db: Database, image_id: uuid.UUID) -> tuple[uuid.UUID, list[str]]:
    with db.connect() as conn:
        vid = conn.execute(select(image.c.volume_id).where(image.c.id == image_id)).scalar_one()
        data = conn.execute(select(volume.c.data).where(volume.c.id == vid)).scalar_one()
    return vid, volumes.read_only_targets(json.loads(data))


def test_create_saga_unwinds_on_a_target_that_resolves_to_nothing(db, sims, image_id):
    source, targets = _image_volume(db, image_id)
    w.reset_requested(db, sims, image_id)
    with db.begin() as conn:
        conn.execute(delete(region_snapshot).where(region_snapshot.c.snapshot_addr == targets[0]))
    before = w.world(db, sims)
    tables = dump_tables(db)
    with SagaExecutor(db, [CREATE_SAGA], deps=w.make_deps(db)) as ex:
        result = ex.run(CREATE_SAGA.name, {"export_id": str(w.EXPORT_ID)})
    assert result.outcome == "unwound" and result.failed_node == "copy_volume"
    assert targets[0] in str(result.error) and str(source) in str(result.error)
    after = dump_tables(db)
    # Nothing written but the saga log and the lock's bumped generation.
    for name in ("volume", "volume_resource_usage", "region_snapshot", "region"):
        assert after[name] == tables[name], name
    assert w.world(db, sims) == before
    assert all(not s.attachments for s in sims)


def test_delete_saga_with_a_missing_usage_row_fails_before_detaching(db, sims, image_id):
    w.reset_live_marked(db, sims, image_id)
    params = w.delete_params(db)
    copy = params["volume_id"]
    with db.begin() as conn:
        victim = conn.execute(
            usage.select().where(usage.c.volume_id == copy, usage.c.region_id.is_not(None))
        ).first()
        assert victim is not None  # the parent's read-only region
        conn.execute(delete(usage).where(usage.c.usage_id == victim.usage_id))
    before = w.world(db, sims)
    tables = dump_tables(db)
    with SagaExecutor(db, [DELETE_SAGA], deps=w.make_deps(db)) as ex:
        result = ex.run(DELETE_SAGA.name, params)
    assert result.outcome == "unwound" and result.failed_node == "check_volume"
    assert copy in str(result.error) and "no usage row" in str(result.error)
    # Live, marked, still attached where recorded; volumes and usage untouched.
    assert w.world(db, sims) == before
    assert before["record"] == ("live", True, True, True, True)
    assert before["attached_where_recorded"] is True
    after = dump_tables(db)
    for name in ("volume", "volume_resource_usage", "region_snapshot", "region"):
        assert after[name] == tables[name], name
    with db.connect() as conn:
        assert exports.get_required(conn, w.EXPORT_ID).resource_deleted


def test_in_a_pass_the_pick_joins_the_log_transaction_before_it(db, sims, image_id):
    """In a pass the pick is made from the probe in memory: the first log transaction
    takes it (and the attach's `started`), one transaction and two statements fewer
    per export. Outside a pass it calls pantries and so runs in a transaction of its
    own (never with the saga row locked across HTTP)."""
    from udx.testing.statements import count_statements

    counts = {}
    for shape, make in [("alone", w.make_deps), ("in-pass", w.make_pass_deps)]:
        w.reset_requested(db, sims, image_id)
        deps = make(db)
        with SagaExecutor(db, [CREATE_SAGA], deps=deps) as ex, count_statements(db.engine) as log:
            result = ex.run(CREATE_SAGA.name, {"export_id": str(w.EXPORT_ID)})
        assert result.ok, result.error
        assert w.world(db, sims)["record"] == ("live", True, False, True, True)
        writes = [s for s in log.statements if s.upper().startswith("INSERT INTO SAGA_NODE")]
        counts[shape] = (log.transactions, len(writes))
    (tx_alone, ev_alone), (tx_pass, ev_pass) = counts["alone"], counts["in-pass"]
    # In a pass: ids to the attach's `started` in one, attach's end to Live in the
    # other. Alone: one more log write, plus the inventory read of the pick.
    assert (tx_pass, tx_alone) == (2, 4)
    assert (ev_pass, ev_alone) == (2, 3)  # one multi-row INSERT per log write
