"""The changeset (DESIGN.md section 4): mutating `compute` and read-only `preview`."""

from __future__ import annotations

import json
import uuid

import pytest

from udx import seed
from udx.datastore import changeset, exports, resources
from udx.db.engine import Database
from udx.db.schema import user_data_export
from udx.domain.model import Changeset, ExportState, ResourceRef, ResourceType
from udx.testing.statements import count_statements

from .helpers import (
    PANTRY_A,
    PANTRY_B,
    PANTRY_C,
    insert_record,
    record_row,
    to_assigning,
    to_live,
)

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


# --- preview_json: the JSON text rendered by PostgreSQL -----------------------------------

# pantry_ip is free text: quotes, backslashes, control characters, DEL, non-ASCII and
# a character outside the BMP must come out as json.dumps escapes them.
ODD_IPS = [
    'a"b\\c/d',
    "tab\there\nnl\r\x08\x0c\x01\x1f",
    "del\x7f",
    "caf\u00e9 \u2028 \u20ac",
    "astral \U0001f600",
    "",
]


def seed_every_state(db: Database, n: int = 1) -> None:
    """`n` of each situation the changeset distinguishes, and then some."""
    with db.begin() as conn:
        for _ in range(n):
            # No record yet: request_required, both kinds.
            seed.add_snapshot(conn)
            seed.add_image(conn)
            seed.add_image(conn, silo=True)
            # Soft-deleted with no record: nothing.
            seed.add_snapshot(conn, deleted=True)
            # Requested (create_required), on each kind.
            exports.create(conn, uuid.uuid4(), SNAP, seed.add_snapshot(conn))
            exports.create(conn, uuid.uuid4(), IMAGE, seed.add_image(conn, silo=True))
            # Held by a create saga; live on IPv4 and on IPv6 pantries.
            to_assigning(conn, IMAGE, seed.add_image(conn))
            to_live(conn, SNAP, seed.add_snapshot(conn), pantry=PANTRY_A, gen=2)
            to_live(conn, IMAGE, seed.add_image(conn), pantry=PANTRY_B, gen=2**40)
            # Resource soft-deleted, record live and requested, unmarked: would_mark.
            doomed = seed.add_snapshot(conn)
            to_live(conn, SNAP, doomed, pantry=PANTRY_B)
            doomed_req = seed.add_image(conn)
            exports.create(conn, uuid.uuid4(), IMAGE, doomed_req)
            resources.soft_delete(conn, SNAP, [doomed])
            resources.soft_delete(conn, IMAGE, [doomed_req])
            # Resource row gone altogether (hard-deleted), record live on PANTRY_C.
            insert_record(conn, uuid.uuid4(), state="live", generation=1, pantry=PANTRY_C,
                          volume_id=uuid.uuid4())
            insert_record(conn, uuid.uuid4(), resource_type=IMAGE, state="requested")
            # Already marked: a delete saga holds it, or it waits (live, IPv6).
            gone = seed.add_image(conn, deleted=True)
            insert_record(conn, gone, resource_type=IMAGE, state="deleting",
                          saga=uuid.uuid4(), generation=3, resource_deleted=True,
                          pantry=PANTRY_B, volume_id=uuid.uuid4())
            insert_record(conn, uuid.uuid4(), state="live", generation=1,
                          resource_deleted=True, pantry=PANTRY_B, volume_id=uuid.UUID(int=0))
            # Marked although the resource is still there (an expunged pantry).
            insert_record(conn, seed.add_snapshot(conn), state="live", generation=1,
                          resource_deleted=True, pantry=PANTRY_C, volume_id=uuid.uuid4())
            # Deleted records never appear; the live resource then needs a new one.
            insert_record(conn, seed.add_snapshot(conn), state="deleted", generation=4,
                          resource_deleted=True, pantry=PANTRY_A)
            insert_record(conn, uuid.uuid4(), state="deleted", generation=4)
            # Half an address (ip without port, port without ip): pantry_address null.
            half = record_row(uuid.uuid4(), state="live", generation=1, resource_deleted=True)
            conn.execute(user_data_export.insert().values({**half, "pantry_ip": "10.9.9.9"}))
            half = record_row(uuid.uuid4(), state="live", generation=1, resource_deleted=True)
            conn.execute(user_data_export.insert().values({**half, "pantry_port": 0}))
            # Odd text in pantry_ip, in delete_required and in create_required.
            for ip in ODD_IPS:
                row = record_row(uuid.uuid4(), resource_type=IMAGE, state="live",
                                 generation=1, resource_deleted=True)
                conn.execute(
                    user_data_export.insert().values({**row, "pantry_ip": ip, "pantry_port": 1})
                )
                row = record_row(seed.add_snapshot(conn))
                conn.execute(user_data_export.insert().values(
                    {**row, "pantry_ip": ip + ":x", "pantry_port": 65535}
                ))


