"""`udx export prune` (issue 13): Deleted records retired before the cutoff (dated by
the record's own time_modified) go, in batches; nothing in another state. Both
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
    """Deleted records: old ones (via a delete saga and bypassed), recent ones (one
    written without times); and live records whose resources are old."""
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
        # Retired a month ago (through a delete saga, and bypassed from Requested).
        conn.execute(
            update(user_data_export)
            .where(user_data_export.c.id.in_([*old, bypassed.id]))
            .values(time_modified=month_ago)
        )
        # Old resource and volume times do not date a record, nor under records
        # that are not Deleted: only the record's own time does.
        conn.execute(update(snapshot).values(time_created=month_ago, time_deleted=month_ago))
        conn.execute(update(image).values(time_deleted=month_ago))
        conn.execute(update(volume).values(time_created=month_ago))
        conn.execute(
            update(volume).where(volume.c.time_deleted.is_not(None)).values(time_deleted=month_ago)
        )
        # Written by another tool without times: the server default dates it now.
        by_default = uuid.uuid4()
        conn.execute(
            user_data_export.insert().values(
                id=by_default,
                state="deleted",
                generation=3,
                resource_id=uuid.uuid4(),
                resource_type="snapshot",
                resource_deleted=True,
            )
        )
    return {
        "old": [*old, bypassed.id],
        "recent": [*recent, by_default],
        "kept": [r.id for r in live.values() if r.id not in old + recent],
    }


def test_prune_removes_old_deleted_records_only(db, registered, retired) -> None:
    cutoff = utcnow() - timedelta(days=30)
    with db.connect() as conn:
        assert retention.count_records(conn, cutoff).records == 4
    done = retention.prune_records(db, cutoff, batch=3)
    assert done.records == 4 and done.batches == 2
    left = _records(db)
    assert not set(retired["old"]) & set(left)
    for key in ("recent", "kept"):
        assert set(retired[key]) <= set(left), key
    assert left[retired["recent"][0]] is ExportState.DELETED
    assert retention.prune_records(db, cutoff).records == 0
    assert_invariants(db, registered)


@pytest.fixture
def udx(tmp_path: Path, db_url: str) -> Udx:
    return Udx(tmp_path, db_url)


def test_export_prune_cli_and_pass(udx: Udx, db, registered, retired) -> None:
    r = udx.ok("export", "prune", "--dry-run", "--json")
    assert json.loads(r.stdout)["records"] == 4
    assert len(_records(db)) == 8  # 6 + bypassed + written by another tool: none removed
    r = udx.ok("export", "prune", "--older-than", "1h", "--dry-run")
    assert "would remove 4 Deleted records" in r.stdout
    # The pass prunes them when asked (sagas too: none is that old here).
    env = {"UDX_PANTRY_REQUEST_TIMEOUT_SECS": "1", "UDX_PANTRY_RETRY_BUDGET_SECS": "1"}
    r = udx("pass", "--prune-older-than", "30d", env=env)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "Deleted records pruned" in r.stdout
    left = _records(db)
    assert not set(retired["old"]) & set(left)
    assert set(retired["recent"] + retired["kept"]) <= set(left)
    assert udx("export", "prune", "--older-than", "0s").exit_code == 2
