"""`udx export prune` (issue 13): Deleted records retired before the cutoff go, in
batches; nothing in another state, and no record that cannot be dated. Both
engines; records reach Deleted through real passes with simulated pantries."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.cli.helpers import Udx
from udx import seed
from udx.datastore import exports, resources, retention
from udx.db.schema import image, snapshot, user_data_export, volume
from udx.db.types import utcnow
from udx.domain.model import ExportState, ResourceType

from .conftest import assert_invariants


@pytest.fixture(autouse=True)
def _patient(settings):
    """These scenarios expect their sagas to succeed: under a loaded machine a 1 s
    request timeout can fail a healthy attach. Dead pantries here refuse
    connections, which fails at once whatever the timeout."""
    settings.pantry.request_timeout_secs = 10.0
    settings.pantry.retry_budget_secs = 20.0

def _records(db) -> dict[uuid.UUID, ExportState]:
    with db.connect() as conn:
        return {r.id: r.state for r in exports.list_exports(conn)}


@pytest.fixture
def retired(db, registered, run_pass) -> dict[str, list[uuid.UUID]]:
    """Deleted records: old ones (via a delete saga and bypassed), a recent one, an
    undated one; and live and requested records whose resources are old."""
    with db.begin() as conn:
        refs = seed.seed_fleet(conn, snapshots=5, project_images=1)
    run_pass()
    with db.connect() as conn:
        live = {r.resource_id: r for r in exports.list_exports(conn)}
    snaps = [r for r in refs if r.resource_type is ResourceType.SNAPSHOT]
    with db.begin() as conn:
        resources.soft_delete(conn, ResourceType.SNAPSHOT, [s.resource_id for s in snaps[:4]])
        # A requested record whose resource is then deleted: bypassed to Deleted.
        img = seed.add_image(conn)
        bypassed = exports.create(conn, uuid.uuid4(), ResourceType.IMAGE, img)
        resources.soft_delete(conn, ResourceType.IMAGE, [img])
    status = run_pass()
    assert status.errors == [] and len(status.records_bypassed_ok) == 1
    old = [live[s.resource_id].id for s in snaps[:3]]
    recent = [live[s.resource_id].id for s in snaps[3:4]]
    month_ago = utcnow() - timedelta(days=40)
    with db.begin() as conn:
        for s in snaps[:3]:  # retired a month ago: their snapshot and volume deleted then
            conn.execute(
                update(snapshot)
                .where(snapshot.c.id == s.resource_id)
                .values(time_deleted=month_ago)
            )
            conn.execute(
                update(volume)
                .where(volume.c.id == live[s.resource_id].volume_id)
                .where(volume.c.time_deleted.is_not(None))
                .values(time_deleted=month_ago)
            )
        conn.execute(update(image).where(image.c.id == img).values(time_deleted=month_ago))
        # Dated by its volume's deletion (its resource is still live: its pantry went).
        by_volume = uuid.uuid4()
        vid = uuid.uuid4()
        conn.execute(
            volume.insert().values(
                id=vid,
                time_created=month_ago,
                time_modified=month_ago,
                time_deleted=month_ago,
                data="{}",
            )
        )
        conn.execute(
            user_data_export.insert().values(
                id=by_volume,
                state="deleted",
                generation=3,
                resource_id=snaps[4].resource_id,
                resource_type="snapshot",
                resource_deleted=True,
                volume_id=vid,
            )
        )
        # A Deleted record nothing dates: its resource row is gone, it has no volume.
        undated = uuid.uuid4()
        conn.execute(
            user_data_export.insert().values(
                id=undated,
                state="deleted",
                generation=3,
                resource_id=uuid.uuid4(),
                resource_type="snapshot",
                resource_deleted=True,
            )
        )
        # Old times under records that are not Deleted must not matter.
        conn.execute(update(snapshot).values(time_created=month_ago))
        conn.execute(
            update(volume).where(volume.c.time_deleted.is_(None)).values(time_created=month_ago)
        )
    return {
        "old": [*old, bypassed.id, by_volume],
        "recent": recent,
        "undated": [undated],
        "kept": [r.id for r in live.values() if r.id not in old + recent],
    }


def test_prune_removes_old_deleted_records_only(db, registered, retired) -> None:
    cutoff = utcnow() - timedelta(days=30)
    with db.connect() as conn:
        assert retention.count_records(conn, cutoff).records == 5
    done = retention.prune_records(db, cutoff, batch=3)
    assert done.records == 5 and done.batches == 2
    left = _records(db)
    assert not set(retired["old"]) & set(left)
    for key in ("recent", "undated", "kept"):
        assert set(retired[key]) <= set(left), key
    assert left[retired["recent"][0]] is ExportState.DELETED
    assert retention.prune_records(db, cutoff).records == 0
    assert_invariants(db, registered)


@pytest.fixture
def udx(tmp_path: Path, db_url: str) -> Udx:
    return Udx(tmp_path, db_url)


def test_export_prune_cli_and_pass(udx: Udx, db, registered, retired) -> None:
    r = udx.ok("export", "prune", "--dry-run", "--json")
    assert json.loads(r.stdout)["records"] == 5
    assert len(_records(db)) == 9  # 6 + bypassed + by volume + undated: nothing removed
    r = udx.ok("export", "prune", "--older-than", "1h", "--dry-run")
    assert "would remove 5 Deleted records" in r.stdout
    # The pass prunes them when asked (sagas too: none is that old here).
    env = {"UDX_PANTRY_REQUEST_TIMEOUT_SECS": "1", "UDX_PANTRY_RETRY_BUDGET_SECS": "1"}
    r = udx("pass", "--prune-older-than", "30d", env=env)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "Deleted records pruned" in r.stdout
    left = _records(db)
    assert not set(retired["old"]) & set(left)
    assert set(retired["recent"] + retired["undated"] + retired["kept"]) <= set(left)
    assert udx("export", "prune", "--older-than", "0s").exit_code == 2
