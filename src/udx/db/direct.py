"""Statements sent straight to the driver's cursor: the export hot path.

SQLAlchemy's `Connection.execute` costs ~100-180 us of CPU per statement on top
of the driver's ~70-110 (measured in `bench/pass_throughput.py` passes: the
execution context, parameter processing, a result object per call), which made
it the largest share of udx's CPU per export. The dozen statements every
export runs are `DirectStatement`s instead. Each is a Core statement compiled
once per dialect; its parameters and result columns go through the type
processors SQLAlchemy would apply (GUID and UTC text on SQLite); it runs on the
SQLAlchemy connection's own DBAPI connection, inside its transaction, with the
engine's before_execute and before/after_cursor_execute events fired
(statement counting works; after_execute, which wants a Result, is not);
and a driver error goes through SQLAlchemy's handling, so callers see the same
`sqlalchemy.exc` errors and a lost connection is invalidated as usual.

What it leaves out, refusing a statement that needs it when compiled:
Python-side column defaults (give every value), expanding and literal-execute
parameters, and bind parameters with callable values; also executemany,
after_execute events and SQLAlchemy's SQL logging. A bad value going in is a
`StatementError` and a bad one coming out a plain `ValueError`, as with
`Connection.execute`. Everything else in udx uses `Connection.execute`.

It leans on three SQLAlchemy 2.0 internals, `Connection._has_events`,
`Engine._has_events` and `Connection._handle_dbapi_exception`;
tests/test_direct.py fails if a SQLAlchemy release changes them.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, exc
from sqlalchemy.engine import Dialect


def _row_class(keys: list[str]) -> type:
    base = namedtuple("_Base", keys, rename=True)  # type: ignore[misc]

    class DirectRow(base):
        """A tuple with attribute access and `_mapping`, as a SQLAlchemy Row."""

        __slots__ = ()

        @property
        def _mapping(self) -> dict[str, Any]:
            return dict(zip(keys, self, strict=True))

    return DirectRow


@dataclass(frozen=True)
class _Compiled:
    sql: str
    positional: tuple[str, ...] | None  # bind names in order (qmark dialects)
    defaults: dict[str, Any]  # values the statement carries itself
    required: frozenset[str]  # what the caller must give
    bind_procs: tuple[tuple[str, Callable[[Any], Any]], ...]
    result_procs: tuple[Callable[[Any], Any] | None, ...] | None
    row: type | None
    # Known when compiled, except for text (None: ask the cursor); psycopg builds
    # `cursor.description` anew on every call, which showed in profiles.
    returns_rows: bool | None


def _compile(stmt: Any, dialect: Dialect, returns_rows: bool | None) -> _Compiled:
    compiled = stmt.compile(dialect=dialect)
    if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
        raise TypeError(
            "a direct statement must give every column's value (it has Python-side defaults)"
        )
    if (
        compiled.escaped_bind_names
        or getattr(compiled, "post_compile_params", None)
        or getattr(compiled, "literal_execute_params", None)
    ):
        raise TypeError("a direct statement takes plain bind parameters, not expanding ones")
    binds = compiled.binds  # name -> BindParameter
    if any(bp.callable is not None for bp in binds.values()):
        # Its value would be computed once, here, and sent on every call.
        raise TypeError("a direct statement takes no bind parameter with a callable value")
    required = frozenset(name for name, bp in binds.items() if bp.required)
    for name in required:
        if binds[name].key != name:
            raise TypeError(f"bind parameter {binds[name].key!r} is rendered as {name!r}")
    defaults = {
        name: bp.effective_value for name, bp in binds.items() if name not in required
    }
    procs = []
    for name, bp in binds.items():
        proc = bp.type.dialect_impl(dialect).bind_processor(dialect)
        if proc is not None:
            procs.append((name, proc))
    # The columns a SELECT or a RETURNING gives; None for other statements and
    # for text, whose columns are not known.
    if getattr(stmt, "is_select", False):
        columns: list[Any] | None = list(stmt.selected_columns)
    else:
        columns = list(compiled.effective_returning or ()) or None
    result_procs: tuple[Callable[[Any], Any] | None, ...] | None = None
    row = None
    if columns is not None:
        result_procs = tuple(
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        )
        row = _row_class([str(c.key) for c in columns])
    return _Compiled(
        sql=compiled.string,
        positional=tuple(compiled.positiontup) if dialect.positional else None,
        defaults=defaults,
        required=required,
        bind_procs=tuple(procs),
        result_procs=result_procs,
        row=row,
        returns_rows=returns_rows
        if getattr(compiled, "isplaintext", False)
        else columns is not None,
    )


class DirectResult:
    """Rows (tuples with attribute access) and the rowcount."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)

    def first(self) -> Any | None:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any | None:
        return self.rows[0][0] if self.rows else None


