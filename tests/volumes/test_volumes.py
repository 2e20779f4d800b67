"""Volume copy and soft delete with usage rows, as the control plane keeps them
(issue 11): region snapshots and read-only regions, on both engines."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, update

from udx import seed
from udx.datastore import volumes
from udx.db.engine import Database
from udx.db.schema import crucible_dataset, region, region_snapshot, snapshot, volume
from udx.db.schema import image as image_table
from udx.db.schema import volume_resource_usage as usage
from udx.db.types import utcnow
from udx.domain.errors import Conflict, NotFound
from udx.testing.invariants import check_invariants, dump_tables
from udx.testing.statements import count_statements

EXAMPLES = Path(__file__).resolve().parents[1] / "data"


def _source_volume(
    db: Database, *, image: bool = False, replaced: int = 0, parent_replaced: int = 0
) -> tuple[uuid.UUID, dict[str, Any]]:
    with db.begin() as conn:
        s = seed.Seeder()
        if image:
            rid = s.add_image(replaced=replaced, parent_replaced=parent_replaced)
        else:
            rid = s.add_snapshot(replaced=replaced)
        s.flush(conn)
        table = image_table if image else snapshot
        vid = conn.execute(select(table.c.volume_id).where(table.c.id == rid)).scalar_one()
        data = conn.execute(select(volume.c.data).where(volume.c.id == vid)).scalar_one()
    return vid, json.loads(data)


def _usage(db: Database, volume_id: uuid.UUID) -> list[volumes.ReadOnlyResource]:
    with db.connect() as conn:
        return volumes.usage_of(conn, volume_id)


def _count(db: Database, table: Any) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _kinds(resources: list[volumes.ReadOnlyResource]) -> list[str]:
    return sorted(r.usage_type for r in resources)


def _all_ids(vcr: dict[str, Any]) -> list[str]:
    out = []
    for _where, part in volumes._parts(vcr):
        out.append(part["opts"]["id"] if part["type"] == "region" else part["id"])
    return out


# --- the request, without a database -----------------------------------------------------


def test_read_only_targets_walks_sub_volumes_and_parents() -> None:
    vcr = json.loads((EXAMPLES / "vcr-image-with-parent.json").read_text())
    assert len(volumes.read_only_targets(vcr)) == 6
    snap = json.loads((EXAMPLES / "vcr-snapshot.json").read_text())
    assert volumes.read_only_targets(snap) == snap["sub_volumes"][0]["opts"]["target"]


def test_writable_region_is_not_a_read_only_target_and_cannot_be_copied() -> None:
    vcr = json.loads((EXAMPLES / "vcr-disk-read-write.json").read_text())
    assert volumes.read_only_targets(vcr) == []
    with pytest.raises(volumes.VolumeDataError, match="writable region"):
        volumes.copy_request(vcr, uuid.uuid4())


def test_copy_request_replaces_every_id() -> None:
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
def test_malformed_volume_data_is_a_clear_error(bad: str) -> None:
    with pytest.raises(volumes.VolumeDataError):
        volumes.read_only_targets(volumes.parse_request(uuid.uuid4(), bad))


def test_clean_up_list_is_the_control_planes_form_and_reads_the_old_one() -> None:
    d, r, s, g = (uuid.uuid4() for _ in range(4))
    c = volumes.CleanUp([g], [(d, r, s)])
    assert c.to_json() == {
        "V3": {
            "regions": [str(g)],
            "region_snapshots": [{"dataset": str(d), "region": str(r), "snapshot": str(s)}],
        }
    }
    assert volumes.CleanUp.parse(json.dumps(c.to_json())) == c
    old = {"region_snapshots": [
        {"dataset_id": str(d), "region_id": str(r), "snapshot_id": str(s), "snapshot_addr": "x"}
    ]}
    assert volumes.CleanUp.parse(json.dumps(old)) == volumes.CleanUp([], [(d, r, s)])
    assert volumes.CleanUp.parse(None) == volumes.CleanUp()
    with pytest.raises(volumes.VolumeDataError):
        volumes.CleanUp.parse('{"V9": {}}')


# --- copy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "replaced", "parent_replaced", "expected"),
    [
        (False, 0, 0, {"region_snapshot": 3}),
        (False, 3, 0, {"read_only_region": 3}),  # a snapshot after region snapshot replacement
        (True, 0, 1, {"region_snapshot": 5, "read_only_region": 1}),  # the parent mixes both
        (True, 2, 1, {"region_snapshot": 3, "read_only_region": 3}),
    ],
)
def test_copy_adds_one_usage_row_per_resource_and_is_idempotent(
    db: Database, image: bool, replaced: int, parent_replaced: int, expected: dict[str, int]
) -> None:
    src, vcr = _source_volume(db, image=image, replaced=replaced, parent_replaced=parent_replaced)
    source_usage = _usage(db, src)
    assert len(source_usage) == len(volumes.read_only_targets(vcr))
    new_id = uuid.uuid4()
    with db.begin() as conn:
        first = volumes.copy_volume(conn, src, new_id)
    after_first = dump_tables(db)
    with db.begin() as conn:
        again = volumes.copy_volume(conn, src, new_id)
    assert first == again
    assert dump_tables(db) == after_first  # the second run changed nothing
    copied = _usage(db, new_id)
    assert copied == source_usage  # the copy reads exactly what the source reads
    got: dict[str, int] = {}
    for r in copied:
        got[r.usage_type] = got.get(r.usage_type, 0) + 1
    assert got == expected
    assert check_invariants(db) == []


def test_one_statement_resolves_every_target_of_a_request(db: Database) -> None:
    _src, vcr = _source_volume(db, image=True, replaced=1, parent_replaced=2)
    targets = volumes.read_only_targets(vcr)
    with db.connect() as conn, count_statements(db.engine) as log:
        resolved, problems = volumes.resolve_targets(conn, targets)
    assert problems == {} and len(resolved) == 6
    assert log.count == 1, log.statements


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9])
def test_resolve_pads_its_in_lists_and_reuses_one_statement_per_size(
    db: Database, n: int
) -> None:
    # n read-only regions plus as many addresses that name nothing: the padding
    # ("-", port -1) must match no row, and sizes within one power of two share SQL.
    regions = {f"10.9.0.{i}:{19100 + i}": _add_read_only_region(db, f"10.9.0.{i}", 19100 + i)
               for i in range(n)}
    missing = [f"10.8.0.{i}:1" for i in range(n)]
    with db.connect() as conn, count_statements(db.engine) as log:
        resolved, problems = volumes.resolve_targets(conn, list(regions))
        again, _ = volumes.resolve_targets(conn, list(regions)[: max(n - 1, 1)])
        _, refused = volumes.resolve_targets(conn, missing)
    assert {t: r.region_id for t, r in resolved.items()} == regions and problems == {}
    assert len(again) == max(n - 1, 1)
    assert set(refused) == set(missing)
    # One statement per call, and the second (n - 1 targets) reuses the first's
    # SQL unless n - 1 falls into the next smaller power of two.
    assert log.count == 4, log.statements  # the refused ones also ask for deleting ones
    first, second = [s for s in log.statements if s.lstrip().startswith("SELECT")][:2]
    assert (first == second) == (volumes._bucket(n) == volumes._bucket(max(n - 1, 1)))


def test_resolve_splits_a_very_large_set_into_chunks(db: Database, monkeypatch: Any) -> None:
    monkeypatch.setattr(volumes, "_CHUNK", 4)
    regions = {f"10.7.0.{i}:{19200 + i}": _add_read_only_region(db, f"10.7.0.{i}", 19200 + i)
               for i in range(9)}
    with db.connect() as conn, count_statements(db.engine) as log:
        resolved, problems = volumes.resolve_targets(conn, list(regions))
    assert {t: r.region_id for t, r in resolved.items()} == regions and problems == {}
    assert log.count == 3, log.statements


def _volume_with_targets(db: Database, targets: list[str]) -> uuid.UUID:
    vid = uuid.uuid4()
    vcr = seed.volume_request(vid, [seed.region(targets)])
    now = utcnow()
    with db.begin() as conn:
        conn.execute(
            insert(volume).values(
                id=vid, time_created=now, time_modified=now, data=json.dumps(vcr), rcgen=1
            )
        )
    return vid


def _add_read_only_region(
    db: Database, ip: str, port: int, *, deleting: bool = False
) -> uuid.UUID:
    now = utcnow()
    ds, rid = uuid.uuid4(), uuid.uuid4()
    with db.begin() as conn:
        conn.execute(insert(crucible_dataset).values(
            id=ds, time_created=now, time_modified=now, pool_id=uuid.uuid4(), ip=ip, port=32345
        ))
        conn.execute(insert(region).values(
            id=rid, time_created=now, time_modified=now, dataset_id=ds, volume_id=uuid.uuid4(),
            block_size=512, blocks_per_extent=131072, extent_count=16, port=port,
            read_only=True, deleting=deleting, reservation_percent="25",
        ))
    return rid


def test_targets_resolve_by_canonical_address_ipv6_and_ipv4(db: Database) -> None:
    r6 = _add_read_only_region(db, "fd00:1122::7", 19001)
    r4 = _add_read_only_region(db, "10.1.2.3", 19002)
    src = _volume_with_targets(db, ["[fd00:1122:0::7]:19001", "10.1.2.3:19002"])
    with db.begin() as conn:
        volumes.copy_volume(conn, src, uuid.uuid4())
    with db.connect() as conn:
        got = {r.region_id for r in conn.execute(select(usage.c.region_id))}
    assert got == {r6, r4}


def test_a_writable_region_at_the_address_is_not_a_read_only_target(db: Database) -> None:
    rid = _add_read_only_region(db, "fd00::9", 19009)
    with db.begin() as conn:
        conn.execute(update(region).where(region.c.id == rid).values(read_only=False))
    src = _volume_with_targets(db, ["[fd00::9]:19009"])
    with (
        pytest.raises(volumes.VolumeAccountingError, match="no read-only region"),
        db.begin() as conn,
    ):
        volumes.copy_volume(conn, src, uuid.uuid4())


@pytest.mark.parametrize("chunk", [500, 2])
def test_copy_writes_its_usage_rows_in_one_statement_per_chunk(
    db: Database, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Six usage rows: one INSERT (not one per row), or one per chunk of `chunk`."""
    monkeypatch.setattr(volumes, "_USAGE_CHUNK", chunk)
    src, _vcr = _source_volume(db, image=True, replaced=1, parent_replaced=2)
    new_id = uuid.uuid4()
    with db.begin() as conn, count_statements(db.engine) as log:
        volumes.copy_volume(conn, src, new_id)
    usage_insert = "INSERT INTO VOLUME_RESOURCE_USAGE"
    inserts = [s for s in log.statements if s.upper().startswith(usage_insert)]
    assert len(inserts) == -(-6 // chunk)
    rows_per_statement = [s.count("), (") + 1 for s in inserts]  # multi-row VALUES
    assert rows_per_statement == ([6] if chunk > 6 else [chunk] * (6 // chunk))
    assert _usage(db, new_id) == _usage(db, src)
    assert check_invariants(db) == []


def test_copy_refuses_a_target_that_resolves_to_nothing_and_writes_nothing(
    db: Database,
) -> None:
    src, vcr = _source_volume(db, replaced=1)
    gone = volumes.read_only_targets(vcr)[0]  # a region snapshot's address
    with db.begin() as conn:
        conn.execute(delete(region_snapshot).where(region_snapshot.c.snapshot_addr == gone))
    before = dump_tables(db)
    new_id = uuid.uuid4()
    with pytest.raises(volumes.VolumeAccountingError) as err, db.begin() as conn:
        volumes.copy_volume(conn, src, new_id)
    message = str(err.value)
    assert gone in message and str(src) in message and "resolves to no region snapshot" in message
    assert dump_tables(db) == before  # no volume row, no usage rows


def test_copy_refuses_an_ambiguous_target(db: Database) -> None:
    src, vcr = _source_volume(db)
    target = volumes.read_only_targets(vcr)[1]
    ip = target[1 : target.index("]")]
    _add_read_only_region(db, ip, int(target.rsplit(":", 1)[1]))  # same address, second kind
    before = dump_tables(db)
    with (
        pytest.raises(volumes.VolumeAccountingError, match="resolves to 2 resources") as err,
        db.begin() as conn,
    ):
        volumes.copy_volume(conn, src, uuid.uuid4())
    assert target in str(err.value)
    assert dump_tables(db) == before


@pytest.mark.parametrize("kind", ["region_snapshot", "read_only_region"])
def test_copy_refuses_resources_being_deleted(db: Database, kind: str) -> None:
    src, _vcr = _source_volume(db, replaced=3 if kind == "read_only_region" else 0)
    with db.begin() as conn:
        table = region_snapshot if kind == "region_snapshot" else region
        conn.execute(update(table).values(deleting=True))
    before = dump_tables(db)
    with pytest.raises(volumes.VolumeAccountingError, match="being deleted"), db.begin() as conn:
        volumes.copy_volume(conn, src, uuid.uuid4())
    assert dump_tables(db) == before


def test_copy_of_missing_source_is_not_found(db: Database) -> None:
    with db.begin() as conn, pytest.raises(NotFound):
        volumes.copy_volume(conn, uuid.uuid4(), uuid.uuid4())


def test_copy_after_the_copy_was_deleted_is_refused(db: Database) -> None:
    src, _ = _source_volume(db)
    new_id = uuid.uuid4()
    with db.begin() as conn:
        volumes.copy_volume(conn, src, new_id)
        volumes.soft_delete_volume(conn, new_id)
    with db.begin() as conn, pytest.raises(Conflict):
        volumes.copy_volume(conn, src, new_id)


# --- soft delete --------------------------------------------------------------------------


@pytest.mark.parametrize("replaced", [0, 1, 3])
def test_soft_delete_removes_usage_rows_exactly_once_and_keeps_the_row(
    db: Database, replaced: int
) -> None:
    src, _vcr = _source_volume(db, image=True, replaced=replaced, parent_replaced=1)
    new_id = uuid.uuid4()
    with db.begin() as conn:
        volumes.copy_volume(conn, src, new_id)
    rows_before = _count(db, usage)
    for i in range(3):
        with db.begin() as conn:
            cleanup = volumes.soft_delete_volume(conn, new_id)
        assert not cleanup  # the source volume still reads every resource
        assert _count(db, usage) == rows_before - 6, i
        if i == 0:
            after_first = dump_tables(db)
        else:
            assert dump_tables(db) == after_first  # a repeat changes nothing
    assert _usage(db, new_id) == [] and len(_usage(db, src)) == 6
    with db.connect() as conn:
        row = volumes.get(conn, new_id)
        deleting = conn.execute(
            select(func.count()).select_from(region_snapshot).where(region_snapshot.c.deleting)
        ).scalar_one()
    assert row is not None and row.time_deleted is not None  # soft-deleted, never removed
    assert json.loads(row.resources_to_clean_up or "") == {
        "V3": {"regions": [], "region_snapshots": []}
    }
    assert deleting == 0
    assert check_invariants(db) == []


def test_the_last_user_frees_every_resource_of_both_kinds(db: Database) -> None:
    src, _vcr = _source_volume(db, image=True, replaced=1, parent_replaced=2)
    held = _usage(db, src)
    assert _kinds(held) == ["read_only_region"] * 3 + ["region_snapshot"] * 3
    with db.begin() as conn:
        cleanup = volumes.soft_delete_volume(conn, src)
    assert sorted(cleanup.regions) == sorted(r.region_id for r in held if r.region_id)
    assert sorted(cleanup.region_snapshots) == sorted(
        r.snapshot_key for r in held if r.is_region_snapshot
    )
    with db.connect() as conn:
        assert all(conn.execute(select(region_snapshot.c.deleting)).scalars())
        assert all(conn.execute(select(region.c.deleting)).scalars())
        stored = volumes.get(conn, src)
    assert stored is not None
    assert volumes.CleanUp.parse(stored.resources_to_clean_up) == cleanup
    after = dump_tables(db)
    with db.begin() as conn:  # repeat: the stored list again, nothing changes
        assert volumes.soft_delete_volume(conn, src) == cleanup
    assert dump_tables(db) == after
    assert check_invariants(db) == []


def test_shared_resources_are_freed_only_by_the_last_volume(db: Database) -> None:
    src, _ = _source_volume(db, replaced=1)
    a, b = uuid.uuid4(), uuid.uuid4()
    with db.begin() as conn:
        volumes.copy_volume(conn, src, a)
        volumes.copy_volume(conn, src, b)
    for vid in (src, a):
        with db.begin() as conn:
            assert not volumes.soft_delete_volume(conn, vid)
        assert check_invariants(db) == []
    with db.begin() as conn:
        last = volumes.soft_delete_volume(conn, b)
    assert len(last.regions) == 1 and len(last.region_snapshots) == 2
    assert _count(db, usage) == 0
    assert check_invariants(db) == []


def test_a_missing_usage_row_at_delete_fails_loudly_and_changes_nothing(db: Database) -> None:
    src, vcr = _source_volume(db, replaced=1)
    new_id = uuid.uuid4()
    with db.begin() as conn:
        volumes.copy_volume(conn, src, new_id)
    lost = volumes.read_only_targets(vcr)[-1]  # the read-only region
    (region_id,) = [r.region_id for r in _usage(db, new_id) if r.region_id]
    with db.begin() as conn:
        conn.execute(
            delete(usage).where(usage.c.volume_id == new_id, usage.c.region_id == region_id)
        )
    before = dump_tables(db)
    for check in (volumes.check_usage, volumes.soft_delete_volume):
        with pytest.raises(volumes.VolumeAccountingError) as err, db.begin() as conn:
            check(conn, new_id)  # type: ignore[operator]
        message = str(err.value)
        assert str(new_id) in message and lost in message and "no usage row" in message
        assert dump_tables(db) == before  # still live, every other row untouched


def test_a_target_unresolvable_at_delete_fails_loudly(db: Database) -> None:
    src, vcr = _source_volume(db)
    with db.begin() as conn:
        conn.execute(delete(region_snapshot).where(
            region_snapshot.c.snapshot_addr == volumes.read_only_targets(vcr)[0]
        ))
    before = dump_tables(db)
    with pytest.raises(volumes.VolumeAccountingError, match="resolves to no"), db.begin() as conn:
        volumes.soft_delete_volume(conn, src)
    assert dump_tables(db) == before


def test_soft_delete_releases_usage_rows_its_data_does_not_name(db: Database) -> None:
    src, _ = _source_volume(db)
    other, _ = _source_volume(db)
    (stray, *_rest) = _usage(db, other)
    with db.begin() as conn:
        conn.execute(insert(usage).values(
            usage_id=uuid.uuid4(), volume_id=src, **stray.usage_values()
        ))
    with db.begin() as conn:
        cleanup = volumes.soft_delete_volume(conn, src)
    assert len(cleanup.region_snapshots) == 3  # its own three; `other` still reads the stray
    assert _usage(db, src) == []
    assert check_invariants(db) == []


def test_soft_delete_of_a_missing_volume_is_a_no_op(db: Database) -> None:
    with db.begin() as conn:
        assert volumes.soft_delete_volume(conn, uuid.uuid4()) == volumes.CleanUp()
