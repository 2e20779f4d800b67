"""Count the SQL statements an engine executes: the proof that a query is set-based."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event


class StatementLog:
    def __init__(self) -> None:
        self.statements: list[str] = []
        self.transactions = 0  # begun, explicitly or by autobegin (reads included)

    @property
    def count(self) -> int:
        # BEGIN/COMMIT/SAVEPOINT are bookkeeping, not queries.
        return sum(1 for s in self.statements if not _is_bookkeeping(s))

    @property
    def round_trips(self) -> int:
        """Statements plus each transaction's BEGIN and COMMIT (or ROLLBACK): what a
        client-server database (psycopg sends BEGIN on its own) is sent."""
        return self.count + 2 * self.transactions


def _is_bookkeeping(sql: str) -> bool:
    head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
    return head in {"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA"}


@contextmanager
def count_statements(engine: Engine | type[Engine]) -> Iterator[StatementLog]:
    """Log what `engine` executes; pass the `Engine` class itself to log every
    engine's statements (a command that opens its own)."""
    log = StatementLog()

    def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        log.statements.append(statement)

    def _begin(conn: Any) -> None:
        log.transactions += 1

    event.listen(engine, "before_cursor_execute", _before)
    event.listen(engine, "begin", _begin)
    try:
        yield log
    finally:
        event.remove(engine, "before_cursor_execute", _before)
        event.remove(engine, "begin", _begin)
