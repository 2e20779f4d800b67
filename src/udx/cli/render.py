"""Rendering shared by several commands."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from udx.cli.common import print_table, table
from udx.domain.model import UserDataExport

if TYPE_CHECKING:
    from sqlalchemy import Connection


def holding_sagas(
    conn: Connection, records: Sequence[UserDataExport]
) -> dict[uuid.UUID, uuid.UUID]:
    """lock id -> saga id for the locked records among `records` (one query)."""
    from udx.datastore import export_locks

    locks = [r.operating_saga_id for r in records if r.operating_saga_id is not None]
    return export_locks.sagas_for_locks(conn, locks) if locks else {}


def saga_cell(rec: UserDataExport, sagas: Mapping[uuid.UUID, uuid.UUID]) -> str:
    """The saga holding a record, by its saga id (what `udx saga show` takes), not
    the lock id stored in `operating_saga_id`."""
    lock = rec.operating_saga_id
    if lock is None:
        return "-"
    saga = sagas.get(lock)
    # One token, so piped columns stay split-able: a lock no logged saga made.
    return str(saga) if saga is not None else f"lock:{lock}"


def export_rows(
    records: Sequence[UserDataExport],
    title: str,
    sagas: Mapping[uuid.UUID, uuid.UUID] | None = None,
) -> None:
    """The records as a table; `sagas` (from holding_sagas) names the saga of
    each locked record."""
    t = table("id", "type", "resource", "state", "gen", "saga", "deleted?", "pantry", "volume")
    for r in records:
        addr = r.pantry_text
        if addr is not None and r.pantry_problem is not None:
            addr += " (invalid)"
        t.add_row(
            str(r.id),
            r.resource_type.value,
            str(r.resource_id),
            r.state.value,
            str(r.generation),
            saga_cell(r, sagas or {}),
            "yes" if r.resource_deleted else "no",
            addr or "-",
            str(r.volume_id) if r.volume_id else "-",
        )
    print_table(t, title)
