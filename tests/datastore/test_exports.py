"""The user_data_export datastore: creation, lookups, transitions, marking."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from udx import seed
from udx.datastore import exports
from udx.db.engine import Database
from udx.db.schema import user_data_export
from udx.domain.address import PantryAddress
from udx.domain.errors import Conflict, NotFound
from udx.domain.model import ExportState, ResourceType

from .helpers import PANTRY_A, PANTRY_B, PANTRY_C, insert_record, to_assigning, to_live

SNAP = ResourceType.SNAPSHOT
IMAGE = ResourceType.IMAGE
S = ExportState


# --- creation ------------------------------------------------------------------------------


def test_create_fresh_record(db: Database) -> None:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        eid = uuid.uuid4()
        rec = exports.create(conn, eid, SNAP, sid)
    assert rec.id == eid
    assert rec.state is S.REQUESTED
    assert rec.generation == 0
    assert rec.resource_deleted is False
    assert rec.operating_saga_id is None
    assert rec.pantry_address is None and rec.volume_id is None
    assert (rec.resource_type, rec.resource_id) == (SNAP, sid)
    with db.connect() as conn:
        assert exports.get(conn, eid) == rec
        assert exports.get_required(conn, eid) == rec
        assert exports.by_resource(conn, SNAP, sid) == rec
        assert exports.by_resource(conn, IMAGE, sid) is None
        assert exports.all_for_resource(conn, SNAP, sid) == [rec]
        assert exports.get(conn, uuid.uuid4()) is None
        with pytest.raises(NotFound):
            exports.get_required(conn, uuid.uuid4())


@pytest.mark.parametrize("silo", [False, True])
def test_create_for_image(db: Database, silo: bool) -> None:
    with db.begin() as conn:
        iid = seed.add_image(conn, silo=silo)
        rec = exports.create(conn, uuid.uuid4(), IMAGE, iid)
    assert (rec.resource_type, rec.resource_id, rec.state) == (IMAGE, iid, S.REQUESTED)


def test_create_returns_existing_record_for_existing_id(db: Database) -> None:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        other = seed.add_snapshot(conn)
        eid = uuid.uuid4()
        first = exports.create(conn, eid, SNAP, sid)
        exports.start_assigning(conn, eid, uuid.uuid4(), 1)
        again = exports.create(conn, eid, SNAP, sid)
        # Even when asked for another resource, the id wins: a retried call is harmless.
        again_other = exports.create(conn, eid, SNAP, other)
    assert again.id == first.id and again.state is S.ASSIGNING
    assert again_other == again
    with db.connect() as conn:
        assert len(exports.list_exports(conn)) == 1


def test_duplicate_record_for_one_resource_refused(db: Database) -> None:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        first = exports.create(conn, uuid.uuid4(), SNAP, sid)
    with db.begin() as conn, pytest.raises(Conflict) as err:
        exports.create(conn, uuid.uuid4(), SNAP, sid)
    assert str(sid) in str(err.value) and str(first.id) in str(err.value)
    with db.connect() as conn:
        assert exports.all_for_resource(conn, SNAP, sid) == [first]


@pytest.mark.parametrize("state", ["assigning", "live", "deleting"])
def test_duplicate_refused_whatever_the_state(db: Database, state: str) -> None:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        insert_record(conn, sid, state=state, generation=1, saga=uuid.uuid4())
    with db.begin() as conn, pytest.raises(Conflict):
        exports.create(conn, uuid.uuid4(), SNAP, sid)


def test_create_allowed_again_after_deleted_record(db: Database) -> None:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        old = insert_record(conn, sid, state="deleted", generation=2, resource_deleted=True)
        new = exports.create(conn, uuid.uuid4(), SNAP, sid)
    with db.connect() as conn:
        assert exports.by_resource(conn, SNAP, sid) == new
        assert {r.id for r in exports.all_for_resource(conn, SNAP, sid)} == {old, new.id}


def test_create_for_missing_or_deleted_resource_is_not_found(db: Database) -> None:
    with db.begin() as conn:
        gone = seed.add_snapshot(conn, deleted=True)
        gone_image = seed.add_image(conn, deleted=True)
        sid = seed.add_snapshot(conn)
    cases = [(SNAP, uuid.uuid4()), (SNAP, gone), (IMAGE, gone_image), (IMAGE, sid)]
    for kind, rid in cases:
        with db.begin() as conn, pytest.raises(NotFound) as err:
            exports.create(conn, uuid.uuid4(), kind, rid)
        assert str(rid) in str(err.value)
    with db.connect() as conn:
        assert exports.list_exports(conn) == []


def test_partial_unique_index_allows_one_non_deleted_record(db: Database) -> None:
    sid = uuid.uuid4()
    with db.begin() as conn:
        for _ in range(3):
            insert_record(conn, sid, state="deleted", generation=1, resource_deleted=True)
        insert_record(conn, sid, state="live", generation=2, pantry=PANTRY_A)
    with pytest.raises(IntegrityError), db.begin() as conn:
        insert_record(conn, sid, state="requested")
    # The rule is per resource id, whatever its type.
    with pytest.raises(IntegrityError), db.begin() as conn:
        insert_record(conn, sid, resource_type=IMAGE, state="requested")
    with db.begin() as conn:
        insert_record(conn, sid, state="deleted", generation=3, resource_deleted=True)
    with db.connect() as conn:
        states = sorted(r.state.value for r in exports.all_for_resource(conn, SNAP, sid))
    assert states == ["deleted"] * 4 + ["live"]


# --- lookups ---------------------------------------------------------------------------------


def test_lookups_by_volume_and_lists(db: Database) -> None:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        iid = seed.add_image(conn)
        live = to_live(conn, SNAP, sid)
        req = exports.create(conn, uuid.uuid4(), IMAGE, iid)
    with db.connect() as conn:
        assert live.volume_id is not None
        assert exports.by_volume(conn, live.volume_id) == live
        assert exports.by_volume(conn, uuid.uuid4()) is None
        assert exports.list_exports(conn, states=[S.LIVE]) == [live]
        assert exports.list_exports(conn, resource_type=IMAGE) == [req]
        assert exports.list_exports(conn, states=[S.LIVE], resource_type=IMAGE) == []
        assert len(exports.list_exports(conn, limit=1)) == 1
        counts = exports.count_by_state(conn)
    assert counts[S.LIVE] == 1 and counts[S.REQUESTED] == 1 and counts[S.DELETED] == 0


# --- transitions: the whole life, and each step repeated ---------------------------------


def test_full_life_with_every_transition_repeated(db: Database) -> None:
    """Each transition called twice with the same arguments returns the same row."""
    create_saga, delete_saga, vol = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        eid = exports.create(conn, uuid.uuid4(), SNAP, sid).id

    def twice(fn, *args):  # type: ignore[no-untyped-def]
        with db.begin() as conn:
            first = fn(conn, eid, *args)
        with db.begin() as conn:
            second = fn(conn, eid, *args)
        assert first == second
        return first

    r = twice(exports.start_assigning, create_saga, 1)
    assert (r.state, r.operating_saga_id, r.generation) == (S.ASSIGNING, create_saga, 1)
    r = twice(exports.unassign, create_saga, 1)
    assert (r.state, r.operating_saga_id, r.generation) == (S.REQUESTED, None, 1)
    r = twice(exports.start_assigning, create_saga, 2)
    r = twice(exports.set_live, create_saga, 2, PANTRY_B, vol)
    assert (r.state, r.operating_saga_id, r.pantry_address, r.volume_id) == (
        S.LIVE, None, PANTRY_B, vol,
    )
    assert r.pantry_ip == "fd00:1122:3344:101::1" and r.pantry_port == 17000
    with db.begin() as conn:
        assert exports.mark_for_deletion(conn, eid) is True
        assert exports.mark_for_deletion(conn, eid) is False
    r = twice(exports.start_deleting, delete_saga, 3)
    assert (r.state, r.operating_saga_id, r.generation) == (S.DELETING, delete_saga, 3)
    r = twice(exports.undelete, delete_saga, 3)
    assert (r.state, r.operating_saga_id, r.generation) == (S.LIVE, None, 3)
    r = twice(exports.start_deleting, delete_saga, 4)
    r = twice(exports.set_deleted, delete_saga, 4)
    assert (r.state, r.operating_saga_id, r.generation) == (S.DELETED, None, 4)
    assert r.resource_deleted is True


def test_bypass_delete_requested_with_deleted_resource(db: Database) -> None:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        eid = exports.create(conn, uuid.uuid4(), SNAP, sid).id
        with pytest.raises(Conflict):  # resource_deleted still false
            exports.bypass_delete(conn, eid)
        exports.mark_for_deletion(conn, eid)
        first = exports.bypass_delete(conn, eid)
        second = exports.bypass_delete(conn, eid)
    assert first == second
    assert first.state is S.DELETED and first.generation == 0


def test_bypass_refused_for_a_record_a_saga_holds(db: Database) -> None:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        rec, _ = to_assigning(conn, SNAP, sid)
        exports.mark_for_deletion(conn, rec.id)
        with pytest.raises(Conflict) as err:
            exports.bypass_delete(conn, rec.id)
    assert str(rec.id) in str(err.value)


def test_cannot_start_assigning_once_resource_deleted(db: Database) -> None:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        eid = exports.create(conn, uuid.uuid4(), SNAP, sid).id
        exports.mark_for_deletion(conn, eid)
    with db.begin() as conn, pytest.raises(Conflict) as err:
        exports.start_assigning(conn, eid, uuid.uuid4(), 1)
    assert str(eid) in str(err.value)
    with db.connect() as conn:
        assert exports.get_required(conn, eid).state is S.REQUESTED


def test_marked_while_assigning_still_reaches_live(db: Database) -> None:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        rec, saga = to_assigning(conn, SNAP, sid)
        assert exports.mark_for_deletion(conn, rec.id) is True
        live = exports.set_live(conn, rec.id, saga, 1, PANTRY_A, uuid.uuid4())
    assert live.state is S.LIVE and live.resource_deleted is True


def test_start_deleting_needs_resource_deleted(db: Database) -> None:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        rec = to_live(conn, SNAP, sid)
    with db.begin() as conn, pytest.raises(Conflict):
        exports.start_deleting(conn, rec.id, uuid.uuid4(), 2)


def test_undo_transitions_already_done_when_generation_moved_on(db: Database) -> None:
    """Undo (and go-live) of generation G succeed unchanged once generation > G."""
    s1, s2 = uuid.uuid4(), uuid.uuid4()
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        eid = exports.create(conn, uuid.uuid4(), SNAP, sid).id
        exports.start_assigning(conn, eid, s1, 1)
        exports.unassign(conn, eid, s1, 1)
        now = exports.start_assigning(conn, eid, s2, 2)
        # A replayed undo / go-live of the old saga changes nothing and succeeds.
        assert exports.unassign(conn, eid, s1, 1) == now
        assert exports.set_live(conn, eid, s1, 1, PANTRY_A, uuid.uuid4()) == now
        live = exports.set_live(conn, eid, s2, 2, PANTRY_A, uuid.uuid4())
        exports.mark_for_deletion(conn, eid)
        d1, d2 = uuid.uuid4(), uuid.uuid4()
        exports.start_deleting(conn, eid, d1, 3)
        exports.undelete(conn, eid, d1, 3)
        deleting = exports.start_deleting(conn, eid, d2, 4)
        assert exports.undelete(conn, eid, d1, 3) == deleting
    assert live.state is S.LIVE
    assert (deleting.state, deleting.operating_saga_id, deleting.generation) == (S.DELETING, d2, 4)


def test_stale_locks_refused_with_conflict_naming_the_row(db: Database) -> None:
    s1, other = uuid.uuid4(), uuid.uuid4()
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        eid = exports.create(conn, uuid.uuid4(), SNAP, sid).id
        exports.start_assigning(conn, eid, s1, 5)
        exports.unassign(conn, eid, s1, 5)
    attempts = [
        # generation not newer than the row's: refused
        lambda c: exports.start_assigning(c, eid, other, 5),
        lambda c: exports.start_assigning(c, eid, other, 4),
    ]
    with db.begin() as conn:
        exports.start_assigning(conn, eid, s1, 6)
    attempts += [
        # the lock is held by s1 at generation 6: another saga, same generation
        lambda c: exports.set_live(c, eid, other, 6, PANTRY_A, uuid.uuid4()),
        lambda c: exports.unassign(c, eid, other, 6),
        # the right saga with a generation it does not hold, or a second taker
        lambda c: exports.set_live(c, eid, s1, 7, PANTRY_A, uuid.uuid4()),
        lambda c: exports.start_assigning(c, eid, other, 7),
        lambda c: exports.start_deleting(c, eid, other, 7),
        lambda c: exports.set_deleted(c, eid, s1, 6),
    ]
    for attempt in attempts:
        with db.begin() as conn, pytest.raises(Conflict) as err:
            attempt(conn)
        assert str(eid) in str(err.value)
    with db.connect() as conn:
        rec = exports.get_required(conn, eid)
    assert (rec.state, rec.operating_saga_id, rec.generation) == (S.ASSIGNING, s1, 6)


def test_stale_delete_lock_refused(db: Database) -> None:
    d1, other = uuid.uuid4(), uuid.uuid4()
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        rec = to_live(conn, SNAP, sid, gen=3)
        exports.mark_for_deletion(conn, rec.id)
    for stale in (
        lambda c: exports.start_deleting(c, rec.id, d1, 3),
        lambda c: exports.start_deleting(c, rec.id, d1, 2),
    ):
        with db.begin() as conn, pytest.raises(Conflict) as err:
            stale(conn)
        assert str(rec.id) in str(err.value)
    with db.begin() as conn:
        exports.start_deleting(conn, rec.id, d1, 4)
    for stale in (
        lambda c: exports.set_deleted(c, rec.id, other, 4),
        lambda c: exports.undelete(c, rec.id, other, 4),
        lambda c: exports.start_deleting(c, rec.id, other, 4),
        lambda c: exports.start_deleting(c, rec.id, other, 5),
    ):
        with db.begin() as conn, pytest.raises(Conflict):
            stale(conn)


def test_set_live_repeated_with_other_pantry_is_a_conflict(db: Database) -> None:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        rec, saga = to_assigning(conn, SNAP, sid)
        vol = uuid.uuid4()
        exports.set_live(conn, rec.id, saga, 1, PANTRY_A, vol)
        with pytest.raises(Conflict):
            exports.set_live(conn, rec.id, saga, 1, PANTRY_C, vol)
        with pytest.raises(Conflict):
            exports.set_live(conn, rec.id, saga, 1, PANTRY_A, uuid.uuid4())
        # Another spelling of the same address is the same address.
        same = PantryAddress.parse(" 10.0.0.1:17000 ")
        assert exports.set_live(conn, rec.id, saga, 1, same, vol).volume_id == vol


def test_transitions_on_missing_record_are_not_found(db: Database) -> None:
    missing = uuid.uuid4()
    with db.begin() as conn:
        for call in (
            lambda: exports.start_assigning(conn, missing, uuid.uuid4(), 1),
            lambda: exports.bypass_delete(conn, missing),
            lambda: exports.mark_for_deletion(conn, missing),
        ):
            with pytest.raises(NotFound):
                call()


# --- marking: expunged pantries and lost attachments ---------------------------------------


def _seed_pantry_records(db: Database) -> dict[str, uuid.UUID]:
    """Records on pantries A (IPv4), B (IPv6), C, in various states."""
    ids: dict[str, uuid.UUID] = {}
    with db.begin() as conn:
        for name, pantry in (("a", PANTRY_A), ("b", PANTRY_B), ("c1", PANTRY_C), ("c2", PANTRY_C)):
            ids[name] = to_live(conn, SNAP, seed.add_snapshot(conn), pantry=pantry).id
        ids["c_marked"] = insert_record(
            conn, uuid.uuid4(), state="live", generation=1, pantry=PANTRY_C, resource_deleted=True
        )
        ids["c_deleted"] = insert_record(
            conn, uuid.uuid4(), state="deleted", generation=2, pantry=PANTRY_C
        )
        ids["c_deleting"] = insert_record(
            conn, uuid.uuid4(), state="deleting", saga=uuid.uuid4(), generation=2,
            pantry=PANTRY_C, resource_deleted=True,
        )
        ids["b_other_port"] = insert_record(
            conn, uuid.uuid4(), state="live", generation=1,
            pantry=PantryAddress.from_parts(PANTRY_B.ip_text, 17001),
        )
        ids["requested"] = exports.create(conn, uuid.uuid4(), SNAP, seed.add_snapshot(conn)).id
    return ids


def _marked(db: Database) -> set[uuid.UUID]:
    with db.connect() as conn:
        rows = conn.execute(
            select(user_data_export.c.id).where(user_data_export.c.resource_deleted.is_(True))
        )
        return {uuid.UUID(str(r[0])) for r in rows}


def test_mark_expunged_pantries_touches_only_affected_unmarked_rows(db: Database) -> None:
    ids = _seed_pantry_records(db)
    before = _marked(db)
    assert before == {ids["c_marked"], ids["c_deleting"]}
    # In service: A and B, spelled differently from how they are stored.
    in_service = [PantryAddress.parse("10.0.0.1:17000"), PantryAddress.parse(
        "[fd00:1122:3344:0101:0000:0000:0000:0001]:17000"
    )]
    with db.connect() as conn:
        preview = exports.records_on_expunged_pantries(conn, in_service)
        everything = exports.records_on_expunged_pantries(conn, in_service, only_unmarked=False)
    expected = {ids["c1"], ids["c2"], ids["b_other_port"]}
    assert {r.id for r in preview} == expected
    assert {r.id for r in everything} == expected | {ids["c_marked"], ids["c_deleting"]}
    with db.begin() as conn:
        assert exports.mark_expunged_pantries(conn, in_service) == 3
    assert _marked(db) == before | expected
    with db.begin() as conn:
        assert exports.mark_expunged_pantries(conn, in_service) == 0
    with db.connect() as conn:
        assert exports.records_on_expunged_pantries(conn, in_service) == []
        assert exports.get_required(conn, ids["c_deleted"]).resource_deleted is False


def test_mark_expunged_pantries_ipv6_out_of_service(db: Database) -> None:
    ids = _seed_pantry_records(db)
    with db.begin() as conn:
        n = exports.mark_expunged_pantries(conn, [PANTRY_A, PANTRY_C])
    assert n == 2
    assert _marked(db) - {ids["c_marked"], ids["c_deleting"]} == {ids["b"], ids["b_other_port"]}


def test_mark_expunged_pantries_with_no_pantry_in_service(db: Database) -> None:
    ids = _seed_pantry_records(db)
    with db.begin() as conn:
        assert exports.mark_expunged_pantries(conn, []) == 5
    assert ids["requested"] not in _marked(db)
    assert ids["c_deleted"] not in _marked(db)


def test_mark_lost_only_live_unmarked(db: Database) -> None:
    ids = _seed_pantry_records(db)
    with db.begin() as conn:
        assert exports.mark_lost(conn, []) == 0
        n = exports.mark_lost(
            conn, [ids["a"], ids["c_marked"], ids["requested"], ids["c_deleted"], uuid.uuid4()]
        )
        assert n == 1
        assert exports.mark_lost(conn, [ids["a"]]) == 0
    assert ids["a"] in _marked(db)


# --- set-based requests (the pass's step 3) ---------------------------------------------------


def test_request_many_creates_skips_gone_and_reports_taken(db: Database) -> None:
    from udx.datastore import resources
    from udx.domain.model import ResourceRef

    with db.begin() as conn:
        refs = seed.seed_fleet(conn, snapshots=3, project_images=2)
        taken_ref, gone_ref = refs[1], refs[3]
        winner = exports.create(conn, uuid.uuid4(), taken_ref.resource_type, taken_ref.resource_id)
        resources.soft_delete(conn, gone_ref.resource_type, [gone_ref.resource_id])
    missing = ResourceRef(SNAP, uuid.uuid4())  # never existed
    requests = [(uuid.uuid4(), ref) for ref in [*refs, missing]]
    with db.begin() as conn:
        out = exports.request_many(conn, requests)
    expected = [(eid, ref) for eid, ref in requests if ref in (refs[0], refs[2], refs[4])]
    assert [(r.id, ResourceRef(r.resource_type, r.resource_id)) for r in out.created] == expected
    assert all(r.state is S.REQUESTED and r.generation == 0 for r in out.created)
    assert out.taken == [(taken_ref, winner)]
    assert sorted(out.gone, key=str) == sorted([gone_ref, missing], key=str)
    with db.connect() as conn:
        for rec in out.created:
            assert exports.get(conn, rec.id) == rec
        assert exports.by_resource(conn, taken_ref.resource_type, taken_ref.resource_id) == winner
        assert exports.by_resource(conn, gone_ref.resource_type, gone_ref.resource_id) is None
    # Asked again (a second pass with a stale changeset): every one is taken.
    with db.begin() as conn:
        again = exports.request_many(conn, [(uuid.uuid4(), r) for r in refs])
    assert again.created == [] and len(again.taken) == 4
    assert {w.id for _, w in again.taken} == {winner.id} | {r.id for r in out.created}


@pytest.mark.parametrize("n", [10, 300])
def test_request_many_is_set_based(db: Database, n: int) -> None:
    from udx.testing.statements import count_statements

    with db.begin() as conn:
        refs = seed.seed_fleet(conn, snapshots=n // 2, project_images=n - n // 2)
    with db.begin() as conn, count_statements(db.engine) as log:
        out = exports.request_many(conn, [(uuid.uuid4(), r) for r in refs])
    assert len(out.created) == n
    assert log.count == 3  # the live check per kind, then one insert


def test_request_many_refuses_more_than_a_chunk(db: Database) -> None:
    from udx.domain.model import ResourceRef

    too_many = [(uuid.uuid4(), ResourceRef(SNAP, uuid.uuid4()))] * (exports.REQUEST_CHUNK + 1)
    with db.begin() as conn, pytest.raises(ValueError, match="at most"):
        exports.request_many(conn, too_many)
