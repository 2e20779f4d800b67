"""Snapshots, images, volumes and region snapshots: the rows udx reads but the
rest of the control plane owns. Here for seeding tests, the demo and staging
setups, and for the few writes the export sagas make (soft-deleting is not one
of them: resources are deleted by the control plane, or by `udx db seed`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from udx.db.direct import DirectStatement
from udx.db.schema import image, snapshot
from udx.db.types import utcnow
from udx.domain.model import ResourceType


def resource_table(kind: ResourceType) -> Any:
    return snapshot if kind is ResourceType.SNAPSHOT else image


_GET = {
    kind: select(resource_table(kind)).where(resource_table(kind).c.id == bindparam("b_id"))
    for kind in ResourceType
}  # built once: see exports._update


_VOLUME_ID = {
    kind: DirectStatement(
        select(resource_table(kind).c.volume_id).where(
            resource_table(kind).c.id == bindparam("b_id")
        )
    )
    for kind in ResourceType
}


def get_resource(conn: Connection, kind: ResourceType, resource_id: uuid.UUID) -> Any | None:
    return conn.execute(_GET[kind], {"b_id": resource_id}).first()


def volume_id_of(conn: Connection, kind: ResourceType, resource_id: uuid.UUID) -> uuid.UUID | None:
    """The volume of a snapshot or image, soft-deleted or not; None when no such row."""
    value = _VOLUME_ID[kind].execute(conn, {"b_id": resource_id}).scalar()
    return None if value is None else uuid.UUID(str(value))


def soft_delete(conn: Connection, kind: ResourceType, ids: Sequence[uuid.UUID]) -> int:
    """Soft-delete resources (as the control plane would). One statement."""
    if not ids:
        return 0
    tbl = resource_table(kind)
    now = utcnow()
    result = conn.execute(
        update(tbl)
        .where(tbl.c.id.in_(list(ids)), tbl.c.time_deleted.is_(None))
        .values(time_deleted=now, time_modified=now)
    )
    return int(result.rowcount)
