"""Volume copy, soft-delete and removal, with region snapshot reference counts."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select, update

from udx import seed
from udx.datastore import volumes
from udx.db.schema import image as image_table
from udx.db.schema import region_snapshot, snapshot, volume
from udx.domain.errors import Conflict, NotFound

EXAMPLES = Path(__file__).resolve().parents[1] / "data"


def _refs(db, vcr) -> dict[str, int]:
    targets = volumes.read_only_targets(vcr)
    with db.connect() as conn:
        rows = conn.execute(
            select(region_snapshot.c.snapshot_addr, region_snapshot.c.volume_references).where(
                region_snapshot.c.snapshot_addr.in_(targets)
            )
        ).all()
    return {addr: int(n) for addr, n in rows}


def _source_volume(db, *, image: bool = False) -> tuple[uuid.UUID, dict]:
    with db.begin() as conn:
        s = seed.Seeder()
        rid = s.add_image() if image else s.add_snapshot()
        s.flush(conn)
        table = image_table if image else snapshot
        vid = conn.execute(select(table.c.volume_id).where(table.c.id == rid)).scalar_one()
        data = conn.execute(select(volume.c.data).where(volume.c.id == vid)).scalar_one()
    return vid, json.loads(data)


def _all_ids(vcr) -> list[str]:
    out = []
    for _where, part in volumes._parts(vcr):
        if part["type"] == "region":
            out.append(part["opts"]["id"])
        else:
            out.append(part["id"])
    return out


def test_read_only_targets_walks_sub_volumes_and_parents():
    vcr = json.loads((EXAMPLES / "vcr-image-with-parent.json").read_text())
    assert len(volumes.read_only_targets(vcr)) == 6
    snap = json.loads((EXAMPLES / "vcr-snapshot.json").read_text())
    assert volumes.read_only_targets(snap) == snap["sub_volumes"][0]["opts"]["target"]


def test_writable_region_is_not_a_read_only_target_and_cannot_be_copied():
    vcr = json.loads((EXAMPLES / "vcr-disk-read-write.json").read_text())
    assert volumes.read_only_targets(vcr) == []
    with pytest.raises(volumes.VolumeDataError, match="writable region"):
        volumes.copy_request(vcr, uuid.uuid4())


def test_copy_request_replaces_every_id():
    vcr = json.loads((EXAMPLES / "vcr-image-with-parent.json").read_text())
    vcr["sub_volumes"].append(
        {"type": "url", "id": str(uuid.uuid4()), "block_size": 512, "url": "http://example/x"}
    )
    new_id = uuid.uuid4()
    copy = volumes.copy_request(vcr, new_id)
    assert copy["id"] == str(new_id)
    assert not set(_all_ids(copy)) & set(_all_ids(vcr))
    assert len(set(_all_ids(copy))) == len(_all_ids(copy))
    assert volumes.read_only_targets(copy) == volumes.read_only_targets(vcr)
    assert vcr["id"] != str(new_id)  # the source is untouched


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "[]",
        '{"type": "volume", "sub_volumes": [{"x": 1}]}',
        '{"type": "volume", "sub_volumes": [{"type": "region"}]}',
    ],
)
def test_malformed_volume_data_is_a_clear_error(bad):
    with pytest.raises(volumes.VolumeDataError):
        volumes.read_only_targets(volumes.parse_request(uuid.uuid4(), bad))


@pytest.mark.parametrize("image", [False, True])
def test_copy_adds_one_reference_per_target_and_is_idempotent(db, image):
    src, vcr = _source_volume(db, image=image)
    before = _refs(db, vcr)
    assert set(before.values()) == {1}
    new_id = uuid.uuid4()
    with db.begin() as conn:
        first = volumes.copy_volume(conn, src, new_id)
    with db.begin() as conn:
        again = volumes.copy_volume(conn, src, new_id)
    assert first == again
    assert _refs(db, vcr) == {k: v + 1 for k, v in before.items()}


def test_copy_of_missing_source_is_not_found(db):
    with db.begin() as conn, pytest.raises(NotFound):
        volumes.copy_volume(conn, uuid.uuid4(), uuid.uuid4())


def test_copy_refuses_a_region_snapshot_being_deleted(db):
    src, _vcr = _source_volume(db)
    with db.begin() as conn:
        conn.execute(update(region_snapshot).values(deleting=True))
    with pytest.raises(Conflict, match="being deleted"), db.begin() as conn:
        volumes.copy_volume(conn, src, uuid.uuid4())
    with db.connect() as conn:
        assert conn.execute(select(volume.c.id)).all() and volumes.get(conn, src) is not None


def test_soft_delete_gives_references_back_exactly_once(db):
    src, vcr = _source_volume(db)
    new_id = uuid.uuid4()
    with db.begin() as conn:
        volumes.copy_volume(conn, src, new_id)
    for _ in range(3):
        with db.begin() as conn:
            cleanup = volumes.soft_delete_volume(conn, new_id)
        assert cleanup == []  # the source volume still references every target
        assert set(_refs(db, vcr).values()) == {1}
    with db.connect() as conn:
        row = volumes.get(conn, new_id)
    assert row is not None and row.time_deleted is not None
    assert json.loads(row.resources_to_clean_up) == {"region_snapshots": []}


def test_targets_reaching_zero_are_recorded_for_clean_up(db):
    src, vcr = _source_volume(db)
    with db.begin() as conn:
        cleanup = volumes.soft_delete_volume(conn, src)
    targets = volumes.read_only_targets(vcr)
    assert sorted(c["snapshot_addr"] for c in cleanup) == sorted(targets)
    assert set(_refs(db, vcr).values()) == {0}
    with db.begin() as conn:  # repeat: same answer, no negative counts
        assert volumes.soft_delete_volume(conn, src) == cleanup
    assert set(_refs(db, vcr).values()) == {0}
    with db.connect() as conn:
        flags = conn.execute(select(region_snapshot.c.deleting)).scalars().all()
    assert flags and all(flags)


def test_remove_volume_only_after_soft_delete(db):
    src, _ = _source_volume(db)
    new_id = uuid.uuid4()
    with db.begin() as conn:
        volumes.copy_volume(conn, src, new_id)
    with db.begin() as conn, pytest.raises(Conflict):
        volumes.remove_volume(conn, new_id)
    with db.begin() as conn:
        volumes.soft_delete_volume(conn, new_id)
        assert volumes.remove_volume(conn, new_id) is True
        assert volumes.remove_volume(conn, new_id) is False
        assert volumes.soft_delete_volume(conn, new_id) == []
        assert volumes.get(conn, new_id) is None


def test_copy_after_the_copy_was_deleted_is_refused(db):
    src, _ = _source_volume(db)
    new_id = uuid.uuid4()
    with db.begin() as conn:
        volumes.copy_volume(conn, src, new_id)
        volumes.soft_delete_volume(conn, new_id)
    with db.begin() as conn, pytest.raises(Conflict):
        volumes.copy_volume(conn, src, new_id)


def test_copy_refuses_targets_without_a_region_snapshot(db):
    src, vcr = _source_volume(db)
    with db.begin() as conn:
        conn.execute(
            region_snapshot.delete().where(
                region_snapshot.c.snapshot_addr == volumes.read_only_targets(vcr)[0]
            )
        )
    before = _refs(db, vcr)
    with pytest.raises(NotFound, match="no region snapshot"), db.begin() as conn:
        volumes.copy_volume(conn, src, uuid.uuid4())
    assert _refs(db, vcr) == before  # nothing taken: the transaction rolled back
