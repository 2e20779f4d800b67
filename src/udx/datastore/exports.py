"""The `user_data_export` table: records, lookups, and the state machine.

Every transition is one conditional UPDATE that checks the starting state and
the lock fields. When it matches no row, the row is re-read: if it already holds
what this call would have written the call succeeds (it is idempotent, so a saga
action may run twice); otherwise it fails with a Conflict naming the row.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    exists,
    false,
    func,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from udx.datastore.resources import resource_table
from udx.db.direct import DirectStatement
from udx.db.schema import image, snapshot, user_data_export
from udx.db.types import utcnow
from udx.domain.address import PantryAddress, format_address
from udx.domain.errors import BadInput, Conflict, NotFound
from udx.domain.model import ExportState, ResourceRef, ResourceType, UserDataExport
from udx.domain.words import plural

t = user_data_export

S = ExportState


def row_to_export(row: Any) -> UserDataExport:
    m = row._mapping
    return UserDataExport(
        id=m["id"],
        state=ExportState(m["state"]),
        operating_saga_id=m["operating_saga_id"],
        generation=int(m["generation"]),
        resource_id=m["resource_id"],
        resource_type=ResourceType(m["resource_type"]),
        resource_deleted=bool(m["resource_deleted"]),
        pantry_ip=m["pantry_ip"],
        pantry_port=m["pantry_port"],
        volume_id=m["volume_id"],
        time_created=m["time_created"],
        time_modified=m["time_modified"],
    )


_STATES = {s.value: s for s in ExportState}
_KINDS = {k.value: k for k in ResourceType}


def rows_to_exports(rows: Iterable[Any]) -> list[UserDataExport]:
    """`row_to_export` for many rows of `select(user_data_export)` (all columns, in
    table order): positional access and dict lookups, for changesets of 100k rows."""
    states, kinds = _STATES, _KINDS
    return [
        UserDataExport(
            id=r[0],
            state=states[r[1]],
            operating_saga_id=r[2],
            generation=int(r[3]),
            resource_id=r[4],
            resource_type=kinds[r[5]],
            resource_deleted=bool(r[6]),
            pantry_ip=r[7],
            pantry_port=r[8],
            volume_id=r[9],
            time_created=r[10],
            time_modified=r[11],
        )
        for r in rows
    ]


# --- lookups -------------------------------------------------------------------------


_GET = DirectStatement(select(t).where(t.c.id == bindparam("b_id")))


def get(conn: Connection, export_id: uuid.UUID) -> UserDataExport | None:
    row = _GET.execute(conn, {"b_id": export_id}).first()
    return row_to_export(row) if row else None


def get_required(conn: Connection, export_id: uuid.UUID) -> UserDataExport:
    rec = get(conn, export_id)
    if rec is None:
        raise NotFound(f"no export record with id {export_id}")
    return rec


def by_volume(conn: Connection, volume_id: uuid.UUID) -> UserDataExport | None:
    row = conn.execute(
        select(t).where(t.c.volume_id == volume_id).order_by(t.c.state == "deleted")
    ).first()
    return row_to_export(row) if row else None


def by_resource(
    conn: Connection, resource_type: ResourceType, resource_id: uuid.UUID
) -> UserDataExport | None:
    """The non-deleted record of a resource, if any (there is at most one)."""
    row = conn.execute(
        select(t).where(
            t.c.resource_type == resource_type.value,
            t.c.resource_id == resource_id,
            t.c.state != S.DELETED.value,
        )
    ).first()
    return row_to_export(row) if row else None


def all_for_resource(
    conn: Connection, resource_type: ResourceType, resource_id: uuid.UUID
) -> list[UserDataExport]:
    rows = conn.execute(
        select(t)
        .where(t.c.resource_type == resource_type.value, t.c.resource_id == resource_id)
        .order_by(t.c.generation, t.c.id)
    )
    return [row_to_export(r) for r in rows]


def list_exports(
    conn: Connection,
    *,
    states: Sequence[ExportState] = (),
    resource_type: ResourceType | None = None,
    limit: int | None = None,
) -> list[UserDataExport]:
    q = select(t).order_by(t.c.resource_type, t.c.resource_id, t.c.id)
    if states:
        q = q.where(t.c.state.in_([s.value for s in states]))
    if resource_type is not None:
        q = q.where(t.c.resource_type == resource_type.value)
    if limit is not None:
        q = q.limit(limit)
    return [row_to_export(r) for r in conn.execute(q)]


def live_attachments(conn: Connection) -> Iterator[tuple[uuid.UUID, str | None, int | None, Any]]:
    """(id, pantry_ip, pantry_port, volume_id) of every Live, unmarked record, read
    a few thousand at a time: a pass compares them with what each pantry holds, and
    at 100k records full record objects cost seconds and tens of megabytes."""
    q = select(t.c.id, t.c.pantry_ip, t.c.pantry_port, t.c.volume_id).where(
        t.c.state == S.LIVE.value, t.c.resource_deleted.is_(False)
    )
    for rows in conn.execution_options(yield_per=5000).execute(q).partitions():
        for r in rows:
            yield r[0], r[1], r[2], r[3]


# `udx export list --sort`: field -> ORDER BY columns (then id, for a stable order).
SORT_FIELDS: dict[str, tuple[Any, ...]] = {
    "resource": (t.c.resource_type, t.c.resource_id),
    "id": (),
    "state": (t.c.state,),
    "created": (t.c.time_created,),
    "modified": (t.c.time_modified,),
    "pantry": (t.c.pantry_ip, t.c.pantry_port),
    "generation": (t.c.generation,),
}


@dataclass
class ExportPage:
    records: list[UserDataExport]
    total: int  # matching records before the limit


def find_exports(
    conn: Connection,
    *,
    states: Sequence[ExportState] = (),
    resource_type: ResourceType | None = None,
    resource_id: uuid.UUID | None = None,
    pantry: PantryAddress | None = None,
    modified_since: Any = None,
    sort: str = "resource",
    limit: int | None = None,
) -> ExportPage:
    """Records matching every filter given, in `sort` order. With `limit`, the
    newest `limit` (by time_created) of them, still in `sort` order, and the
    count of all that match. One statement, two with a limit."""
    where: list[ColumnElement[bool]] = []
    if states:
        where.append(t.c.state.in_([s.value for s in states]))
    if resource_type is not None:
        where.append(t.c.resource_type == resource_type.value)
    if resource_id is not None:
        where.append(t.c.resource_id == resource_id)
    if pantry is not None:
        where.append(and_(t.c.pantry_ip == pantry.ip_text, t.c.pantry_port == pantry.port))
    if modified_since is not None:
        where.append(t.c.time_modified >= modified_since)
    order = (*SORT_FIELDS[sort], t.c.id)
    if limit is None:
        rows = conn.execute(select(t).where(*where).order_by(*order)).all()
        records = rows_to_exports(rows)
        return ExportPage(records, len(records))
    from sqlalchemy import func

    newest = (
        select(t.c.id)
        .where(*where)
        .order_by(t.c.time_created.desc(), t.c.id.desc())
        .limit(limit)
        .scalar_subquery()
    )
    rows = conn.execute(select(t).where(t.c.id.in_(newest)).order_by(*order)).all()
    total = int(conn.execute(select(func.count()).select_from(t).where(*where)).scalar_one())
    return ExportPage(rows_to_exports(rows), total)


def count_by_state(conn: Connection) -> dict[ExportState, int]:
    from sqlalchemy import func

    rows = conn.execute(select(t.c.state, func.count()).group_by(t.c.state))
    counts = {s: 0 for s in ExportState}
    for state, n in rows:
        counts[ExportState(state)] = int(n)
    return counts


# --- creation --------------------------------------------------------------------------


def create(
    conn: Connection,
    export_id: uuid.UUID,
    resource_type: ResourceType,
    resource_id: uuid.UUID,
) -> UserDataExport:
    """Create a record in Requested for a live resource (DESIGN.md section 3).

    Call inside a transaction. If a record with `export_id` exists it is returned
    unchanged (so a retried call is harmless). NotFound when the resource does not
    exist or is soft-deleted; Conflict when it already has a non-deleted record.
    """
    existing = get(conn, export_id)
    if existing is not None:
        return existing
    res = resource_table(resource_type)
    live = conn.execute(
        select(res.c.id).where(res.c.id == resource_id, res.c.time_deleted.is_(None))
    ).first()
    if live is None:
        raise NotFound(f"{resource_type.value} {resource_id} does not exist or is deleted")
    other = by_resource(conn, resource_type, resource_id)
    if other is not None:
        raise Conflict(
            f"{resource_type.value} {resource_id} already has export record {other.id} "
            f"in state {other.state.value}"
        )
    now = utcnow()
    values = {
        "id": export_id,
        "state": S.REQUESTED.value,
        "operating_saga_id": None,
        "generation": 0,
        "resource_id": resource_id,
        "resource_type": resource_type.value,
        "resource_deleted": False,
        "pantry_ip": None,
        "pantry_port": None,
        "volume_id": None,
        "time_created": now,
        "time_modified": now,
    }
    try:
        with conn.begin_nested():
            conn.execute(t.insert().values(**values))
    except IntegrityError:
        # A concurrent pass inserted a record for this resource between our check
        # and our insert; the partial unique index refused ours.
        raise Conflict(
            f"{resource_type.value} {resource_id} already has a non-deleted export record"
        ) from None
    return get_required(conn, export_id)


@dataclass
class RequestOutcome:
    """What `request_many` did with each resource."""

    created: list[UserDataExport] = field(default_factory=list)
    # (resource, the non-deleted record another pass created first)
    taken: list[tuple[ResourceRef, UserDataExport]] = field(default_factory=list)
    gone: list[ResourceRef] = field(default_factory=list)  # deleted meanwhile


# Rows per statement in `request_many`: 6 bind parameters each, well under the
# 65,535 a PostgreSQL statement may carry.
REQUEST_CHUNK = 1000


def request_many(
    conn: Connection, requests: Sequence[tuple[uuid.UUID, ResourceRef]]
) -> RequestOutcome:
    """Create records in Requested for many resources, set-based: the step-3
    requests of a pass. Call inside a transaction; at most REQUEST_CHUNK requests.

    At most four statements whatever the count: the live check (one per resource
    kind), the insert, and a read of the winners when some were taken. A resource
    that is gone or soft-deleted is skipped (`gone`); one that already has a
    non-deleted record (another pass got there first) is left alone by ON CONFLICT
    DO NOTHING on the partial unique index and reported with that record
    (`taken`). `requests` pairs each resource with the id its new record gets;
    `created` keeps their order.
    """
    if len(requests) > REQUEST_CHUNK:
        raise ValueError(f"request_many takes at most {REQUEST_CHUNK} requests at once")
    out = RequestOutcome()
    if not requests:
        return out
    live: set[tuple[ResourceType, uuid.UUID]] = set()
    for kind in ResourceType:
        ids = [ref.resource_id for _, ref in requests if ref.resource_type is kind]
        if ids:
            res = resource_table(kind)
            found = conn.execute(
                select(res.c.id).where(res.c.id.in_(ids), res.c.time_deleted.is_(None))
            )
            live.update((kind, r[0]) for r in found)
    wanted = [(eid, ref) for eid, ref in requests if (ref.resource_type, ref.resource_id) in live]
    out.gone = [ref for _, ref in requests if (ref.resource_type, ref.resource_id) not in live]
    if not wanted:
        return out
    now = utcnow()
    rows = [
        {
            "id": eid,
            "state": S.REQUESTED.value,
            "generation": 0,
            "resource_id": ref.resource_id,
            "resource_type": ref.resource_type.value,
            "resource_deleted": False,
            "time_created": now,
            "time_modified": now,
        }
        for eid, ref in wanted
    ]
    # executemany, not .values(rows): SQLAlchemy then compiles the one-row INSERT
    # once (cached) and sends the rows in multi-row batches ("insertmanyvalues"),
    # RETURNING included; compiling a 1,000-row VALUES with 8,000 binds took
    # ~0.3 s of CPU per chunk, most of step 3 of a first pass.
    stmt = _insert_ignoring_conflicts(conn).on_conflict_do_nothing().returning(*t.c)
    made = {
        (r.resource_type, r.resource_id): r for r in rows_to_exports(conn.execute(stmt, rows).all())
    }
    keys = [(ref.resource_type, ref.resource_id) for _, ref in wanted]
    out.created = [made[k] for k in keys if k in made]
    lost = [ref for _, ref in wanted if (ref.resource_type, ref.resource_id) not in made]
    if lost:
        winners = {
            (r.resource_type, r.resource_id): r
            for r in rows_to_exports(
                conn.execute(
                    select(t).where(
                        t.c.resource_id.in_([ref.resource_id for ref in lost]),
                        t.c.state != S.DELETED.value,
                    )
                ).all()
            )
        }
        for ref in lost:
            winner = winners.get((ref.resource_type, ref.resource_id))
            if winner is not None:
                out.taken.append((ref, winner))
    return out


def _insert_ignoring_conflicts(conn: Connection) -> Any:
    # INSERT ... ON CONFLICT DO NOTHING: PostgreSQL's construct serves CockroachDB too.
    # Only the engine's own dialect module is imported (the PostgreSQL one costs
    # ~60 ms of start-up on SQLite).
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(t)
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    return pg_insert(t)


# --- transitions -------------------------------------------------------------------------


# Each transition is one UPDATE ... RETURNING built once, with bind parameters
# b_id (the record), b_saga and b_gen (the lock), and its own values: building
# a Core statement per call cost more CPU than executing it (bench/pass_throughput.py).
_LOCKED_BY = (t.c.operating_saga_id == bindparam("b_saga"), t.c.generation == bindparam("b_gen"))
_UNLOCKED_BELOW = (t.c.operating_saga_id.is_(None), t.c.generation < bindparam("b_gen"))


def _update(*where: ColumnElement[bool], **values: Any) -> Any:
    # Every transition stamps time_modified (b_now, given by _transition).
    return DirectStatement(
        update(t)
        .where(t.c.id == bindparam("b_id"), *where)
        .values(**values, time_modified=bindparam("b_now"))
        .returning(*t.c)
    )


_START_ASSIGNING = _update(
    t.c.state == S.REQUESTED.value,
    *_UNLOCKED_BELOW,
    t.c.resource_deleted.is_(False),
    state=S.ASSIGNING.value,
    operating_saga_id=bindparam("b_saga"),
    generation=bindparam("b_gen"),
)
_UNASSIGN = _update(
    t.c.state == S.ASSIGNING.value,
    *_LOCKED_BY,
    state=S.REQUESTED.value,
    operating_saga_id=None,
)
_SET_LIVE = _update(
    t.c.state == S.ASSIGNING.value,
    *_LOCKED_BY,
    state=S.LIVE.value,
    operating_saga_id=None,
    pantry_ip=bindparam("b_ip"),
    pantry_port=bindparam("b_port"),
    volume_id=bindparam("b_volume"),
)
_START_DELETING = _update(
    t.c.state == S.LIVE.value,
    *_UNLOCKED_BELOW,
    t.c.resource_deleted.is_(True),
    state=S.DELETING.value,
    operating_saga_id=bindparam("b_saga"),
    generation=bindparam("b_gen"),
)
_UNDELETE = _update(
    t.c.state == S.DELETING.value,
    *_LOCKED_BY,
    t.c.resource_deleted.is_(True),
    state=S.LIVE.value,
    operating_saga_id=None,
)
_SET_DELETED = _update(
    t.c.state == S.DELETING.value,
    *_LOCKED_BY,
    t.c.resource_deleted.is_(True),
    state=S.DELETED.value,
    operating_saga_id=None,
)
_BYPASS_DELETE = _update(
    t.c.state == S.REQUESTED.value,
    t.c.operating_saga_id.is_(None),
    t.c.resource_deleted.is_(True),
    state=S.DELETED.value,
)


def _transition(
    conn: Connection,
    export_id: uuid.UUID,
    *,
    name: str,
    stmt: Any,
    params: dict[str, Any],
    already_done: Any,
) -> UserDataExport:
    # RETURNING: the row as written, without a second round trip when it matched.
    updated = stmt.execute(conn, {"b_id": export_id, "b_now": utcnow(), **params}).first()
    if updated is not None:
        return row_to_export(updated)
    row = get(conn, export_id)
    if row is None:
        raise NotFound(f"no export record with id {export_id}")
    if already_done(row):
        return row
    raise Conflict(
        f"export {export_id}: cannot {name} (state {row.state.value}, "
        f"saga {row.operating_saga_id}, generation {row.generation}, "
        f"resource_deleted {row.resource_deleted})"
    )


def start_assigning(
    conn: Connection, export_id: uuid.UUID, saga_id: uuid.UUID, generation: int
) -> UserDataExport:
    """requested -> assigning, taking the lock (saga_id, generation)."""
    return _transition(
        conn,
        export_id,
        name="start assigning",
        stmt=_START_ASSIGNING,
        params={"b_saga": saga_id, "b_gen": generation},
        already_done=lambda r: (
            r.state is S.ASSIGNING and r.operating_saga_id == saga_id and r.generation == generation
        ),
    )


def unassign(
    conn: Connection, export_id: uuid.UUID, saga_id: uuid.UUID, generation: int
) -> UserDataExport:
    """assigning -> requested (the create saga's undo), dropping the lock."""
    return _transition(
        conn,
        export_id,
        name="undo assigning",
        stmt=_UNASSIGN,
        params={"b_saga": saga_id, "b_gen": generation},
        already_done=lambda r: (
            r.generation > generation
            or (
                r.state is S.REQUESTED
                and r.operating_saga_id is None
                and r.generation == generation
            )
        ),
    )


def set_live(
    conn: Connection,
    export_id: uuid.UUID,
    saga_id: uuid.UUID,
    generation: int,
    pantry: PantryAddress,
    volume_id: uuid.UUID,
) -> UserDataExport:
    """assigning -> live, recording where the copy is attached."""
    return _transition(
        conn,
        export_id,
        name="go live",
        stmt=_SET_LIVE,
        params={
            "b_saga": saga_id,
            "b_gen": generation,
            "b_ip": pantry.ip_text,
            "b_port": pantry.port,
            "b_volume": volume_id,
        },
        already_done=lambda r: (
            r.generation > generation
            or (
                r.state is S.LIVE
                and r.operating_saga_id is None
                and r.pantry_address == pantry
                and r.volume_id == volume_id
            )
        ),
    )


def start_deleting(
    conn: Connection, export_id: uuid.UUID, saga_id: uuid.UUID, generation: int
) -> UserDataExport:
    """live -> deleting, taking the lock; only for records marked resource_deleted."""
    return _transition(
        conn,
        export_id,
        name="start deleting",
        stmt=_START_DELETING,
        params={"b_saga": saga_id, "b_gen": generation},
        already_done=lambda r: (
            r.state is S.DELETING and r.operating_saga_id == saga_id and r.generation == generation
        ),
    )


def undelete(
    conn: Connection, export_id: uuid.UUID, saga_id: uuid.UUID, generation: int
) -> UserDataExport:
    """deleting -> live (the delete saga's undo), dropping the lock."""
    return _transition(
        conn,
        export_id,
        name="undo deleting",
        stmt=_UNDELETE,
        params={"b_saga": saga_id, "b_gen": generation},
        already_done=lambda r: (
            r.generation > generation
            or (r.state is S.LIVE and r.operating_saga_id is None and r.generation == generation)
        ),
    )


def set_deleted(
    conn: Connection, export_id: uuid.UUID, saga_id: uuid.UUID, generation: int
) -> UserDataExport:
    """deleting -> deleted, the delete saga's last step."""
    return _transition(
        conn,
        export_id,
        name="finish deleting",
        stmt=_SET_DELETED,
        params={"b_saga": saga_id, "b_gen": generation},
        already_done=lambda r: (
            r.state is S.DELETED and r.operating_saga_id is None and r.generation == generation
        ),
    )


def bypass_delete(conn: Connection, export_id: uuid.UUID) -> UserDataExport:
    """requested -> deleted with no saga: nothing was ever attached."""
    return _transition(
        conn,
        export_id,
        name="bypass to deleted",
        stmt=_BYPASS_DELETE,
        params={},
        already_done=lambda r: r.state is S.DELETED,
    )


# --- marking for deletion -----------------------------------------------------------------


def mark_for_deletion(conn: Connection, export_id: uuid.UUID) -> bool:
    """Set resource_deleted on one record. True when this call changed it."""
    result = conn.execute(
        update(t)
        .where(t.c.id == export_id, t.c.resource_deleted.is_(False))
        .values(resource_deleted=True, time_modified=utcnow())
    )
    if result.rowcount == 0 and get(conn, export_id) is None:
        raise NotFound(f"no export record with id {export_id}")
    return result.rowcount == 1


@dataclass(frozen=True)
class PantrySpelling:
    """One (pantry_ip, pantry_port) as stored on non-deleted records, with how many."""

    ip: str
    port: int
    records: int
    address: PantryAddress | None  # None: not an address (typed by hand)
    problem: str | None = None

    @property
    def text(self) -> str:
        return format_address(self.ip, self.port)

    def describe(self) -> str:
        ip = self.ip.replace("'", "''")
        return (
            f"{plural(self.records, 'export record')} "
            f"{'names' if self.records == 1 else 'name'} pantry {self.text!r}, which is not an "
            f"address ({self.problem}): skipped (not checked, not marked, not deleted); "
            f"fix them by hand: {_FIX_PANTRY} "
            f"WHERE pantry_ip = '{ip}' AND pantry_port = {self.port}"
        )


_FIX_PANTRY = "UPDATE user_data_export SET pantry_ip = '<ip>', pantry_port = <port>"


def pantry_fix(rec: UserDataExport) -> str:
    """The statement that fixes one record whose pantry is not an address."""
    return f"{_FIX_PANTRY} WHERE id = '{rec.id}'"


_SPELLINGS = (
    select(t.c.pantry_ip, t.c.pantry_port, func.count())
    .where(t.c.pantry_ip.is_not(None), t.c.pantry_port.is_not(None), t.c.state != "deleted")
    .group_by(t.c.pantry_ip, t.c.pantry_port)
)


def pantry_spellings(conn: Connection) -> list[PantrySpelling]:
    """Every pantry address non-deleted records name, as stored (one row per pantry,
    so a small result whatever the record count). Matching addresses in Python
    rather than comparing text in SQL makes any spelling of an in-service pantry
    count as in service, and lets a value that is no address be skipped alone."""
    out: list[PantrySpelling] = []
    for ip, port, count in conn.execute(_SPELLINGS):
        try:
            address = PantryAddress.from_parts(ip, int(port))
            out.append(PantrySpelling(ip, int(port), int(count), address))
        except BadInput as err:
            out.append(PantrySpelling(ip, int(port), int(count), None, str(err)))
    return sorted(out, key=lambda s: (s.ip, s.port))


def invalid_pantry_spellings(conn: Connection) -> list[PantrySpelling]:
    return [s for s in pantry_spellings(conn) if s.address is None]


def _on_pantries(pairs: Iterable[tuple[str, int]]) -> ColumnElement[bool]:
    """Records whose stored (pantry_ip, pantry_port) is one of `pairs`."""
    wanted = sorted(set(pairs))
    if not wanted:
        return false()
    return or_(*(and_(t.c.pantry_ip == ip, t.c.pantry_port == port) for ip, port in wanted))


def _outside(conn: Connection, in_service: Iterable[PantryAddress]) -> ColumnElement[bool]:
    """Records on a pantry that is a valid address not in `in_service`."""
    up = set(in_service)
    pairs = [
        (s.ip, s.port)
        for s in pantry_spellings(conn)
        if s.address is not None and s.address not in up
    ]
    return _on_pantries(pairs)


def records_on_expunged_pantries(
    conn: Connection, in_service: Iterable[PantryAddress], *, only_unmarked: bool = True
) -> list[UserDataExport]:
    """What `mark_expunged_pantries` would mark (read only)."""
    q = select(t).where(_outside(conn, in_service), t.c.state != S.DELETED.value)
    if only_unmarked:
        q = q.where(t.c.resource_deleted.is_(False))
    return [row_to_export(r) for r in conn.execute(q.order_by(t.c.pantry_ip, t.c.pantry_port))]


def mark_expunged_pantries(conn: Connection, in_service: Iterable[PantryAddress]) -> int:
    """Mark every not-yet-marked record on a pantry outside `in_service`.

    Two statements (the stored spellings, then one UPDATE); returns how many rows
    it changed. Records whose pantry is not an address are left alone (see
    `invalid_pantry_spellings`): nothing can tell whether that pantry is in service.
    """
    result = conn.execute(
        update(t)
        .where(
            _outside(conn, in_service),
            t.c.resource_deleted.is_(False),
            t.c.state != S.DELETED.value,
        )
        .values(resource_deleted=True, time_modified=utcnow())
    )
    return int(result.rowcount)


def mark_lost(conn: Connection, export_ids: Sequence[uuid.UUID]) -> int:
    """Mark Live records whose pantry no longer holds their volume. One statement."""
    if not export_ids:
        return 0
    result = conn.execute(
        update(t)
        .where(
            t.c.id.in_(list(export_ids)),
            t.c.state == S.LIVE.value,
            t.c.resource_deleted.is_(False),
        )
        .values(resource_deleted=True, time_modified=utcnow())
    )
    return int(result.rowcount)


# --- shared predicates for the changeset ------------------------------------------------------


def resource_gone() -> ColumnElement[bool]:
    """True for records whose snapshot or image row is missing or soft-deleted.

    Written as two NOT EXISTS joined by AND (not an OR of two), so PostgreSQL
    turns them into hash anti-joins instead of hashed subplans.
    """
    snap_live = exists().where(
        t.c.resource_type == ResourceType.SNAPSHOT.value,
        snapshot.c.id == t.c.resource_id,
        snapshot.c.time_deleted.is_(None),
    )
    image_live = exists().where(
        t.c.resource_type == ResourceType.IMAGE.value,
        image.c.id == t.c.resource_id,
        image.c.time_deleted.is_(None),
    )
    return and_(
        t.c.resource_type.in_([ResourceType.SNAPSHOT.value, ResourceType.IMAGE.value]),
        not_(snap_live),
        not_(image_live),
    )
