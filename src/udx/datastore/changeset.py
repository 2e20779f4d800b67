"""The changeset (DESIGN.md section 4), in its mutating and read-only forms.

Both are set-based: a fixed number of statements whatever the row counts.
Mutating: one UPDATE (mark records whose resource is gone), then three SELECTs.
Read-only: four SELECTs; the marking predicate is applied in the queries instead.

The read-only form finds "resource gone" with two LEFT JOINs on the resource
primary keys (a record matches at most one live row), so the planner uses hash
joins; the equivalent OR of correlated NOT EXISTS forced hashed subplans that
PostgreSQL costed so high it JIT-compiled them (a third of the query time).
Rows are fetched in one go (`.all()`) and turned into records with positional
access: per-row fetching and mapping lookups cost more than the queries.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    exists,
    literal,
    not_,
    select,
    union_all,
)
from sqlalchemy import update as sql_update

from udx.datastore.exports import resource_gone, rows_to_exports
from udx.db.schema import image, snapshot, user_data_export
from udx.domain.model import Changeset, ExportState, ResourceRef, ResourceType, UserDataExport

t = user_data_export
_NOT_DELETED = t.c.state != ExportState.DELETED.value
_MARKED = t.c.resource_deleted.is_(True)
_UNMARKED = t.c.resource_deleted.is_(False)
_REQUESTED = t.c.state == ExportState.REQUESTED.value


def _missing_records(kind: ResourceType) -> Select[Any]:
    """Live resources of one kind with no non-deleted record (an anti-join)."""
    tbl = snapshot if kind is ResourceType.SNAPSHOT else image
    has_record = exists().where(
        t.c.resource_id == tbl.c.id, t.c.resource_type == kind.value, _NOT_DELETED
    )
    return select(literal(kind.value).label("resource_type"), tbl.c.id.label("resource_id")).where(
        tbl.c.time_deleted.is_(None), not_(has_record)
    )


def request_required(conn: Connection) -> list[ResourceRef]:
    q = union_all(
        _missing_records(ResourceType.SNAPSHOT), _missing_records(ResourceType.IMAGE)
    ).order_by("resource_type", "resource_id")
    kinds = {k.value: k for k in ResourceType}
    return [ResourceRef(kinds[kind], rid) for kind, rid in conn.execute(q).all()]


def _records(conn: Connection, *where: ColumnElement[bool]) -> list[UserDataExport]:
    return rows_to_exports(conn.execute(select(t).where(*where).order_by(t.c.id)).all())


# The read-only form: each record joined to its live resource row, if any.
_live_snap = snapshot.alias("live_snapshot")
_live_image = image.alias("live_image")
_with_resource = t.outerjoin(
    _live_snap,
    and_(
        t.c.resource_type == ResourceType.SNAPSHOT.value,
        _live_snap.c.id == t.c.resource_id,
        _live_snap.c.time_deleted.is_(None),
    ),
).outerjoin(
    _live_image,
    and_(
        t.c.resource_type == ResourceType.IMAGE.value,
        _live_image.c.id == t.c.resource_id,
        _live_image.c.time_deleted.is_(None),
    ),
)
_GONE = and_(_live_snap.c.id.is_(None), _live_image.c.id.is_(None))
_PRESENT = not_(_GONE)


def _joined_records(conn: Connection, *where: ColumnElement[bool]) -> list[UserDataExport]:
    q = select(t).select_from(_with_resource).where(*where).order_by(t.c.id)
    return rows_to_exports(conn.execute(q).all())


def compute(conn: Connection) -> Changeset:
    """The mutating form the coordinator uses. Call inside a transaction.

    Marks first, then reads delete_required, then create_required: a record just
    marked must not be created.
    """
    conn.execute(
        sql_update(t).where(_UNMARKED, _NOT_DELETED, resource_gone()).values(resource_deleted=True)
    )
    delete_required = _records(conn, _MARKED, _NOT_DELETED)
    create_required = _records(conn, _REQUESTED, _UNMARKED)
    return Changeset(
        request_required=request_required(conn),
        create_required=create_required,
        delete_required=delete_required,
    )


def preview(conn: Connection) -> Changeset:
    """The read-only form: what `compute` would return, writing nothing, plus
    `would_mark`, the records whose marking `compute` would change."""
    would_mark = _joined_records(conn, _UNMARKED, _NOT_DELETED, _GONE)
    delete_required = _joined_records(conn, _NOT_DELETED, _MARKED | _GONE)
    create_required = _joined_records(conn, _REQUESTED, _UNMARKED, _PRESENT)
    return Changeset(
        request_required=request_required(conn),
        create_required=create_required,
        delete_required=delete_required,
        would_mark=would_mark,
    )
