"""The world the export sagas touch, and how to put it back, for the harness.

Importable by the harness's child processes ("tests.sagas.export_world:make_deps"):
the child reaches the simulated pantries through the `pantry` table.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, select, update

from udx import seed
from udx.datastore import exports
from udx.db.engine import Database
from udx.db.schema import image, region_snapshot, snapshot, user_data_export, volume
from udx.domain.model import ResourceType
from udx.pantry.inventory import DbInventory
from udx.pantry.sim import SimulatedPantry
from udx.saga import SagaExecutor
from udx.sagas import CREATE_SAGA
from udx.sagas.deps import ExportSagaDeps

EXPORT_ID = uuid.UUID("00000000-0000-4000-8000-0000000000e1")


def make_deps(db: Database) -> ExportSagaDeps:
    return ExportSagaDeps(DbInventory(db), request_timeout_secs=1.0, retry_budget_secs=2.0)


def seed_image(db: Database) -> uuid.UUID:
    with db.begin() as conn:
        return seed.add_image(conn)  # a volume with a read-only parent: 6 targets


def reset_requested(db: Database, sims: list[SimulatedPantry], resource_id: uuid.UUID) -> None:
    """One image, one Requested record, no copies, nothing attached."""
    with db.begin() as conn:
        conn.execute(delete(user_data_export))
        owned = select(snapshot.c.volume_id).union(select(image.c.volume_id))
        conn.execute(delete(volume).where(volume.c.id.not_in(owned)))
        conn.execute(update(region_snapshot).values(volume_references=1, deleting=False))
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
    (an unwound lock keeps its bumped generation by design)."""
    with db.connect() as conn:
        rec = exports.get(conn, EXPORT_ID)
        live_volumes = (
            conn.execute(select(volume.c.id).where(volume.c.time_deleted.is_(None))).scalars().all()
        )
        refs = sorted(
            (r.snapshot_addr, int(r.volume_references), bool(r.deleting))
            for r in conn.execute(select(region_snapshot))
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
        "region_snapshots": refs,
        "attachments": sum(len(v) for v in attached.values()),
        "attached_where_recorded": attached_where_recorded,
    }