def python_json(db: Database) -> str:
    with db.connect() as conn:
        return json.dumps(changeset.preview(conn).to_json(include_would_mark=True))


def test_preview_json_is_byte_identical_to_the_python_path(db: Database) -> None:
    seed_every_state(db, 2)
    with db.connect() as conn:
        text = changeset.preview_json(conn)
    expected = python_json(db)
    assert text == expected
    data = json.loads(text)
    assert all(data[k] for k in data), {k: len(v) for k, v in data.items()}
    ips = {r["pantry_ip"] for r in data["delete_required"]}
    assert set(ODD_IPS) <= ips and PANTRY_B.ip_text in ips
    assert "[fd00:1122:3344:101::1]:17000" in {
        r["pantry_address"] for r in data["delete_required"]
    }


def test_preview_json_of_an_empty_database(db: Database) -> None:
    with db.connect() as conn:
        text = changeset.preview_json(conn)
    assert text == python_json(db) == (
        '{"request_required": [], "create_required": [], "delete_required": [], '
        '"would_mark_for_deletion": []}'
    )


@pytest.mark.parametrize("only", ["request", "create", "delete"])
def test_preview_json_with_one_section_filled(db: Database, only: str) -> None:
    """Empty sections next to filled ones, and request_required of one kind only."""
    with db.begin() as conn:
        if only == "request":
            seed.add_image(conn)
        elif only == "create":
            exports.create(conn, uuid.uuid4(), SNAP, seed.add_snapshot(conn))
        else:
            insert_record(conn, uuid.uuid4(), state="live", generation=1, pantry=PANTRY_B)
    with db.connect() as conn:
        text = changeset.preview_json(conn)
    assert text == python_json(db)


def test_preview_json_statement_count_does_not_grow(db: Database) -> None:
    counts = []
    for n in (1, 30):
        seed_every_state(db, n)
        with count_statements(db.engine) as log, db.connect() as conn:
            text = changeset.preview_json(conn)
        counts.append(log.count)
        assert text == python_json(db)
    # One statement per list; on PostgreSQL one SET first (cursor_tuple_fraction).
    setup = 1 if db.dialect == "postgresql" else 0
    assert counts == [4 + setup, 4 + setup]


@pytest.mark.parametrize("ip", ODD_IPS, ids=range(len(ODD_IPS)))
def test_preview_json_escapes_each_odd_pantry_ip(db: Database, ip: str) -> None:
    """One at a time: DEL alone in otherwise ASCII text must still be escaped."""
    with db.begin() as conn:
        row = record_row(uuid.uuid4(), state="live", generation=1, resource_deleted=True)
        conn.execute(user_data_export.insert().values({**row, "pantry_ip": ip, "pantry_port": 7}))
    with db.connect() as conn:
        text = changeset.preview_json(conn)
    assert text == python_json(db)
    assert text.isascii() and "\x7f" not in text


@pytest.mark.parametrize("state", seed.SNAPSHOT_STATES)
def test_every_snapshot_state_is_exportable_while_not_deleted(db: Database, state: str) -> None:
    """As upstream: the changeset looks at time_deleted, not at the state, so a
    creating, faulted or destroyed snapshot that is not deleted gets a record."""
    with db.begin() as conn:
        s = seed.Seeder()
        live = s.add_snapshot(state=state)
        s.add_snapshot(state=state, deleted=True)  # deleted: never requested
        s.flush(conn)
    pre, post = both(db)
    for cs in (pre, post):
        assert cs.request_required == [ResourceRef(SNAP, live)], state  # not `gone`


def test_seeded_fleet_has_every_snapshot_state_and_both_target_kinds(db: Database) -> None:
    from sqlalchemy import func, select

    from udx.db.schema import region, snapshot, volume_resource_usage
    from udx.testing.invariants import check_invariants

    with db.begin() as conn:
        refs = seed.seed_fleet(conn, snapshots=10, project_images=2, silo_images=2, deleted=3)
    with db.connect() as conn:
        states = set(conn.execute(select(snapshot.c.state)).scalars())
        kinds = dict(conn.execute(
            select(volume_resource_usage.c.usage_type, func.count())
            .group_by(volume_resource_usage.c.usage_type)
        ).all())
        read_only_regions = conn.execute(
            select(func.count()).select_from(region).where(region.c.read_only)
        ).scalar_one()
    assert states == set(seed.SNAPSHOT_STATES)
    assert kinds["read_only_region"] >= 3 and kinds["region_snapshot"] >= 30
    assert read_only_regions >= kinds["read_only_region"]
    assert len(refs) == 14
    with db.connect() as conn:
        assert sorted(changeset.preview(conn).request_required) == sorted(refs)
    assert check_invariants(db) == []
