"""Coordinator pass scenarios (issue 5) on SQLite and PostgreSQL, with simulated
pantries; the invariants are checked after every scenario."""

from __future__ import annotations

import uuid

from udx import seed
from udx.datastore import exports, resources
from udx.datastore import pantries as pantry_sql
from udx.domain.model import ExportState, ResourceType
from udx.testing.invariants import dump_tables

from .conftest import assert_invariants


def _records(db) -> list:
    with db.connect() as conn:
        return exports.list_exports(conn)


def _live(db) -> list:
    return [r for r in _records(db) if r.state is ExportState.LIVE]


def _seed(db, *, snapshots=1, images=1, silo_images=0):
    with db.begin() as conn:
        return seed.seed_fleet(
            conn, snapshots=snapshots, project_images=images, silo_images=silo_images
        )


def test_nothing_to_do(db, registered, run_pass):
    status = run_pass()
    assert status.errors == []
    assert status.create_invoked_ok == [] and status.delete_invoked_ok == []
    assert status.records_marked_for_deletion == 0 and status.records_marked_lost == 0
    assert not status.failed
    assert_invariants(db, registered)


def test_new_snapshot_and_image_become_live_attached_once(db, registered, run_pass):
    refs = _seed(db, snapshots=1, images=1)
    status = run_pass()
    assert status.errors == []
    assert sorted(i.outcome for i in status.create_invoked_ok) == ["succeeded", "succeeded"]
    live = _live(db)
    assert sorted((r.resource_type, r.resource_id) for r in live) == sorted(
        (r.resource_type, r.resource_id) for r in refs
    )
    for rec in live:
        holders = [s for s in registered if str(rec.volume_id) in s.attachments]
        assert len(holders) == 1 and holders[0].address == rec.pantry_address
        assert holders[0].attach_calls[str(rec.volume_id)] == 1
    assert_invariants(db, registered)
    again = run_pass()  # a second pass has nothing to do
    assert again.create_invoked_ok == [] and again.errors == []


def test_requested_record_left_by_an_unwound_saga_is_created_next_pass(db, registered, run_pass):
    _seed(db, snapshots=1, images=0)
    for sim in registered:
        sim.fail_next(10_000, status=500)  # status calls fail too: no pantry to pick
    first = run_pass()
    assert [i.outcome for i in first.create_invoked_ok] == ["unwound"]
    assert first.failed and first.errors
    (rec,) = _records(db)
    assert rec.state is ExportState.REQUESTED and rec.operating_saga_id is None
    for sim in registered:
        sim.fail_next(0)
    second = run_pass()
    assert [i.outcome for i in second.create_invoked_ok] == ["succeeded"]
    assert second.create_invoked_ok[0].export_id == str(rec.id)
    assert _live(db)[0].id == rec.id
    assert_invariants(db, registered)


def test_deleting_a_snapshot_deletes_only_its_export_then_the_images(db, registered, run_pass):
    snap, img = _seed(db, snapshots=1, images=1)
    run_pass()
    with db.begin() as conn:
        resources.soft_delete(conn, ResourceType.SNAPSHOT, [snap.resource_id])
    status = run_pass()
    assert [(i.resource_id, i.outcome) for i in status.delete_invoked_ok] == [
        (str(snap.resource_id), "succeeded")
    ]
    states = {r.resource_id: r.state for r in _records(db)}
    assert states == {snap.resource_id: ExportState.DELETED, img.resource_id: ExportState.LIVE}
    assert_invariants(db, registered)
    with db.begin() as conn:
        resources.soft_delete(conn, ResourceType.IMAGE, [img.resource_id])
    status = run_pass()
    assert [i.resource_id for i in status.delete_invoked_ok] == [str(img.resource_id)]
    assert all(r.state is ExportState.DELETED for r in _records(db))
    assert all(not s.attachments for s in registered)
    assert sum(s.total_detach_calls for s in registered) >= 2
    assert_invariants(db, registered)


def test_requested_record_with_resource_gone_is_bypassed_without_a_saga(db, registered, run_pass):
    (snap,) = _seed(db, snapshots=1, images=0)
    export_id = uuid.uuid4()
    with db.begin() as conn:
        exports.create(conn, export_id, ResourceType.SNAPSHOT, snap.resource_id)
        resources.soft_delete(conn, ResourceType.SNAPSHOT, [snap.resource_id])
    status = run_pass()
    assert [b.export_id for b in status.records_bypassed_ok] == [str(export_id)]
    assert status.create_invoked_ok == [] and status.delete_invoked_ok == []
    assert sum(s.total_attach_calls for s in registered) == 0
    (rec,) = _records(db)
    assert rec.state is ExportState.DELETED
    assert_invariants(db, registered)


