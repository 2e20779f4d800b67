"""Rendering shared by several commands."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from udx.cli.tables import Column, fmt_age, fmt_time, write_heading, write_table
from udx.domain.model import Changeset, UserDataExport

EXPORT_COLUMNS = (
    Column("id", key=True),
    Column("type"),
    Column("resource", priority=2),
    Column("state"),
    Column("age", priority=2, justify="right"),
    Column("gen", priority=4, justify="right"),
    Column("saga", priority=5),
    Column("marked", priority=4),  # marked for deletion (resource_deleted)
    Column("pantry", priority=3),
    Column("volume", priority=5),
    Column("created", wide=True),
    Column("modified", wide=True),
)

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


def export_cells(r: UserDataExport, sagas: Mapping[uuid.UUID, uuid.UUID]) -> list[str]:
    addr = r.pantry_text
    if addr is not None and r.pantry_problem is not None:
        addr += " (invalid)"  # shown as stored; the pass reports it once and skips it
    return [
        str(r.id),
        r.resource_type.value,
        str(r.resource_id),
        r.state.value,
        fmt_age(r.time_created),
        str(r.generation),
        saga_cell(r, sagas),
        "yes" if r.resource_deleted else "no",
        addr or "-",
        str(r.volume_id) if r.volume_id else "-",
        fmt_time(r.time_created),
        fmt_time(r.time_modified),
    ]


def export_rows(
    records: Sequence[UserDataExport],
    title: str,
    sagas: Mapping[uuid.UUID, uuid.UUID] | None = None,
    *,
    total: int | None = None,
    wide: bool = False,
    headers: bool = True,
) -> None:
    """The records as a table; `sagas` (from holding_sagas) names the saga of
    each locked record."""
    held = sagas or {}
    write_table(
        EXPORT_COLUMNS,
        (export_cells(r, held) for r in records),
        title=title,
        total=total,
        wide=wide,
        headers=headers,
    )


def write_changeset(cs: Changeset, sagas: Mapping[uuid.UUID, uuid.UUID] | None = None) -> None:
    """The changeset's tables, each titled; piped, a `== title (n)` line before each."""
    sections: list[tuple[str, Sequence[UserDataExport]]] = [
        ("create required", cs.create_required),
        ("delete required", cs.delete_required),
    ]
    if cs.would_mark:
        sections.append(("would be marked for deletion", cs.would_mark))
    write_heading(f"request required ({len(cs.request_required)})")
    write_table(
        (Column("resource type"), Column("resource id", key=True)),
        ([ref.resource_type.value, str(ref.resource_id)] for ref in cs.request_required),
        title="request required",
    )
    for title, records in sections:
        write_heading(f"{title} ({len(records)})")
        export_rows(records, title, sagas)
