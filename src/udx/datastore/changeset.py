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

`preview_json` is the read-only form as JSON text (`udx changeset --json`): on
PostgreSQL the same four statements select the rows already rendered as JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Text,
    and_,
    cast,
    exists,
    literal,
    literal_column,
    not_,
    select,
    union_all,
)
from sqlalchemy import update as sql_update

from udx.datastore.exports import resource_gone, rows_to_exports
from udx.db.schema import image, snapshot, user_data_export
from udx.db.types import utcnow
from udx.domain.model import Changeset, ExportState, ResourceRef, ResourceType, UserDataExport
from udx.jsonstream import Stream, ascii_only, iter_json

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


# Rows per fetch when streaming (`udx changeset --json`).
STREAM_CHUNK = 2000


def _stream(conn: Connection, q: Any) -> Any:
    """Rows fetched STREAM_CHUNK at a time (a server-side cursor on PostgreSQL;
    call `_plan_for_every_row` first)."""
    return conn.execution_options(yield_per=STREAM_CHUNK).execute(q)


def _plan_for_every_row(conn: Connection) -> None:
    """PostgreSQL plans a cursor's query for its first 10% of rows
    (cursor_tuple_fraction): nested loops over the indexes instead of the hash
    joins that read every row once, 2.6x psql's time at 100k rows per table and
    3.5x at 1M. The streams read every row, so plan for all of them (for this
    transaction only)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "SET LOCAL cursor_tuple_fraction = 1.0",
            execution_options={"stream_results": False, "yield_per": None},
        )


def _iter_joined(conn: Connection, *where: ColumnElement[bool]) -> Iterator[dict[str, Any]]:
    q = select(t).select_from(_with_resource).where(*where).order_by(t.c.id)
    for rows in _stream(conn, q).partitions():
        for rec in rows_to_exports(rows):
            yield rec.to_json()


def _iter_request_required(conn: Connection) -> Iterator[dict[str, Any]]:
    q = union_all(
        _missing_records(ResourceType.SNAPSHOT), _missing_records(ResourceType.IMAGE)
    ).order_by("resource_type", "resource_id")
    for rows in _stream(conn, q).partitions():
        for kind, rid in rows:
            yield {"resource_type": kind, "resource_id": str(rid)}


def _joined_records(conn: Connection, *where: ColumnElement[bool]) -> list[UserDataExport]:
    q = select(t).select_from(_with_resource).where(*where).order_by(t.c.id)
    return rows_to_exports(conn.execute(q).all())


def compute(conn: Connection) -> Changeset:
    """The mutating form the coordinator uses. Call inside a transaction.

    Marks first, then reads delete_required, then create_required: a record just
    marked must not be created.
    """
    conn.execute(
        sql_update(t)
        .where(_UNMARKED, _NOT_DELETED, resource_gone())
        .values(resource_deleted=True, time_modified=utcnow())
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


# --- `udx changeset --json`, rendered by PostgreSQL -----------------------------------
#
# The read-only form's JSON text, built by the database: the same four statements as
# `preview` (same FROM and WHERE), selecting each record as one JSON object in text
# instead of its columns, read from server-side cursors as the text is written.
# Python joins the pieces and never parses them: at 100k rows per table, building
# row objects (UUIDs above all), records, their dicts and encoding those cost about
# twice the queries.
#
# The text is what `json.dumps(preview(conn).to_json(include_would_mark=True))`
# writes with its defaults (", " and ": " separators, ensure_ascii): keys in
# `to_json`'s order, UUIDs as PostgreSQL's lower-case text (str(UUID)'s form),
# `pantry_address` as `format_address` writes it, null when the ip or the port is.
# Free text (`pantry_ip`) goes through to_json(), whose escapes of '"', '\\' and
# control characters are json's; json's ensure_ascii escapes of DEL and non-ASCII
# are applied afterwards in Python (`ascii_only`). `state` and `resource_type` are
# written as they are: check constraints hold them to a few lower-case words.
# tests/datastore/test_changeset.py compares the two paths byte for byte.

_E = "user_data_export."  # preview's FROM: the table itself, not an alias


def _time(column: str) -> str:
    # json_time's form: UTC, microseconds, Z (both columns are NOT NULL).
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


_ADDRESS = (
    f"CASE WHEN strpos({_E}pantry_ip, ':') > 0 THEN '[' || {_E}pantry_ip || ']:' "
    f"ELSE {_E}pantry_ip || ':' END || {_E}pantry_port::text"
)
# One record, as UserDataExport.to_json's dict is dumped; each literal carries the
# punctuation around the value that follows it.
_RECORD_JSON = literal_column(
    f"""'{{"id": "' || {_E}id::text"""
    f""" || '", "state": "' || {_E}state"""
    f""" || '", "operating_saga_id": '"""
    f""" || coalesce('"' || {_E}operating_saga_id::text || '"', 'null')"""
    f""" || ', "generation": ' || {_E}generation::text"""
    f""" || ', "resource_id": "' || {_E}resource_id::text"""
    f""" || '", "resource_type": "' || {_E}resource_type"""
    f""" || CASE WHEN {_E}resource_deleted"""
    f""" THEN '", "resource_deleted": true' ELSE '", "resource_deleted": false' END"""
    f""" || ', "pantry_ip": ' || coalesce(to_json({_E}pantry_ip)::text, 'null')"""
    f""" || ', "pantry_port": ' || coalesce({_E}pantry_port::text, 'null')"""
    f""" || ', "volume_id": ' || coalesce('"' || {_E}volume_id::text || '"', 'null')"""
    f""" || ', "time_created": "' || {_time(_E + "time_created")} || '"'"""
    f""" || ', "time_modified": "' || {_time(_E + "time_modified")} || '"'"""
    f""" || ', "pantry_address": ' || coalesce(to_json({_ADDRESS})::text, 'null')"""
    f""" || '}}'""",
    Text,
)


def _joined_json_query(*where: ColumnElement[bool]) -> Select[Any]:
    return select(_RECORD_JSON).select_from(_with_resource).where(*where).order_by(t.c.id)


def _request_required_json_query() -> Select[Any]:
    """Each missing resource as its JSON text, in `request_required`'s order (by
    resource_type, then by resource_id)."""
    missing = union_all(
        _missing_records(ResourceType.SNAPSHOT), _missing_records(ResourceType.IMAGE)
    ).subquery()
    text = (
        literal('{"resource_type": "', Text)
        + missing.c.resource_type
        + literal('", "resource_id": "', Text)
        + cast(missing.c.resource_id, Text)
        + literal('"}', Text)
    )
    return select(text).order_by(missing.c.resource_type, missing.c.resource_id)


def preview_json_queries() -> list[tuple[str, Select[Any]]]:
    """The four statements of `preview_json_fields` on PostgreSQL, with the name of
    the list each one gives (in the order they are written). Also rendered as SQL
    text in `changeset_pg_sql`, which runs them without SQLAlchemy."""
    return [
        ("request_required", _request_required_json_query()),
        ("create_required", _joined_json_query(_REQUESTED, _UNMARKED, _PRESENT)),
        ("delete_required", _joined_json_query(_NOT_DELETED, _MARKED | _GONE)),
        ("would_mark_for_deletion", _joined_json_query(_UNMARKED, _NOT_DELETED, _GONE)),
    ]


def preview_json_sql_module() -> str:
    """The source of `udx.datastore.changeset_pg_sql`: `preview_json_queries` as
    PostgreSQL text, parameters inlined (scripts/gen_docs.py writes it; CI checks
    it is current)."""
    from sqlalchemy.dialects import postgresql

    # "named": with literal binds nothing is a placeholder, and pyformat would
    # double every % in the text (sent without parameters, it would stay doubled).
    dialect = postgresql.dialect(paramstyle="named")
    lines = [
        '"""Generated by scripts/gen_docs.py from udx.datastore.changeset.preview_json_queries:',
        "do not edit (CI fails when it is stale). The SQL `udx changeset --json` sends",
        'when piped on PostgreSQL; udx.datastore.changeset_pg runs it with psycopg alone."""',
        "",
        "# ruff: noqa: E501",
        "",
        "STATEMENTS: tuple[tuple[str, str], ...] = (",
    ]
    for name, q in preview_json_queries():
        sql = str(q.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        if "%%" in sql:  # a guard for later edits (a LIKE pattern, say)
            raise AssertionError(f"{name}: the SQL text doubles a percent sign")
        lines.append(f"    ({name!r}, (")
        lines += [f"        {line!r}" for line in sql.splitlines(keepends=True)]
        lines.append("    )),")
    lines.append(")")
    return "\n".join(lines) + "\n"


def _json_texts(conn: Connection, q: Select[Any]) -> Iterator[str]:
    for rows in _stream(conn, q).partitions():
        yield from (r[0] for r in rows)


def preview_fields(conn: Connection) -> list[tuple[str, Stream]]:
    """The fields of `preview(conn).to_json(include_would_mark=True)` on any engine,
    each list of dicts read while it is written: one statement per list, run in the
    order the lists are written, STREAM_CHUNK rows at a time (and on PostgreSQL
    one SET first)."""
    _plan_for_every_row(conn)
    return [
        ("request_required", Stream(_iter_request_required(conn))),
        ("create_required", Stream(_iter_joined(conn, _REQUESTED, _UNMARKED, _PRESENT))),
        ("delete_required", Stream(_iter_joined(conn, _NOT_DELETED, _MARKED | _GONE))),
        ("would_mark_for_deletion", Stream(_iter_joined(conn, _UNMARKED, _NOT_DELETED, _GONE))),
    ]


def preview_json_fields(conn: Connection) -> list[tuple[str, Stream]]:
    """The fields of `preview(conn).to_json(include_would_mark=True)`, each list read
    while it is written (a server-side cursor on PostgreSQL): memory stays flat and
    the first byte goes out before the last row is read.

    On PostgreSQL the items are JSON text the database rendered (`raw`); write them
    through `ascii_only`. Other engines give the records' dicts. One statement per
    list either way (after one SET on PostgreSQL), run in the order the lists are written.
    """
    if conn.dialect.name != "postgresql":
        return preview_fields(conn)
    _plan_for_every_row(conn)
    # Each generator runs its statement only when the writer reaches its list.
    return [(name, Stream(_json_texts(conn, q), raw=True)) for name, q in preview_json_queries()]


def preview_json(conn: Connection) -> str:
    """`json.dumps(preview(conn).to_json(include_would_mark=True))`, as text (the
    stream of `preview_json_fields`, joined)."""
    return "".join(ascii_only(piece) for piece in iter_json(preview_json_fields(conn)))
