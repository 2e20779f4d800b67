"""The world the export sagas touch, and how to put it back, for the harness.

Importable by the harness's child processes ("tests.sagas.export_world:make_deps"):
the child reaches the simulated pantries through the `pantry` table.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from sqlalchemy import delete, select, update

from udx import seed
from udx.datastore import exports
from udx.db.engine import Database
from udx.db.schema import (
    image,
    region,
    region_snapshot,
    snapshot,
    user_data_export,
    volume,
    volume_resource_usage,
)
from udx.domain.model import ResourceType
from udx.pantry.inventory import DbInventory
from udx.pantry.sim import SimulatedPantry
from udx.saga import SagaExecutor
from udx.sagas import CREATE_SAGA
from udx.sagas.deps import ExportSagaDeps

EXPORT_ID = uuid.UUID("00000000-0000-4000-8000-0000000000e1")


def make_deps(db: Database) -> ExportSagaDeps:
    return ExportSagaDeps(DbInventory(db), request_timeout_secs=1.0, retry_budget_secs=2.0)


def make_pass_deps(db: Database) -> ExportSagaDeps:
    """Deps as a pass holds them: the pantries probed once, so the create saga's
    pick is made in memory and joins the log transaction before it."""
    from udx.pantry.health import PassPantries, probe_all

    deps = make_deps(db)
    in_service = DbInventory(db).in_service()
    deps.begin_pass(PassPantries(in_service, probe_all(in_service, deps.client), slow_secs=5.0))
    return deps


def seed_image(db: Database) -> uuid.UUID:
    """An image whose volume has a read-only parent: 6 targets, of both kinds (the
    sub-volume's are region snapshots, the parent mixes them with a read-only
    region left by a region snapshot replacement)."""
    with db.begin() as conn:
        s = seed.Seeder()
        iid = s.add_image(parent_replaced=1)
        s.flush(conn)
        return iid


def reset_requested(db: Database, sims: list[SimulatedPantry], resource_id: uuid.UUID) -> None:
    """One image, one Requested record, no copies, nothing attached."""
    with db.begin() as conn:
        conn.execute(delete(user_data_export))
        owned = select(snapshot.c.volume_id).union(select(image.c.volume_id))
        conn.execute(
            delete(volume_resource_usage).where(volume_resource_usage.c.volume_id.not_in(owned))
        )
        conn.execute(delete(volume).where(volume.c.id.not_in(owned)))
        conn.execute(update(region_snapshot).values(deleting=False))
        conn.execute(update(region).values(deleting=False))
        exports.create(conn, EXPORT_ID, ResourceType.IMAGE, resource_id)
    for sim in sims:
        sim.restart()


def reset_live_marked(db: Database, sims: list[SimulatedPantry], resource_id: uuid.UUID) -> None:
    """The same image with a Live export, attached once, marked for deletion."""
    reset_requested(db, sims, resource_id)
    with SagaExecutor(db, [CREATE_SAGA], deps=make_deps(db)) as ex:
        result = ex.run(CREATE_SAGA.name, {"export_id": str(EXPORT_ID)})
    assert result.outcome == "succeeded", result.error
    with db.begin() as conn:
        exports.mark_for_deletion(conn, EXPORT_ID)


def delete_params(db: Database) -> dict[str, str]:
    with db.connect() as conn:
        rec = exports.get_required(conn, EXPORT_ID)
    return {"export_id": str(rec.id), "volume_id": str(rec.volume_id)}


def world(db: Database, sims: list[SimulatedPantry]) -> dict[str, Any]:
    """Everything the sagas change, without generated ids, times or generations
    (an unwound lock keeps its bumped generation by design), nor soft-deleted
    volumes (an undone copy stays soft-deleted by design: see clean_up_lists)."""
    with db.connect() as conn:
        rec = exports.get(conn, EXPORT_ID)
        live_volumes = (
            conn.execute(select(volume.c.id).where(volume.c.time_deleted.is_(None))).scalars().all()
        )
        # Per resource: how many usage rows name it, and whether it is deleting.
        users = Counter(
            (
                r.usage_type,
                str(r.region_id),
                str(r.region_snapshot_snapshot_id),
                str(r.region_snapshot_region_id),
            )
            for r in conn.execute(select(volume_resource_usage))
        )
        refs = sorted(
            [
                (
                    "region_snapshot",
                    users[("region_snapshot", "None", str(r.snapshot_id), str(r.region_id))],
                    bool(r.deleting),
                )
                for r in conn.execute(select(region_snapshot))
            ]
            + [
                (
                    "read_only_region",
                    users[("read_only_region", str(r.id), "None", "None")],
                    bool(r.deleting),
                )
                for r in conn.execute(select(region).where(region.c.read_only.is_(True)))
            ]
        )
    attached = {str(s.address): sorted(s.attachments) for s in sims if s.attachments}
    record = None
    attached_where_recorded = None
    if rec is not None:
        record = (
            rec.state.value,
            rec.operating_saga_id is None,
            rec.resource_deleted,
            rec.pantry_address is not None,
            rec.volume_id is not None,
        )
        if rec.volume_id is not None and rec.pantry_address is not None:
            attached_where_recorded = attached.get(str(rec.pantry_address)) == [str(rec.volume_id)]
    return {
        "record": record,
        "live_volumes": len(live_volumes),
        "resources": refs,
        "attachments": sum(len(v) for v in attached.values()),
        "attached_where_recorded": attached_where_recorded,
    }


def clean_up_lists(db: Database) -> list[str]:
    """The cleanup lists of the soft-deleted volumes (copies the sagas made)."""
    with db.connect() as conn:
        return sorted(
            str(c)
            for c in conn.execute(
                select(volume.c.resources_to_clean_up).where(volume.c.time_deleted.is_not(None))
            ).scalars()
        )
