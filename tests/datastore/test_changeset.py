"""The changeset (DESIGN.md section 4): mutating `compute` and read-only `preview`."""

from __future__ import annotations

import uuid

import pytest

from udx import seed
from udx.datastore import changeset, exports, resources
from udx.db.engine import Database
from udx.domain.model import Changeset, ExportState, ResourceRef, ResourceType

from .helpers import PANTRY_A, insert_record, to_assigning, to_live

SNAP = ResourceType.SNAPSHOT
IMAGE = ResourceType.IMAGE
S = ExportState


def both(db: Database) -> tuple[Changeset, Changeset]:
    """(preview, compute): the read-only form first, so it sees the unmarked rows."""
    with db.connect() as conn:
        pre = changeset.preview(conn)
    with db.begin() as conn:
        post = changeset.compute(conn)
    return pre, post


def same_lists(a: Changeset, b: Changeset) -> None:
    assert a.request_required == b.request_required
    assert [r.id for r in a.create_required] == [r.id for r in b.create_required]
    assert [r.id for r in a.delete_required] == [r.id for r in b.delete_required]


def test_empty_database_gives_empty_changeset(db: Database) -> None:
    pre, post = both(db)
    for cs in (pre, post):
        assert cs.is_empty and cs.would_mark == []
        assert cs.to_json() == {
            "request_required": [], "create_required": [], "delete_required": []
        }


def test_resources_without_records_are_request_required(db: Database) -> None:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        project_image = seed.add_image(conn)
        silo_image = seed.add_image(conn, silo=True)
        seed.add_snapshot(conn, deleted=True)
        seed.add_image(conn, deleted=True)
    pre, post = both(db)
    expected = sorted(
        [ResourceRef(SNAP, sid), ResourceRef(IMAGE, project_image), ResourceRef(IMAGE, silo_image)],
        key=lambda r: (r.resource_type.value, str(r.resource_id)),
    )
    assert pre.request_required == expected
    same_lists(pre, post)
    assert post.create_required == post.delete_required == []


def test_live_records_give_empty_changeset(db: Database) -> None:
    with db.begin() as conn:
        to_live(conn, SNAP, seed.add_snapshot(conn))
        to_live(conn, IMAGE, seed.add_image(conn))
        to_live(conn, IMAGE, seed.add_image(conn, silo=True))
    pre, post = both(db)
    assert pre.is_empty and post.is_empty and pre.would_mark == []


def test_records_held_by_sagas_or_requested(db: Database) -> None:
    with db.begin() as conn:
        req = exports.create(conn, uuid.uuid4(), SNAP, seed.add_snapshot(conn))
        to_assigning(conn, IMAGE, seed.add_image(conn))
    pre, post = both(db)
    assert [r.id for r in pre.create_required] == [req.id]
    assert pre.request_required == [] and pre.delete_required == []
    same_lists(pre, post)


@pytest.mark.parametrize("kind", [SNAP, IMAGE])
def test_deleted_resource_puts_record_in_delete_required(db: Database, kind: ResourceType) -> None:
    with db.begin() as conn:
        rid = seed.add_snapshot(conn) if kind is SNAP else seed.add_image(conn)
        rec = to_live(conn, kind, rid)
        resources.soft_delete(conn, kind, [rid])
    with db.connect() as conn:
        pre = changeset.preview(conn)
    assert [r.id for r in pre.would_mark] == [rec.id]
    assert [r.id for r in pre.delete_required] == [rec.id]
    assert pre.request_required == [] and pre.create_required == []
    with db.connect() as conn:  # the preview wrote nothing
        assert exports.get_required(conn, rec.id).resource_deleted is False
    with db.begin() as conn:
        post = changeset.compute(conn)
    same_lists(pre, post)
    assert post.would_mark == []
    assert post.delete_required[0].resource_deleted is True
    with db.connect() as conn:
        assert exports.get_required(conn, rec.id).resource_deleted is True
        again = changeset.preview(conn)
    assert again.would_mark == [] and [r.id for r in again.delete_required] == [rec.id]


def test_hard_deleted_resource_row_counts_as_gone(db: Database) -> None:
    with db.begin() as conn:
        rec = insert_record(conn, uuid.uuid4(), state="live", generation=1, pantry=PANTRY_A)
    pre, post = both(db)
    assert [r.id for r in pre.would_mark] == [rec]
    assert [r.id for r in post.delete_required] == [rec]


def test_requested_record_of_deleted_resource_is_deleted_not_created(db: Database) -> None:
    """Marking happens first: a record just marked must not be created."""
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        rec = exports.create(conn, uuid.uuid4(), SNAP, sid)
        resources.soft_delete(conn, SNAP, [sid])
    pre, post = both(db)
    for cs in (pre, post):
        assert cs.create_required == []
        assert [r.id for r in cs.delete_required] == [rec.id]
    # ... and it can then be bypassed straight to deleted.
    with db.begin() as conn:
        done = exports.bypass_delete(conn, rec.id)
    assert done.state is S.DELETED
    pre, post = both(db)
    assert pre.is_empty and post.is_empty


def test_deleted_records_never_appear(db: Database) -> None:
    with db.begin() as conn:
        gone = seed.add_snapshot(conn, deleted=True)
        live_sid = seed.add_snapshot(conn)
        insert_record(conn, gone, state="deleted", generation=3, resource_deleted=True)
        insert_record(conn, uuid.uuid4(), state="deleted", generation=3, resource_deleted=False)
        old = insert_record(conn, live_sid, state="deleted", generation=2, resource_deleted=True)
    pre, post = both(db)
    for cs in (pre, post):
        assert cs.create_required == [] and cs.delete_required == [] and cs.would_mark == []
        # A live resource whose only record is deleted needs a new one.
        assert cs.request_required == [ResourceRef(SNAP, live_sid)]
    with db.connect() as conn:
        assert exports.get_required(conn, old).state is S.DELETED


def test_marked_while_assigning_then_live_is_delete_required(db: Database) -> None:
    with db.begin() as conn:
        sid = seed.add_snapshot(conn)
        rec, saga = to_assigning(conn, SNAP, sid)
        resources.soft_delete(conn, SNAP, [sid])
    with db.begin() as conn:
        cs = changeset.compute(conn)
    # Assigning and marked: listed (the pass skips it, a saga owns it), never created.
    assert [r.state for r in cs.delete_required] == [S.ASSIGNING]
    with db.begin() as conn:
        live = exports.set_live(conn, rec.id, saga, 1, PANTRY_A, uuid.uuid4())
    assert live.state is S.LIVE
    pre, post = both(db)
    for cs in (pre, post):
        assert [(r.id, r.state) for r in cs.delete_required] == [(rec.id, S.LIVE)]
        assert cs.create_required == [] and cs.request_required == []


def test_mixed_changeset_json_shapes(db: Database) -> None:
    with db.begin() as conn:
        seed.add_image(conn, silo=True)
        exports.create(conn, uuid.uuid4(), SNAP, seed.add_snapshot(conn))
        doomed = seed.add_snapshot(conn)
        to_live(conn, SNAP, doomed)
        resources.soft_delete(conn, SNAP, [doomed])
    with db.connect() as conn:
        data = changeset.preview(conn).to_json(include_would_mark=True)
    assert set(data) == {
        "request_required", "create_required", "delete_required", "would_mark_for_deletion"
    }
    assert set(data["request_required"][0]) == {"resource_type", "resource_id"}
    live = data["delete_required"][0]
    assert live["pantry_address"] == "10.0.0.1:17000"
    assert live["state"] == "live" and live["resource_type"] == "snapshot"
    assert data["create_required"][0]["pantry_address"] is None
