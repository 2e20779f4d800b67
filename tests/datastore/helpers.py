"""Helpers for the datastore tests: records in any state, inserted or driven there."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection

from udx.datastore import exports
from udx.db.schema import user_data_export
from udx.domain.address import PantryAddress
from udx.domain.model import ResourceType, UserDataExport

PANTRY_A = PantryAddress.parse("10.0.0.1:17000")
PANTRY_B = PantryAddress.parse("[fd00:1122:3344:101::1]:17000")
PANTRY_C = PantryAddress.parse("10.0.0.3:17000")


def record_row(
    resource_id: uuid.UUID,
    *,
    resource_type: ResourceType = ResourceType.SNAPSHOT,
    state: str = "requested",
    saga: uuid.UUID | None = None,
    generation: int = 0,
    resource_deleted: bool = False,
    pantry: PantryAddress | None = None,
    volume_id: uuid.UUID | None = None,
    export_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    return {
        "id": export_id or uuid.uuid4(),
        "state": state,
        "operating_saga_id": saga,
        "generation": generation,
        "resource_id": resource_id,
        "resource_type": resource_type.value,
        "resource_deleted": resource_deleted,
        "pantry_ip": pantry.ip_text if pantry else None,
        "pantry_port": pantry.port if pantry else None,
        "volume_id": volume_id,
    }


def insert_record(conn: Connection, resource_id: uuid.UUID, **kw: Any) -> uuid.UUID:
    """Insert one row directly (no checks): for states the tests set up by hand."""
    row = record_row(resource_id, **kw)
    conn.execute(user_data_export.insert().values(**row))
    return uuid.UUID(str(row["id"]))


def to_assigning(
    conn: Connection, kind: ResourceType, resource_id: uuid.UUID, gen: int = 1
) -> tuple[UserDataExport, uuid.UUID]:
    rec = exports.create(conn, uuid.uuid4(), kind, resource_id)
    saga = uuid.uuid4()
    return exports.start_assigning(conn, rec.id, saga, gen), saga


def to_live(
    conn: Connection,
    kind: ResourceType,
    resource_id: uuid.UUID,
    pantry: PantryAddress = PANTRY_A,
    gen: int = 1,
) -> UserDataExport:
    rec, saga = to_assigning(conn, kind, resource_id, gen)
    return exports.set_live(conn, rec.id, saga, gen, pantry, uuid.uuid4())