class DirectStatement:
    """A Core statement to run with `execute(conn, params)`; see the module doc."""

    def __init__(self, stmt: Any, *, returns_rows: bool | None = None) -> None:
        """`returns_rows` says whether a text statement returns rows (Core
        statements know); left None, the cursor is asked on every call."""
        self.stmt = stmt
        self._returns_rows = returns_rows
        self._by_dialect: dict[tuple[str, str, str], _Compiled] = {}

    def __str__(self) -> str:
        return str(self.stmt)

    def _compiled(self, dialect: Dialect) -> _Compiled:
        key = (dialect.name, dialect.driver, dialect.paramstyle)
        c = self._by_dialect.get(key)
        if c is None:
            c = self._by_dialect[key] = _compile(self.stmt, dialect, self._returns_rows)
        return c

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> DirectResult:
        if not conn.in_transaction():
            conn.begin()  # what Connection.execute's autobegin does
        c = self._compiled(conn.dialect)
        if not c.required <= params.keys():
            missing = ", ".join(sorted(c.required - params.keys()))
            raise TypeError(f"missing bind parameters: {missing}")
        values = {**c.defaults, **params}
        try:
            for name, proc in c.bind_procs:
                values[name] = proc(values[name])
        except Exception as err:  # as Connection.execute reports a bad value
            raise exc.StatementError(str(err), c.sql, dict(params), err) from err
        args: Any = values if c.positional is None else tuple(values[n] for n in c.positional)
        sql = c.sql
        events = conn._has_events or conn.engine._has_events
        cursor = None
        try:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            if events:
                # As Connection.execute: before_execute sees the Core statement
                # (the CockroachDB test compiles every one), before_cursor_execute
                # the SQL. Listeners here cannot rewrite the statement.
                conn.dispatch.before_execute(conn, self.stmt, (), dict(params), {})
                for fn in conn.dispatch.before_cursor_execute:
                    sql, args = fn(conn, cursor, sql, args, None, False)
            cursor.execute(sql, args)
            if events:
                conn.dispatch.after_cursor_execute(conn, cursor, sql, args, None, False)
            returns = c.returns_rows
            if returns is None:
                returns = cursor.description is not None
            raw = cursor.fetchall() if returns else []
            rowcount = cursor.rowcount
        except BaseException as err:
            if isinstance(err, conn.dialect.loaded_dbapi.Error) or not isinstance(err, Exception):
                # Driver errors and exits: SQLAlchemy wraps them, closes the
                # cursor and invalidates a lost connection. It raises.
                conn._handle_dbapi_exception(err, sql, args, cursor, None)
            if cursor is not None:
                cursor.close()
            raise
        cursor.close()
        # Converted after the cursor is done: a bad value in a row (a hand-edited
        # UUID) is a plain ValueError, as Connection.execute raises it.
        rows: list[Any]
        if c.row is not None and c.result_procs is not None:
            procs = c.result_procs
            make = c.row._make  # type: ignore[attr-defined]
            rows = [
                make([v if p is None else p(v) for p, v in zip(procs, r, strict=True)])
                for r in raw
            ]
        else:
            rows = [tuple(r) for r in raw]
        return DirectResult(rows, rowcount)
