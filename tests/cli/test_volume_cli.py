"""`udx volume list|show` (issue 11): what storage a volume pins, what it left
to clean up; table and --json, on both engines."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, select

from udx import seed
from udx.datastore import volumes
from udx.db.engine import open_database
from udx.db.schema import image
from udx.db.schema import volume_resource_usage as usage

from .helpers import Udx, assert_one_line_error


def _image_and_copy(url: str) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    db = open_database(url)
    try:
        with db.begin() as conn:
            s = seed.Seeder()
            iid = s.add_image(parent_replaced=1)
            s.flush(conn)
            src = conn.execute(select(image.c.volume_id).where(image.c.id == iid)).scalar_one()
            copy = uuid.uuid4()
            volumes.copy_volume(conn, src, copy)
        return iid, src, copy
    finally:
        db.dispose()


def test_volume_list_and_show_live_then_deleted(udx: Udx) -> None:
    assert udx.db_url is not None
    iid, src, copy = _image_and_copy(udx.db_url)
    live = {v["id"]: v for v in udx.json("volume", "list")}
    assert set(live) == {str(src), str(copy)}
    assert live[str(src)]["used_by"] == [f"image {iid}"]
    assert live[str(copy)]["used_by"] == []
    for v in live.values():
        assert (v["state"], v["targets"], v["usage_rows"]) == ("live", 6, 6)
        assert v["resources_to_clean_up"] is None
    assert udx.json("volume", "list", "--deleted") == []

    shown = udx.json("volume", "show", str(copy))
    assert shown["state"] == "live" and len(shown["targets"]) == 6
    kinds = sorted(t["resolves_to"]["type"] for t in shown["targets"])
    assert kinds == ["read_only_region"] + ["region_snapshot"] * 5
    assert all(t["usage_row"] and t["problem"] is None and not t["deleting"]
               for t in shown["targets"])
    assert len(shown["usage"]) == 6 and all(u["named_by_data"] for u in shown["usage"])

    text = udx.ok("volume", "show", str(copy)).stdout  # piped: plain columns
    assert str(copy) in text and shown["targets"][0]["target"] in text
    assert "read-only region" in text and "yes" in text
    listed = udx.ok("volume", "list").stdout
    assert str(src) in listed and f"image {iid}" in listed

    db = open_database(udx.db_url)
    try:
        with db.begin() as conn:
            assert not volumes.soft_delete_volume(conn, src)  # the copy still reads it all
            freed = volumes.soft_delete_volume(conn, copy)
    finally:
        db.dispose()
    assert len(freed.describe()) == 6
    assert udx.json("volume", "list") == []
    gone = {v["id"]: v for v in udx.json("volume", "list", "--deleted")}
    assert gone[str(src)]["resources_to_clean_up"] == {
        "V3": {"regions": [], "region_snapshots": []}
    }
    v3 = gone[str(copy)]["resources_to_clean_up"]["V3"]
    assert len(v3["regions"]) == 1 and len(v3["region_snapshots"]) == 5
    assert gone[str(copy)]["usage_rows"] == 0
    shown = udx.json("volume", "show", str(copy))
    assert shown["state"] == "deleted" and shown["usage"] == []
    assert shown["resources_to_clean_up"] == freed.to_json()
    # Every resource it read is being deleted now, as its soft delete left it.
    assert all(t["resolves_to"] and t["deleting"] and t["problem"] is None
               for t in shown["targets"])
    text = udx.ok("volume", "show", str(copy)).stdout
    assert "resources to clean up" in text and v3["regions"][0] in text
    assert str(copy) in udx.ok("volume", "list", "--deleted").stdout


def test_volume_show_names_a_missing_usage_row(udx: Udx) -> None:
    assert udx.db_url is not None
    _iid, _src, copy = _image_and_copy(udx.db_url)
    db = open_database(udx.db_url)
    try:
        with db.begin() as conn:
            conn.execute(delete(usage).where(usage.c.volume_id == copy,
                                             usage.c.region_id.is_not(None)))
    finally:
        db.dispose()
    shown = udx.json("volume", "show", str(copy))
    missing = [t for t in shown["targets"] if not t["usage_row"]]
    assert len(missing) == 1 and missing[0]["resolves_to"]["type"] == "read_only_region"
    assert "no" in udx.ok("volume", "show", str(copy)).stdout


def test_volume_show_bad_input(udx: Udx) -> None:
    assert_one_line_error(udx("volume", "show", "not-a-uuid"), 2, "volume id")
    missing = str(uuid.uuid4())
    assert_one_line_error(udx("volume", "show", missing), 2, missing, "does not exist")
