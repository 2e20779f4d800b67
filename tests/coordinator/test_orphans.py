"""The orphan sweep (issue 14 item 2) on SQLite and PostgreSQL: an attachment that
no record accounts for and no running saga owns is detached once it has been seen
orphaned longer than the grace period; passes remember "seen" in
orphan_attachment."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from sqlalchemy import select, update

from udx import seed
from udx.datastore import exports, saga_log
from udx.db.schema import orphan_attachment, saga, user_data_export
from udx.db.types import utcnow
from udx.domain.model import ExportState

VCR = {"type": "file", "block_size": 512, "id": "x", "path": "/nowhere"}


def _seen(db) -> dict[tuple[str, str], object]:
    with db.connect() as conn:
        return {
            (a, v): t
            for a, v, t in conn.execute(
                select(
                    orphan_attachment.c.pantry_address,
                    orphan_attachment.c.volume_id,
                    orphan_attachment.c.first_seen,
                )
            )
        }


def _age(db, secs: float) -> None:
    """Every remembered orphan was first seen `secs` earlier (instead of sleeping)."""
    seen = _seen(db)
    with db.begin() as conn:
        for (a, v), t in seen.items():
            conn.execute(
                update(orphan_attachment)
                .where(orphan_attachment.c.pantry_address == a, orphan_attachment.c.volume_id == v)
                .values(first_seen=t - timedelta(seconds=secs))
            )


def _unwound_copy(db, volume_id: str) -> str:
    """`volume_id` as the copy of a create saga that unwound (its undo's detach
    having failed to reach the pantry): what the sweep is for."""
    _running_saga_owning(db, volume_id, done=True)
    return volume_id


def _running_saga_owning(db, volume_id: str, *, done: bool = False) -> None:
    """A create saga another process is running (or, `done`, one that unwound),
    that has logged its volume id."""
    sid = uuid.uuid4()
    now = utcnow()
    with db.begin() as conn:
        saga_log.insert(
            conn,
            saga_id=sid,
            name="export-create",
            params_json=json.dumps({"export_id": str(uuid.uuid4())}),
            sec_id=uuid.uuid4(),
            now=now,
            lease_expires=now + timedelta(hours=1),
        )
        saga_log.append_event(
            conn,
            saga_id=sid,
            node_id="generate_ids",
            event_type="succeeded",
            data=json.dumps({"lock_id": str(uuid.uuid4()), "volume_id": volume_id}),
            creator=uuid.uuid4(),
            now=now,
        )
        if done:
            conn.execute(
                update(saga).where(saga.c.id == sid).values(saga_state="done", outcome="unwound")
            )


def test_sweep_detaches_only_what_nothing_accounts_for_after_the_grace(
    db, registered, make_runtime, settings
):
    settings.coordinator.orphan_grace_secs = 60
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=2, project_images=0)
    first = make_runtime().coordinator.run_pass()
    assert first.errors == [] and first.orphans_detached == 0
    with db.connect() as conn:
        live, deleting = exports.list_exports(conn, states=[ExportState.LIVE])
    with db.begin() as conn:  # a delete saga holds this one: still accounted for
        conn.execute(
            update(user_data_export)
            .where(user_data_export.c.id == deleting.id)
            .values(state="deleting", operating_saga_id=uuid.uuid4())
        )
    sim = registered[0]
    orphan, owned = _unwound_copy(db, str(uuid.uuid4())), str(uuid.uuid4())
    # Attached by the rest of the control plane (a disk import, say): never ours.
    foreign = str(uuid.uuid4())
    for vid in (orphan, owned, foreign, "not-a-uuid"):
        sim.attach(vid, VCR)
    _running_saga_owning(db, owned)
    detaches = sim.total_detach_calls

    # First sighting: remembered, not detached.
    status = make_runtime().coordinator.run_pass()
    assert status.errors == [] and status.orphans_detached == 0
    assert set(_seen(db)) == {(str(sim.address), orphan)}
    # The dry run lists it, and what it would do.
    plan = make_runtime().coordinator.plan()
    steps = [s for s in plan.steps if s.step == "1-orphans"]
    assert len(steps) == 1 and orphan in steps[0].detail
    assert steps[0].action == "keep the orphan attachment (grace period)"
    # The memory holds across passes: a later pass within the grace keeps first_seen.
    before = _seen(db)
    make_runtime().coordinator.run_pass()
    assert _seen(db) == before

    _age(db, 120)
    plan = make_runtime().coordinator.plan()
    steps = [s for s in plan.steps if s.step == "1-orphans"]
    assert [s.action for s in steps] == ["detach the orphan attachment"]
    assert _seen(db) == {k: t - timedelta(seconds=120) for k, t in before.items()}  # untouched

    status = make_runtime().coordinator.run_pass()
    assert status.errors == [] and status.orphans_detached == 1
    assert status.to_json()["orphans_detached"] == 1
    assert orphan not in sim.attachments
    assert sim.total_detach_calls == detaches + 1  # that one, nothing else
    everywhere = {v for s in registered for v in s.attachments}
    assert {str(live.volume_id), str(deleting.volume_id), owned, foreign, "not-a-uuid"} <= (
        everywhere
    )
    assert _seen(db) == {}


def test_an_orphan_accounted_for_again_is_forgotten(db, registered, make_runtime, settings):
    settings.coordinator.orphan_grace_secs = 60
    sim = registered[1]
    vid = _unwound_copy(db, str(uuid.uuid4()))
    sim.attach(vid, VCR)
    make_runtime().coordinator.run_pass()
    assert set(_seen(db)) == {(str(sim.address), vid)}
    _running_saga_owning(db, vid)  # e.g. the memory of a saga another pass adopted
    _age(db, 120)
    status = make_runtime().coordinator.run_pass()
    assert status.orphans_detached == 0 and vid in sim.attachments
    assert _seen(db) == {}  # its grace starts again if it is ever orphaned


def test_a_pantry_that_does_not_answer_is_not_swept(db, registered, make_runtime, settings):
    settings.coordinator.orphan_grace_secs = 0
    sim = registered[2]
    vid = _unwound_copy(db, str(uuid.uuid4()))
    sim.attach(vid, VCR)
    sim.fail_next(1, 500, "GET")  # its status call fails: it did not answer
    status = make_runtime().coordinator.run_pass()
    assert status.orphans_detached == 0 and vid in sim.attachments
    assert _seen(db) == {}
    status = make_runtime().coordinator.run_pass()  # answering now, grace 0: at once
    assert status.orphans_detached == 1 and vid not in sim.attachments


def test_an_orphan_that_will_not_detach_is_an_error_and_stays_remembered(
    db, registered, make_runtime, settings
):
    settings.coordinator.orphan_grace_secs = 0
    sim = registered[0]
    vid = _unwound_copy(db, str(uuid.uuid4()))
    sim.attach(vid, VCR)
    sim.detach_503_times(1000)
    status = make_runtime().coordinator.run_pass()
    assert status.orphans_detached == 0
    assert any("orphan" in e and vid in e for e in status.errors), status.errors
    assert set(_seen(db)) == {(str(sim.address), vid)}
    sim.detach_503_times(0)
    status = make_runtime().coordinator.run_pass()
    assert status.orphans_detached == 1 and status.errors == []


def test_a_record_going_live_while_its_pantry_is_probed_is_not_marked_lost(
    db, registered, make_runtime
):
    """Another pass makes a record Live (attach, then go Live) just after this
    pass's status call listed its pantry: the listing lacks the volume, and the
    record must not be taken for lost. Live records are read before the probe."""
    from udx.pantry.client import PantryClient
    from udx.pantry.sim import PREFIX

    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=2, project_images=0)
    assert make_runtime().coordinator.run_pass().errors == []
    with db.connect() as conn:
        _, rec = exports.list_exports(conn, states=[ExportState.LIVE])
    sim = next(s for s in registered if s.address == rec.pantry_address)
    vid = str(rec.volume_id)
    vcr = sim.attachments[vid]
    with PantryClient(sim.address, timeout=5) as client:
        client.detach(rec.volume_id)
    with db.begin() as conn:  # another pass's create saga, before its attach
        conn.execute(
            update(user_data_export)
            .where(user_data_export.c.id == rec.id)
            .values(state="assigning", operating_saga_id=uuid.uuid4())
        )

    def goes_live(record) -> None:  # type: ignore[no-untyped-def]
        if record.path != PREFIX or sim.on_request is None:
            return
        sim.on_request = None  # once
        sim.attach(vid, vcr)  # after this status answer was made
        with db.begin() as conn:
            conn.execute(
                update(user_data_export)
                .where(user_data_export.c.id == rec.id)
                .values(state="live", operating_saga_id=None)
            )

    sim.on_request = goes_live
    status = make_runtime().coordinator.run_pass()
    assert sim.on_request is None, "the probe never reached the pantry"
    assert status.errors == [] and status.records_marked_lost == 0
    with db.connect() as conn:
        after = exports.get_required(conn, rec.id)
    assert after.state is ExportState.LIVE and not after.resource_deleted


def test_the_log_is_searched_only_for_attachments_no_record_names(db, registered, make_runtime):
    """Every Live export's attachment is a candidate until the records are read; the
    log-text match (a LIKE per id) must only see what is left, or a no-op pass over
    a large fleet matches every attachment against every create saga's log."""
    from udx.datastore import orphans
    from udx.testing.statements import count_statements

    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=6, project_images=0)
    assert make_runtime().coordinator.run_pass().errors == []
    attached = {v for s in registered for v in s.attachments}
    assert len(attached) == 6
    orphan = _unwound_copy(db, str(uuid.uuid4()))
    with count_statements(db.engine) as log, db.connect() as conn:
        assert orphans.unaccounted(conn, attached | {orphan}) == {orphan}
    likes = [s for s in log.statements if "LIKE" in s.upper()]
    # One statement, one LIKE: for the one id no record names.
    assert len(likes) == 1 and likes[0].upper().count("LIKE") == 1
    with count_statements(db.engine) as log, db.connect() as conn:
        assert orphans.unaccounted(conn, attached) == set()
    assert not [s for s in log.statements if "LIKE" in s.upper()]