def test_expunged_pantry_records_are_deleted_and_recreated_elsewhere(db, registered, run_pass):
    _seed(db, snapshots=6, images=3)
    run_pass()
    by_pantry: dict[str, set] = {}
    for rec in _live(db):
        by_pantry.setdefault(str(rec.pantry_address), set()).add(rec.id)
    victim = max(registered, key=lambda s: len(by_pantry.get(str(s.address), ())))
    on_victim = by_pantry[str(victim.address)]
    with db.begin() as conn:
        pantry_sql.expunge(conn, victim.address)
    victim.stop()
    status = run_pass()
    assert status.records_marked_for_deletion == len(on_victim)
    assert {i.export_id for i in status.delete_invoked_ok} == {str(i) for i in on_victim}
    assert all(i.outcome == "succeeded" for i in status.delete_invoked_ok)
    third = run_pass()
    assert len(third.create_invoked_ok) == len(on_victim)
    live = _live(db)
    assert len(live) == 9
    assert all(r.pantry_address != victim.address for r in live)
    assert_invariants(db, registered)


def test_restarted_pantry_lost_attachments_are_replaced(db, registered, run_pass):
    _seed(db, snapshots=4, images=2)
    run_pass()
    restarted = registered[0]
    lost = {r.id for r in _live(db) if r.pantry_address == restarted.address}
    restarted.restart()
    status = run_pass()
    assert status.records_marked_lost == len(lost)
    assert {i.export_id for i in status.delete_invoked_ok} == {str(i) for i in lost}
    assert all(i.outcome == "succeeded" for i in status.delete_invoked_ok)
    run_pass()
    assert len(_live(db)) == 6
    assert_invariants(db, registered)


def test_transient_pantry_failures_are_retried(db, registered, run_pass, settings):
    settings.pantry.retry_budget_secs = 10.0
    (snap,) = _seed(db, snapshots=1, images=0)
    for sim in registered:  # attach fails twice with 503, then works
        sim.fail_next(2, status=503, method="POST")
    status = run_pass()
    assert status.errors == [], status.errors
    assert [i.outcome for i in status.create_invoked_ok] == ["succeeded"]
    (rec,) = _live(db)
    holder = next(s for s in registered if s.address == rec.pantry_address)
    assert holder.attach_calls[str(rec.volume_id)] == 3  # two refused, one accepted
    assert_invariants(db, registered)

    holder.detach_503_times(2)  # detach answers 503 while "deactivating"
    with db.begin() as conn:
        resources.soft_delete(conn, ResourceType.SNAPSHOT, [snap.resource_id])
    status = run_pass()
    assert status.errors == [], status.errors
    assert [i.outcome for i in status.delete_invoked_ok] == ["succeeded"]
    assert not holder.attachments
    assert_invariants(db, registered)


def test_pantry_down_past_the_budget_unwinds_to_requested(db, registered, run_pass, settings):
    settings.pantry.retry_budget_secs = 0.5
    _seed(db, snapshots=1, images=0)
    for sim in registered:  # status answers (so a pantry is picked); attach never does
        sim.fail_next(10_000, status=500, method="POST")
    status = run_pass()
    assert status.failed
    assert [i.outcome for i in status.create_invoked_ok] == ["unwound"]
    assert any("unwound" in e for e in status.errors)
    (rec,) = _records(db)
    assert rec.state is ExportState.REQUESTED and rec.generation == 1
    assert rec.operating_saga_id is None
    assert_invariants(db, registered)


def test_dry_run_changes_nothing(db, registered, make_runtime, run_pass):
    snap, _img = _seed(db, snapshots=2, images=1)[:2]
    run_pass()
    with db.begin() as conn:
        resources.soft_delete(conn, ResourceType.SNAPSHOT, [snap.resource_id])
        pantry_sql.expunge(conn, registered[0].address)
    _seed(db, snapshots=1, images=0)
    before = dump_tables(db)
    calls_before = [(s.total_attach_calls, s.total_detach_calls) for s in registered]
    report = make_runtime().coordinator.plan()
    assert dump_tables(db) == before
    assert [(s.total_attach_calls, s.total_detach_calls) for s in registered] == calls_before
    actions = {s.action for s in report.steps}
    assert "create record and run the create saga" in actions
    assert "run the delete saga" in actions
    assert any(s.step == "2-changeset" for s in report.steps)


def test_empty_inventory_marks_nothing_and_fails_the_pass(db, registered, run_pass):
    _seed(db, snapshots=2, images=1)
    run_pass()
    with db.begin() as conn:
        for sim in registered:
            pantry_sql.expunge(conn, sim.address)
    status = run_pass()
    assert status.failed and status.records_marked_for_deletion == 0
    assert any("no pantry in service" in e for e in status.errors)
    live = _live(db)
    assert len(live) == 3 and not any(r.resource_deleted for r in live)


def test_records_are_requested_in_chunks(db, registered, run_pass, monkeypatch):
    from udx.testing.statements import count_statements

    monkeypatch.setattr(exports, "REQUEST_CHUNK", 3)
    refs = _seed(db, snapshots=4, images=3)
    with count_statements(db.engine) as log:
        status = run_pass()
    assert status.errors == []
    assert sorted(i.outcome for i in status.create_invoked_ok) == ["succeeded"] * 7
    inserts = [
        s for s in log.statements if s.lstrip().upper().startswith("INSERT INTO USER_DATA_EXPORT")
    ]
    assert len(inserts) == 3  # 7 resources, 3 per statement
    assert sorted((r.resource_type, r.resource_id) for r in _live(db)) == sorted(
        (r.resource_type, r.resource_id) for r in refs
    )
    assert_invariants(db, registered)
